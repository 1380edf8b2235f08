"""Overfit one batch: the loss on one fixed batch can be driven to near its minimum.

Karpathy's recipe, "set up the end-to-end training/evaluation skeleton": overfit one batch. The
check trains ``model`` on ``batch`` with the library's own step (``optimizer`` factory, default
Adam 3e-4) or the user's ``step(batch) -> loss``, so bugs in the user's loop are caught too. The
model and global state are restored afterwards; the user's own optimizer inside ``step`` is not
(nnsanity never sees it), so give ``step`` a fresh one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from nnsanity._arguments import LossFn, OptimizerFactory, Step, check_int, check_number
from nnsanity._harness import Harness
from nnsanity._messages import Explanation, Msg, fail, up_to
from nnsanity._result import CheckResult
from nnsanity._state import preserved_module
from nnsanity._training import divergence, train
from nnsanity.seeding import preserved_rng

# The default target is this fraction of the reference loss: for softmax cross-entropy a mean
# probability of at least exp(-0.05 ln C) (0.89 for 10 classes) on every correct label, and for
# any loss whose minimum is 0 a 20-fold reduction, which a model with a loss floor cannot reach.
TARGET_FRACTION = 0.05
# The last fifth of the trace tells "still falling" (a budget problem) from "flat" (a floor): flat
# when it improved the best loss by under 1%.
_RECENT_SHARE, _FLAT = 5, 0.01


@dataclass(frozen=True, kw_only=True)
class OverfitResult(CheckResult):
    """What ``measure_overfit`` measured; losses in the loss's own unit (e.g. nats)."""

    max_steps: int
    initial_loss: float  # the loss the first step saw
    final_loss: float  # the last loss a step saw
    best_loss: float
    target: float  # the bound: the loss at or below which the batch counts as fitted
    target_given: bool  # the user's target=, or the default TARGET_FRACTION x reference
    steps: int  # optimisation steps taken; training stops once the loss is <= target
    accuracy: float | None  # training accuracy at the end, when outputs are class scores
    diverged_at: int | None  # first step with a NaN/Inf loss
    trace: tuple[float, ...]
    # loss of all-zero outputs when finite and > 0 (ln C for C-class cross-entropy): the default
    # target is TARGET_FRACTION x min(initial_loss, this), so a bad init cannot raise the bar
    zero_output_loss: float | None = None

    @property
    def passed(self) -> bool:
        return self.final_loss <= self.target

    @property
    def recent_improvement(self) -> float:
        """How much the last fifth of the steps lowered the best loss, relative to before."""
        w = max(1, len(self.trace) // _RECENT_SHARE)
        earlier = min(self.trace[:-w]) if len(self.trace) > w else self.initial_loss
        return (earlier - self.best_loss) / abs(earlier) if earlier else 0.0


def _accuracy(outputs: torch.Tensor, targets: Any) -> float | None:
    """Argmax accuracy when ``outputs`` are class scores for integer ``targets``, else None."""
    if not (
        isinstance(targets, torch.Tensor)
        and outputs.dim() >= 1
        and outputs.is_floating_point()
        and not (targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool)
    ):
        return None
    if outputs.shape[:-1] == targets.shape:
        pred = outputs.argmax(-1)
    elif outputs.dim() >= 2 and outputs.shape[:1] + outputs.shape[2:] == targets.shape:
        pred = outputs.argmax(1)  # (N, C, d1, ...) as F.cross_entropy takes it
    else:
        return None
    return float((pred == targets).double().mean())


def _zero_output_loss(h: Harness) -> float | None:
    """The loss of all-zero outputs ("no preference"), when finite and positive, else None.

    The forward pass runs with the model and RNGs restored afterwards, so training is unchanged.
    """
    with preserved_module(h.model), preserved_rng(), torch.no_grad():
        outputs = h.forward()
        logits = h.logits(outputs)
        if not logits.is_floating_point():
            return None
        try:
            loss = h.loss_of_logits(outputs, torch.zeros_like(logits))
        except (TypeError, ValueError):  # e.g. a loss that rejects these outputs
            return None
    zero = math.nan if loss is None else float(loss)
    return zero if math.isfinite(zero) and zero > 0 else None


def measure_overfit(
    model: torch.nn.Module,
    batch: Any,
    loss_fn: LossFn | None = None,
    *,
    optimizer: OptimizerFactory | None = None,
    step: Step | None = None,
    max_steps: int = 5000,
    target: float | None = None,
    output: Any = None,
    unpack: bool | None = None,
    seed: int = 0,
) -> OverfitResult:
    """Train on ``batch`` until its loss is <= ``target`` or ``max_steps`` steps have run.

    See :func:`assert_can_overfit`. Never raises ``SanityError``.
    """
    max_steps = check_int(max_steps, "max_steps", minimum=1)
    if target is not None:
        target = check_number(target, "target", what="a finite number (a loss value)")
    h = Harness(
        model, batch, loss_fn, seed=seed, optimizer=optimizer, step=step, output=output,
        unpack=unpack,
    )  # fmt: skip
    with h.isolated():
        zero = _zero_output_loss(h)
        run = h.stepper()
        first = run()
        if target is None and math.isfinite(first) and first <= 0:
            raise ValueError(
                f"the loss starts at {first:.4g} <= 0, so {TARGET_FRACTION} x it is no target; "
                "pass target= (the loss value that counts as fitted)."
            )
        # A badly scaled init starts far above the loss of "no preference"; it must not raise
        # the bar, so the reference is the lower of the two.
        reference = first if zero is None or not math.isfinite(first) else min(first, zero)
        goal = TARGET_FRACTION * reference if target is None else target
        trace = [first]
        if math.isfinite(first) and first > goal:
            trace += train(run, max_steps - 1, stop_at=goal)
        with preserved_module(h.model), torch.no_grad():
            accuracy = _accuracy(h.logits(h.forward()), h.targets)
    finite = [v for v in trace if math.isfinite(v)]
    return OverfitResult(
        seed=h.seed,
        max_steps=max_steps,
        initial_loss=first,
        final_loss=trace[-1],
        best_loss=min(finite, default=math.nan),
        target=goal,
        target_given=target is not None,
        steps=len(trace),
        accuracy=accuracy,
        diverged_at=divergence(trace, math.inf),
        trace=tuple(trace),
        zero_output_loss=zero,
    )


def assert_can_overfit(
    model: torch.nn.Module,
    batch: Any,
    loss_fn: LossFn | None = None,
    *,
    optimizer: OptimizerFactory | None = None,
    step: Step | None = None,
    max_steps: int = 5000,
    target: float | None = None,
    output: Any = None,
    unpack: bool | None = None,
    seed: int = 0,
    msg: Msg = None,
) -> OverfitResult:
    """Assert that training on one small batch drives its loss to near its minimum.

    Stops as soon as the loss is <= ``target``. The default target is 0.05 x the lower of the
    first loss and the loss of all-zero outputs (``zero_output_loss``, ln C for C-class
    cross-entropy), so a badly scaled init, whose first loss is far above ln C, cannot raise the
    bar. For softmax cross-entropy that is a mean probability of at least
    exp(-0.05 ln C) (0.89 for 10 classes) on every correct label, and for any loss whose minimum
    is 0 a 20-fold reduction, which a model with a loss floor cannot reach. 100% accuracy is not
    enough: softmax applied before ``F.cross_entropy`` reaches it while its loss stays above
    ln(1 + (C-1)/e) (1.46 for 10 classes). The budget fits Adam 3e-4 (the default, kept rather
    than raised) on every healthy zoo model: 170-500 steps for the MLP, CNN and transformer, up to
    3300 for network2's sigmoid [784, 30, 10], so ``max_steps=5000`` (about 2 s on one CPU core).
    For a loss whose minimum is not 0 (label smoothing, a regulariser) pass ``target``. With
    dropout each step's loss is one noisy draw, and the run stops at the first below ``target``.

    It proves the model, loss and update can fit data at all. It does NOT prove the model
    generalises, uses its inputs (:func:`nnsanity.assert_uses_inputs`), or trains well on many
    batches.

    Raises ``SanityError`` when the check fails, ``TypeError``/``ValueError`` on misuse.
    """
    __tracebackhide__ = True
    r = measure_overfit(
        model, batch, loss_fn, optimizer=optimizer, step=step, max_steps=max_steps,
        target=target, output=output, unpack=unpack, seed=seed,
    )  # fmt: skip
    if not r.passed:
        fail(_explain(r), r, seed=r.seed, msg=msg)
    return r


def _explain(r: OverfitResult) -> Explanation:
    if r.target_given:
        target = f"{r.target:.4g} (target=)"
    elif r.zero_output_loss is not None and r.zero_output_loss < r.initial_loss:
        target = (
            f"{r.target:.4g} ({TARGET_FRACTION} x the all-zero-output loss "
            f"{r.zero_output_loss:.4g}, below the initial {r.initial_loss:.4g})"
        )
    else:
        target = f"{r.target:.4g} ({TARGET_FRACTION} x the initial loss {r.initial_loss:.4g})"
    relax = "target= (a loss value) or max_steps= (more)."
    if r.diverged_at is not None:
        return Explanation(
            header="Could not overfit one batch: the loss diverged!",
            lines=[f"Loss at step {r.diverged_at}: {r.trace[r.diverged_at]}"],
            causes=[
                "the learning rate is too high: lower it 10x",
                "log/exp/division without an epsilon in the model or loss",
            ],
            relax=relax,
        )
    lines = [
        f"Best loss after {r.steps} steps: " + up_to(f"{r.best_loss:.4g}", target),
        f"Last {max(1, len(r.trace) // _RECENT_SHARE)} steps lowered the best loss by "
        f"{r.recent_improvement:.1%}",
    ]
    if r.accuracy is not None:
        lines.append(f"Training accuracy: {r.accuracy:.0%}")
    floor = (
        "softmax/log_softmax (or sigmoid) applied before a loss that applies it itself "
        "(CrossEntropyLoss, F.cross_entropy, BCEWithLogitsLoss): return raw logits"
    )
    other_floor = "a loss floor (label smoothing, a regulariser in the loss): pass target="
    noise = "label noise: identical inputs with different targets cannot all be fitted"
    small = "the model is too small or has a bottleneck (too narrow, frozen or dead layers)"
    slow = f"the learning rate is too low or max_steps={r.max_steps} too small"
    if r.accuracy == 1.0:  # right answers, but the loss cannot become confident
        causes = [floor, other_floor, noise]
    elif r.recent_improvement < _FLAT:  # a floor, not a budget problem
        causes = [noise, small, floor, other_floor, slow]
    else:  # still falling
        causes = [slow, small, floor]
    return Explanation(
        header="Could not overfit one batch!", lines=lines, causes=causes, relax=relax
    )
