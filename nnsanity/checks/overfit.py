"""Overfit one batch: the loss on one fixed batch can be driven to near its minimum.

Karpathy's recipe, "set up the end-to-end training/evaluation skeleton": overfit one batch. The
check trains ``model`` on ``batch`` with the library's own step (``optimizer`` factory, default
Adam 1e-3) or the user's ``step(batch) -> loss``, so bugs in the user's loop are caught too, and
reads its own trace to say why a failure happened. The model and global state are restored
afterwards; the user's own optimizer inside ``step`` is not (nnsanity never sees it), so give
``step`` a fresh one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch

from nnsanity._arguments import (
    FIT_LR,
    LossFn,
    OptimizerFactory,
    Step,
    StepFactory,
    check_int,
    check_number,
    resolve_step,
)
from nnsanity._diagnosis import CONSISTENT, CONTRADICTED, GENERIC, MEASURED, Cause
from nnsanity._forensics import StepForensics
from nnsanity._harness import Harness, is_loss_dict
from nnsanity._messages import Explanation, Msg, fail, unpaired_explanation, up_to
from nnsanity._outputs import conflicting_labels, read_outputs, unpaired_causes
from nnsanity._result import CheckResult, diagnosed
from nnsanity._state import preserved_module
from nnsanity.seeding import preserved_rng

# The default target is this fraction of the way from the loss's floor (0 for cross-entropy and
# MSE; above 0 for label smoothing) to the reference: for softmax cross-entropy a mean probability
# of at least exp(-0.05 ln C) (0.89 for 10 classes) on every correct label, and for any loss a
# 20-fold reduction of what separates it from its floor.
TARGET_FRACTION = 0.05
# Every CHECK_EVERY steps after MIN_STEPS the trace is read: the target is out of reach when, at
# the rate of the last fifth of the steps, reaching it would take over REACH times the steps left.
CHECK_EVERY, MIN_STEPS, REACH = 50, 200, 10.0
# The parameters stopped moving when the last window moved them less than STALL of the first.
STALL = 0.01
# A run that stopped at its budget while the last fifth of its steps still lowered the best loss
# by STILL_FALLING (1%) was cut short, not stuck.
STILL_FALLING = 0.01

Stop = Literal["target", "budget", "out of reach", "diverged", "misuse"]


@dataclass(frozen=True, kw_only=True)
class OverfitResult(CheckResult):
    """What ``measure_overfit`` measured; losses in the loss's own unit (e.g. nats)."""

    max_steps: int
    initial_loss: float  # the loss the first step saw
    final_loss: float  # the last loss a step saw
    best_loss: float
    target: float  # the bound: the loss at or below which the batch counts as fitted
    target_given: bool  # the user's target=, or the default
    steps: int  # optimisation steps taken
    stopped: Stop  # why training stopped
    accuracy: float | None  # training accuracy at the end, when outputs are class scores
    diverged_at: int | None  # first step with a NaN/Inf loss
    trace: tuple[float, ...]
    zero_output_loss: float | None = None  # the loss of the no-preference output (ln C)
    floor: float | None = None  # the lowest loss free outputs reach, when finite and above 0
    movement: float | None = None  # parameter change in the last window over the first one
    unpaired: str | None = None  # how the loss fails to pair outputs with their own targets
    output_kind: str = "logits"  # logits, log-probabilities or probabilities (see init_loss)
    # samples whose inputs equal another sample's while their targets differ (None: unknown)
    conflicting: int | None = None
    forensics: StepForensics | None = None  # what the user's step did to the optimizer

    @property
    def passed(self) -> bool:
        return self.unpaired is None and self.stopped != "misuse" and self.final_loss <= self.target

    @property
    def recent_improvement(self) -> float:
        """How much the last fifth of the steps lowered the best loss, relative to before."""
        w = max(1, len(self.trace) // 5)
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
        pred, valid = outputs.argmax(-1), (targets >= 0) & (targets < outputs.shape[-1])
    elif outputs.dim() >= 2 and outputs.shape[:1] + outputs.shape[2:] == targets.shape:
        pred, valid = outputs.argmax(1), (targets >= 0) & (targets < outputs.shape[1])
    else:
        return None
    if not valid.any():  # every target ignored (-100)
        return None
    return float((pred == targets)[valid].double().mean())


def _references(h: Harness) -> tuple[float | None, float | None, str | None, str]:
    """The no-preference loss, the floor, how the loss fails to pair outputs and targets, and
    the output's kind; the forward pass runs with the model and RNGs restored afterwards."""
    with preserved_module(h.model), preserved_rng(), torch.no_grad():
        out = read_outputs(h, h.forward())
        if out is None:  # a dict of losses: plain values, no outputs in their place
            return None, None, None, "logits"
        if not out.logits.is_floating_point():
            return None, None, None, out.kind
        zero = out.loss_at(torch.zeros_like(out.logits))
        perfect, floor = out.perfect_loss(), out.floor()
        unpaired = out.unpaired()
    zero = zero if zero is not None and math.isfinite(zero) and zero > 0 else None
    # a floor no lower than a confident right prediction is approached, not reached: the loss
    # falls as the outputs grow (softmax applied twice has its infimum 1.46 there)
    if floor is not None and perfect is not None and floor >= perfect - 1e-6 * max(1, abs(perfect)):
        floor = None
    return zero, floor if floor is not None and floor > 0 else None, unpaired, out.kind


def _flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten().double() for p in model.parameters()])


def measure_overfit(
    model: torch.nn.Module,
    batch: Any,
    loss_fn: LossFn | None = None,
    *,
    optimizer: OptimizerFactory | None = None,
    step: Step | None = None,
    step_factory: StepFactory | None = None,
    max_steps: int = 5000,
    target: float | None = None,
    output: Any = None,
    unpack: bool | None = None,
    seed: int = 0,
) -> OverfitResult:
    """Train on ``batch`` until its loss is <= ``target``, it diverges, it is out of reach, or
    ``max_steps`` steps have run. See :func:`assert_can_overfit`. Never raises ``SanityError``."""
    max_steps = check_int(max_steps, "max_steps", minimum=1)
    if target is not None:
        target = check_number(target, "target", what="a finite number (a loss value)")
    step = resolve_step(model, optimizer, step, step_factory)
    h = Harness(
        model, batch, loss_fn, seed=seed, optimizer=optimizer, step=step, output=output,
        unpack=unpack, default_lr=FIT_LR,
    )  # fmt: skip
    with h.isolated():
        zero, floor, unpaired, kind = _references(h)
        run = h.stepper()
        first = run()
        reference = first if zero is None or not math.isfinite(first) else min(first, zero)
        base = floor or 0.0
        goal = base + TARGET_FRACTION * (reference - base) if target is None else target
        trace, stopped = [first], _first_stop(first, goal, target, unpaired)
        previous = _flat(h.model) if stopped is None else None
        first_window, movement = None, None
        while stopped is None:
            trace.append(run())
            k = len(trace)
            if not math.isfinite(trace[-1]):
                stopped = "diverged"
            elif trace[-1] <= goal:
                stopped = "target"
            elif k >= max_steps:
                stopped = "budget"
            elif k % CHECK_EVERY == 0:  # how far the last CHECK_EVERY steps moved the model
                current = _flat(h.model)
                assert previous is not None
                moved = float((current - previous).norm())
                first_window = moved if first_window is None else first_window
                movement = moved / first_window if first_window else None
                previous = current
                if k >= MIN_STEPS and _out_of_reach(trace, goal, max_steps):
                    stopped = "out of reach"
        with preserved_module(h.model), torch.no_grad():
            outputs = h.forward()
            accuracy = None if is_loss_dict(outputs) else _accuracy(h.logits(outputs), h.targets)
        forensics = h.forensics()
    finite = [v for v in trace if math.isfinite(v)]
    r = OverfitResult(
        seed=h.seed,
        max_steps=max_steps,
        initial_loss=first,
        final_loss=trace[-1],
        best_loss=min(finite, default=math.nan),
        target=goal,
        target_given=target is not None,
        steps=len(trace),
        stopped=stopped,
        accuracy=accuracy,
        diverged_at=next((k for k, v in enumerate(trace) if not math.isfinite(v)), None),
        trace=tuple(trace),
        zero_output_loss=zero,
        floor=floor,
        movement=movement,
        unpaired=unpaired,
        output_kind=kind,
        conflicting=None if stopped == "target" else conflicting_labels(h),
        forensics=forensics,
    )
    return diagnosed(r, _diagnose)


def _first_stop(
    first: float, goal: float, target: float | None, unpaired: str | None
) -> Stop | None:
    if unpaired is not None or (target is None and math.isfinite(first) and first <= 0):
        return "misuse"  # nothing to fit: report it without training
    if not math.isfinite(first):
        return "diverged"
    return "target" if first <= goal else None


def _out_of_reach(trace: list[float], goal: float, max_steps: int) -> bool:
    """Whether, at the rate of the last fifth of the steps, the best loss would need over REACH
    times the steps left to reach ``goal`` (in log-loss, where training curves are straighter)."""
    k, w = len(trace), max(CHECK_EVERY, len(trace) // 5)
    best_then, best_now = min(trace[:-w]), min(trace)
    if best_now <= 0 or best_then <= 0 or goal <= 0:
        return False
    rate = (math.log(best_then) - math.log(best_now)) / w
    needed = math.log(best_now / goal) / rate if rate > 0 else math.inf
    return needed > REACH * (max_steps - k)


def assert_can_overfit(
    model: torch.nn.Module,
    batch: Any,
    loss_fn: LossFn | None = None,
    *,
    optimizer: OptimizerFactory | None = None,
    step: Step | None = None,
    step_factory: StepFactory | None = None,
    max_steps: int = 5000,
    target: float | None = None,
    output: Any = None,
    unpack: bool | None = None,
    seed: int = 0,
    msg: Msg = None,
) -> OverfitResult:
    """Assert that training on one small batch drives its loss to near its minimum.

    Stops as soon as the loss is <= ``target``. The default target is 5% of the way from the
    loss's floor to the lower of the first loss and the loss of the no-preference output (ln C
    for C-class cross-entropy), so a badly scaled init, whose first loss is far above ln C,
    cannot raise the bar. The floor is 0 for cross-entropy and MSE; for a loss whose minimum is
    reached at finite outputs (label smoothing, a regulariser in the loss) it is that minimum,
    found by optimising free outputs against the loss directly (for outputs of up to 2^20
    values; above that 0 is assumed, and a loss with a floor needs ``target``). For softmax
    cross-entropy the target is a mean probability of at least exp(-0.05 ln C) (0.89 for 10
    classes) on every correct label. 100% accuracy is not enough: softmax applied before
    ``F.cross_entropy`` reaches it while its loss stays above ln(1 + (C-1)/e) (1.46 for 10
    classes). The default optimizer is Adam at 1e-3 (PyTorch's default; memorising one batch
    needs none of the caution of Karpathy's 3e-4, which takes three times the steps): on the
    healthy zoo it reaches the target in 3-170 steps (GPT-2, Llama, BERT, T5, ResNet-18,
    MobileNet, ViT-Tiny, a packed LSTM) and 1,000 for network2's sigmoid [784, 30, 10], so
    ``max_steps=5000``. From step 200 on, training stops early once the trace shows the target
    out of reach (at the recent rate it would take over 10 times the steps left). With dropout
    each step's loss is one noisy draw, and the run stops at the first below ``target``.

    A failure names its cause from the trace: still falling at the end (``max_steps`` too
    small), the parameters stopped moving (a learning rate that collapsed, such as a per-epoch
    scheduler stepped every batch), 100% accuracy above a floor (an output activation the loss
    applies again), a flat loss (label noise, a bottleneck), a loss that starts at or below 0 or
    does not pair outputs with targets (no training then).

    It proves the model, loss and update can fit data at all. It does NOT prove the model
    generalises, uses its inputs (:func:`nnsanity.assert_uses_inputs`), or trains well on many
    batches.

    ``step_factory(model) -> step`` builds your step afresh for this check (with its own
    optimizer: no state carried over from another check); pass it or ``step``, not both.

    Raises ``SanityError`` when the check fails, ``TypeError``/``ValueError`` on misuse.
    """
    __tracebackhide__ = True
    r = measure_overfit(
        model, batch, loss_fn, optimizer=optimizer, step=step,
        step_factory=step_factory, max_steps=max_steps,
        target=target, output=output, unpack=unpack, seed=seed,
    )  # fmt: skip
    if not r.passed:
        fail(_explain(r), r, msg)
    return r


_FLOOR = Cause(
    id="output_activation_twice",
    summary="softmax/log_softmax (or sigmoid) applied before a loss that applies it itself "
    "(CrossEntropyLoss, F.cross_entropy, BCEWithLogitsLoss)",
    remedy="return raw logits",
)
_OTHER_FLOOR = Cause(
    id="loss_floor",
    summary="a loss floor (label smoothing, a regulariser in the loss)",
    remedy="pass target=",
)
_SMALL = Cause(
    id="model_too_small",
    summary="the model is too small or has a bottleneck (too narrow, frozen or dead layers)",
    remedy="widen it, or run nnsanity.assert_params_update",
)


def _diagnose(r: OverfitResult) -> list[Cause]:
    if r.unpaired is not None:
        return unpaired_causes(r.unpaired)
    if r.stopped == "misuse":
        return [
            Cause(id="nll_without_log_softmax", summary="NLLLoss (F.nll_loss) receives "
                  "probabilities or raw logits: it expects log-probabilities",
                  remedy="end the model with log_softmax, or use F.cross_entropy"),
            Cause(id="flipped_sign", summary="a sign error: the loss is maximised instead of "
                  "minimised", remedy="minimise the loss itself"),
            Cause(id="density_loss", summary="a loss whose minimum is not 0 (a negative "
                  "log-likelihood of a density)", remedy="pass target= (the loss value that "
                  "counts as fitted)"),
        ]  # fmt: skip
    if r.stopped == "diverged":
        return [
            Cause(id="lr_too_high", summary="the learning rate is too high", remedy="lower it "
                  "10x", evidence=(f"NaN/Inf loss at step {r.diverged_at}",), support=CONSISTENT),
            Cause(id="missing_epsilon", summary="log/exp/division without an epsilon in the "
                  "model or loss", remedy="run nnsanity.assert_finite"),
        ]  # fmt: skip
    noise = Cause(
        id="label_noise",
        summary="label noise: identical inputs with different targets cannot all be fitted",
        remedy="deduplicate or relabel them",
        evidence=(f"{r.conflicting} samples share their inputs with a sample of another target",)
        if r.conflicting
        else ("no two samples of the batch share their inputs",)
        if r.conflicting == 0
        else (),
        support=MEASURED if r.conflicting else CONTRADICTED if r.conflicting == 0 else GENERIC,
    )
    slow = Cause(
        id="lr_too_low",
        summary=f"the learning rate is too low or max_steps={r.max_steps} too small",
        remedy="raise the learning rate or max_steps=",
        evidence=(f"the last fifth of the steps still lowered the loss by "
                  f"{r.recent_improvement:.1%}",) if r.recent_improvement >= STILL_FALLING else (),
        support=CONSISTENT if r.stopped == "budget" and r.recent_improvement >= STILL_FALLING
        else GENERIC,
    )  # fmt: skip
    causes = [noise, _SMALL, _FLOOR, _OTHER_FLOOR, slow]
    if r.movement is not None and r.movement < STALL:
        causes.insert(0, Cause(
            id="lr_collapsed",
            summary="the parameters stopped moving: the learning rate collapsed (a scheduler "
            "meant per epoch stepped every batch, or a decay far too fast)",
            remedy="step epoch schedulers once per epoch, or lengthen the decay",
            evidence=(f"the parameters moved {r.movement:.2g}x as far in the last {CHECK_EVERY} "
                      "steps as in the first",),
            support=CONSISTENT,
        ))  # fmt: skip
    if r.accuracy == 1.0:  # right answers, but the loss cannot become confident
        evidence = ("100% training accuracy with the loss above its target",)
        causes.insert(0, replace(_FLOOR, evidence=evidence, support=CONSISTENT))
        causes.insert(1, replace(_OTHER_FLOOR, support=CONSISTENT))
    elif r.output_kind == "probabilities":  # flat, from outputs squashed into [0, 1]
        causes.insert(0, replace(_FLOOR, evidence=("the outputs are probabilities",),
                                 support=MEASURED))  # fmt: skip
    return causes


def _explain(r: OverfitResult) -> Explanation:
    if r.unpaired is not None:
        return unpaired_explanation(r.unpaired)
    if r.stopped == "misuse":
        return Explanation(
            header="The loss starts at or below zero!",
            lines=[
                f"Initial loss: {r.initial_loss:.4g} (a loss minimised toward 0 starts above it)"
            ],
            relax="target= (a loss value).",
        )
    relax = "target= (a loss value) or max_steps= (more)."
    if r.stopped == "diverged":
        return Explanation(
            header="Could not overfit one batch: the loss diverged!",
            lines=[f"Loss at step {r.diverged_at}: {r.trace[r.diverged_at or 0]}"],
            relax=relax,
        )
    if r.target_given:
        target = f"{r.target:.4g} (target=)"
    else:
        base = f"the floor {r.floor:.4g}" if r.floor else "0"
        ref = (
            f"the no-preference loss {r.zero_output_loss:.4g}"
            if r.zero_output_loss is not None and r.zero_output_loss < r.initial_loss
            else f"the initial loss {r.initial_loss:.4g}"
        )
        target = f"{r.target:.4g}: {TARGET_FRACTION:g} of the way from {base} to {ref}"
    lines = [f"Best loss after {r.steps} steps: " + up_to(f"{r.best_loss:.4g}", target)]
    if r.stopped == "out of reach":
        lines.append(
            f"Stopped early: at the rate of the last steps the target would take over "
            f"{REACH:g} times the {r.max_steps - r.steps} steps left"
        )
    recent = max(1, len(r.trace) // 5)
    lines.append(f"Last {recent} steps lowered the best loss by {r.recent_improvement:.1%}")
    if r.movement is not None:
        lines.append(
            f"Parameters moved {r.movement:.2g}x as far in the last {CHECK_EVERY} steps as in "
            "the first"
        )
    if r.accuracy is not None:
        lines.append(f"Training accuracy: {r.accuracy:.0%}")
    return Explanation(header="Could not overfit one batch!", lines=lines, relax=relax)
