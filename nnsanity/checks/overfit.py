"""Overfit one batch: the loss on one fixed batch can be driven to near its minimum.

Karpathy's recipe, "set up the end-to-end training/evaluation skeleton": overfit one batch. The
check trains ``model`` on ``batch`` with the library's own
step (``optimizer`` factory, default Adam 3e-4) or the user's ``step(batch) -> loss``, so bugs in
the user's loop are caught too. The model and global state are restored afterwards; the user's
own optimizer inside ``step`` is not (nnsanity never sees it), so give ``step`` a fresh one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from nnsanity._arguments import LossFn, OptimizerFactory, Step, compute_loss, forward
from nnsanity._messages import failure
from nnsanity._state import preserved_module, preserved_rng
from nnsanity._training import (
    divergence,
    isolated_training,
    make_stepper,
    train,
    validate,
)


@dataclass(frozen=True)
class OverfitResult:
    """What ``measure_overfit`` measured."""

    initial_loss: float  # the loss the first step saw
    final_loss: float  # the last loss a step saw
    best_loss: float
    target: float
    steps: int  # optimisation steps taken; training stops once the loss is <= target
    accuracy: float | None  # training accuracy at the end, when outputs are class scores
    diverged_at: int | None  # first step with a NaN/Inf loss
    trace: tuple[float, ...]
    # loss_fn(zeros_like(outputs), targets) when finite and > 0 (ln C for C-class cross-entropy):
    # the default target is 0.05 x min(initial_loss, this), so a bad init cannot raise the bar
    zero_output_loss: float | None = None

    @property
    def passed(self) -> bool:
        return self.final_loss <= self.target


def _accuracy(outputs: Any, targets: Any) -> float | None:
    """Argmax accuracy when ``outputs`` are class scores for integer ``targets``, else None."""
    if not (
        isinstance(outputs, torch.Tensor)
        and isinstance(targets, torch.Tensor)
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


def _zero_output_loss(
    model: torch.nn.Module, inputs: Any, targets: Any, loss_fn: LossFn
) -> float | None:
    """The loss of all-zero outputs ("no preference"), when finite and positive, else None.

    The forward pass runs with the model and RNGs restored afterwards, so training is unchanged.
    """
    with preserved_module(model), preserved_rng(), torch.no_grad():
        outputs = forward(model, inputs)
        if not isinstance(outputs, torch.Tensor) or not outputs.is_floating_point():
            return None
        try:
            zero = float(compute_loss(loss_fn, torch.zeros_like(outputs), targets))
        except (TypeError, ValueError):  # e.g. a loss that rejects these outputs
            return None
    return zero if math.isfinite(zero) and zero > 0 else None


def measure_overfit(
    model: torch.nn.Module,
    batch: Any,
    loss_fn: LossFn,
    *,
    optimizer: OptimizerFactory | None = None,
    step: Step | None = None,
    max_steps: int = 5000,
    target: float | None = None,
    seed: int = 0,
) -> OverfitResult:
    """Train on ``batch`` until its loss is <= ``target`` or ``max_steps`` steps have run.

    See :func:`assert_can_overfit`. Never raises ``SanityError``.
    """
    inputs, targets = validate(model, batch, loss_fn, optimizer, step, seed, max_steps=max_steps)
    if target is not None and (
        not isinstance(target, (int, float))
        or isinstance(target, bool)
        or not math.isfinite(target)
    ):
        raise TypeError(f"target must be a finite number (a loss value), got {target!r}.")
    with isolated_training(model, seed):
        zero = _zero_output_loss(model, inputs, targets, loss_fn)
        run = make_stepper(model, inputs, targets, loss_fn, optimizer, step)
        first = run()
        if target is None and math.isfinite(first) and first <= 0:
            raise ValueError(
                f"the loss starts at {first:.4g} <= 0, so 0.05 x it is no target; "
                "pass target= (the loss value that counts as fitted)."
            )
        # A badly scaled init starts far above the loss of "no preference"; it must not raise
        # the bar, so the reference is the lower of the two.
        reference = first if zero is None or not math.isfinite(first) else min(first, zero)
        goal = 0.05 * reference if target is None else float(target)
        trace = [first]
        if math.isfinite(first) and first > goal:
            trace += train(run, max_steps - 1, stop_at=goal)
        with preserved_module(model), torch.no_grad():
            accuracy = _accuracy(forward(model, inputs), targets)
    finite = [v for v in trace if math.isfinite(v)]
    return OverfitResult(
        first,
        trace[-1],
        min(finite, default=math.nan),
        goal,
        len(trace),
        accuracy,
        divergence(trace, math.inf),
        tuple(trace),
        zero,
    )


def assert_can_overfit(
    model: torch.nn.Module,
    batch: Any,
    loss_fn: LossFn,
    *,
    optimizer: OptimizerFactory | None = None,
    step: Step | None = None,
    max_steps: int = 5000,
    target: float | None = None,
    seed: int = 0,
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
    """
    __tracebackhide__ = True
    r = measure_overfit(
        model,
        batch,
        loss_fn,
        optimizer=optimizer,
        step=step,
        max_steps=max_steps,
        target=target,
        seed=seed,
    )
    if r.passed:
        return r
    if target is not None:
        bound = f"the target {r.target:.4g}"
    elif r.zero_output_loss is not None and r.zero_output_loss < r.initial_loss:
        bound = (
            f"the target {r.target:.4g} (0.05 x the all-zero-output loss "
            f"{r.zero_output_loss:.4g}, below the initial {r.initial_loss:.4g})"
        )
    else:
        bound = f"the target {r.target:.4g} (0.05 x the initial {r.initial_loss:.4g})"

    acc = "" if r.accuracy is None else f", training accuracy {r.accuracy:.0%}"
    header = "Could not overfit one batch"
    relax = "Pass target= (a loss value) or max_steps= to relax."
    if r.diverged_at is not None:
        raise failure(
            header,
            f"diverged at step {r.diverged_at} (loss {r.trace[r.diverged_at]})",
            [
                "the learning rate is too high: lower it 10x",
                "log/exp/division without an epsilon in the model or loss",
            ],
            relax,
            r,
        )
    w = max(1, len(r.trace) // 5)
    earlier = min(r.trace[:-w]) if len(r.trace) > w else r.initial_loss
    recent = (earlier - r.best_loss) / abs(earlier) if earlier else 0.0
    measured = (
        f"best loss {r.best_loss:.4g} after {r.steps} steps, above {bound}{acc}; the last "
        f"{w} steps improved it by {recent:.1%}"
    )
    floor = (
        "softmax/log_softmax (or sigmoid) applied before a loss that applies it itself "
        "(CrossEntropyLoss, F.cross_entropy, BCEWithLogitsLoss): return raw logits"
    )
    other_floor = "a loss floor (label smoothing, a regulariser in the loss): pass target="
    noise = "label noise: identical inputs with different targets cannot all be fitted"
    small = "the model is too small or has a bottleneck (too narrow, frozen or dead layers)"
    slow = f"the learning rate is too low or max_steps={max_steps} too small"
    if r.accuracy == 1.0:  # right answers, but the loss cannot become confident
        causes = [floor, other_floor, noise]
    elif recent < 0.01:  # flat: a floor, not a budget problem
        causes = [noise, small, floor, other_floor, slow]
    else:  # still falling
        causes = [slow, small, floor]
    raise failure(header, measured, causes, relax, r)
