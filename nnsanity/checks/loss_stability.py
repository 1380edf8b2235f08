"""A stable loss: over a short run on one batch the loss neither diverges nor bounces back up.

Trained on one fixed batch at a sane learning rate, the loss falls steadily: each step is a
descent step on the very function being measured, and only dropout/BatchNorm noise makes it
move up. A learning rate past the stable range overshoots: the loss jumps above where it was
(oscillation) or above where it started (divergence), and may still land low afterwards (1.6,
then 1.5e12, then 0.0). The check runs a few steps of the user's optimizer (default Adam 3e-4)
or ``step(batch) -> loss`` and judges the largest rise of the loss above its best so far.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch

from nnsanity._arguments import (
    SAFE_LR,
    LossFn,
    OptimizerFactory,
    Step,
    StepFactory,
    check_int,
    check_number,
    resolve_step,
)
from nnsanity._diagnosis import CONSISTENT, Cause
from nnsanity._forensics import StepForensics
from nnsanity._harness import Harness
from nnsanity._input_scale import cause, measure
from nnsanity._messages import Explanation, Msg, fail, up_to
from nnsanity._result import CheckResult, diagnosed
from nnsanity._state import preserved_globals
from nnsanity._training import NOISE_Z, excerpt
from nnsanity._units import deterministic_mode
from nnsanity.seeding import seed_torch

# The default bound on a rise above the best loss so far, as a fraction of the initial loss. With
# Adam 3e-4 the healthy zoo's largest rise in 5 steps is 12% of its initial loss (a dropout-0.5
# CNN on 8 images, whose every step is one noisy draw) and 0-2.3% elsewhere; at 100x that rate
# (3e-2) ResNet-18 rises 177%, MobileNetV3 900%, ViT-Tiny 390%, BERT 110%, a dropout CNN 610%.
MAX_RISE = 0.5


@dataclass(frozen=True, kw_only=True)
class LossStabilityResult(CheckResult):
    """What ``measure_loss_stability`` measured; losses in the loss's own unit (e.g. nats)."""

    steps: int  # the steps asked for
    max_rise: float  # the bound's fraction of |initial_loss|
    initial_loss: float  # mean of up to 8 train-mode evaluations before training
    noise_sd: float  # sd of one train-mode evaluation (dropout/BatchNorm noise)
    allowed: float  # max_rise * |initial_loss| + 3 * sqrt(2) * noise_sd: the bound on ``rise``
    trace: tuple[float, ...]  # the loss each step saw, before its update
    quiet_trace: tuple[float, ...] = ()  # the same weights' loss with dropout off, BatchNorm on
    # the batch's statistics (its running ones untouched)
    rise: float  # the largest trace[k] - min(trace[:k]), 0 if none rose (inf: a NaN/Inf loss)
    rise_at: int | None  # the step k of that rise (None if the loss never rose)
    first_over: int | None  # the first step whose rise exceeded ``allowed``
    input_scale: Cause | None = None  # the inputs' scale, where far from what the first layer
    # expects (raw pixels make a first layer's gradient, and the loss, jump): a likely cause
    forensics: StepForensics | None = None  # what the user's step did to the optimizer

    @property
    def diverged(self) -> bool:
        """At the first step over the bound the loss was NaN/Inf or above the initial loss plus
        the allowance (else it oscillated: back up, but below where it started)."""
        k = self.first_over
        if k is None or k >= len(self.trace):
            return k is not None
        return not math.isfinite(self.trace[k]) or self.trace[k] > self.initial_loss + self.allowed

    @property
    def passed(self) -> bool:
        return self.first_over is None


def _rises(trace: list[float]) -> list[float]:
    """trace[k] - min(trace[:k]) for every k >= 1 (inf for a NaN/Inf loss)."""
    rises, best = [], trace[0] if trace else math.nan
    for loss in trace[1:]:
        rises.append(loss - best if math.isfinite(loss) else math.inf)
        best = min(best, loss)
    return rises


def _quiet_loss(h: Harness) -> float:
    """The batch's loss at the current weights with dropout and stochastic depth off; the
    training's RNG stream, grad mode and BatchNorm's running statistics as they were."""
    norms = [m for m in h.model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [{k: v.clone() for k, v in m.named_buffers(recurse=False)} for m in norms]
    try:
        with preserved_globals(), deterministic_mode(h.model), torch.no_grad():
            seed_torch(h.seed)
            return float(h.loss(h.forward()))
    finally:
        with torch.no_grad():
            for m, buffers in zip(norms, saved, strict=True):
                for k, v in buffers.items():
                    getattr(m, k).copy_(v)


def measure_loss_stability(
    model: torch.nn.Module,
    batch: Any,
    loss_fn: LossFn | None = None,
    *,
    optimizer: OptimizerFactory | None = None,
    step: Step | None = None,
    step_factory: StepFactory | None = None,
    steps: int = 5,
    max_rise: float = MAX_RISE,
    unpack: bool | None = None,
    seed: int = 0,
) -> LossStabilityResult:
    """Train ``steps`` steps on ``batch`` and measure the largest rise of the loss above its best
    so far. See :func:`assert_loss_stable`. Never raises ``SanityError``."""
    steps = check_int(steps, "steps", minimum=2)
    max_rise = check_number(max_rise, "max_rise", low=0, what="a number >= 0")
    step = resolve_step(model, optimizer, step, step_factory)
    h = Harness(
        model, batch, loss_fn, seed=seed, optimizer=optimizer, step=step, unpack=unpack,
        default_lr=SAFE_LR,
    )  # fmt: skip
    with h.isolated():
        scale = cause(measure(h))
        initial, sd = h.evaluate()
        trace: list[float] = []
        quiet: list[float] = []
        if math.isfinite(initial):
            run = h.stepper()
            for _ in range(steps):
                quiet.append(_quiet_loss(h))
                trace.append(run())
                if not math.isfinite(trace[-1]):
                    break
        forensics = h.forensics()
    allowed = max_rise * abs(initial) + NOISE_Z * math.sqrt(2) * (sd if math.isfinite(sd) else 0)
    rises = _rises(trace)
    worst = max(rises, default=0.0)
    rise, at = (worst, rises.index(worst) + 1) if worst > 0 else (0.0, None)
    # a rise counts when the loss with dropout off rose past the bound by then too: the noise of
    # a confident model's train-mode loss outgrows what was measured at init
    quiet_rises = _rises(quiet)
    first = next(
        (
            k + 1
            for k, v in enumerate(rises)
            if v > allowed
            and (
                k + 1 >= len(quiet)  # the loss after a NaN step was never evaluated quietly
                or max(quiet_rises[: k + 1], default=0.0) > max_rise * abs(initial)
            )
        ),
        None,
    )
    if not math.isfinite(initial):
        rise, at, first = math.inf, 0, 0
    r = LossStabilityResult(
        seed=h.seed,
        steps=steps,
        max_rise=max_rise,
        initial_loss=initial,
        noise_sd=sd,
        allowed=allowed,
        trace=tuple(trace),
        quiet_trace=tuple(quiet),
        rise=rise,
        rise_at=at,
        first_over=first,
        input_scale=scale,
        forensics=forensics,
    )
    return diagnosed(r, _diagnose)


def assert_loss_stable(
    model: torch.nn.Module,
    batch: Any,
    loss_fn: LossFn | None = None,
    *,
    optimizer: OptimizerFactory | None = None,
    step: Step | None = None,
    step_factory: StepFactory | None = None,
    steps: int = 5,
    max_rise: float = MAX_RISE,
    unpack: bool | None = None,
    seed: int = 0,
    msg: Msg = None,
) -> LossStabilityResult:
    """Assert that a short run on one batch neither diverges nor makes the loss bounce back up.

    ``steps`` (5) steps of ``optimizer`` (default Adam 3e-4) or of your ``step(batch) -> loss``
    record the loss each step sees. Its largest rise above the best loss so far must be at most
    ``max_rise`` (0.5) of the initial loss plus the noise of two single evaluations (3 x sqrt(2)
    standard deviations of one train-mode evaluation, measured before training: dropout and
    BatchNorm make each step's loss a noisy draw). A rise counts only when the same weights' loss
    with dropout off (``quiet_trace``, one extra forward pass per step; BatchNorm on the batch's
    statistics) has risen past ``max_rise`` of the initial loss by then too: a confident model's
    train-mode loss is far noisier than the init-time noise says (pytorch/examples' MNIST CNN,
    dropout 0.5, Adadelta at lr 1.0: one seed in 20 rose 0.60 of the initial loss in train mode,
    0.04 with dropout off). A NaN/Inf loss is an unbounded rise. A rise
    that first breaks the bound above the initial loss is reported as divergence, one below it as
    oscillation.

    Calibrated on the healthy zoo (GPT-2, Llama, BERT, T5, ResNet-18, MobileNetV3, ViT-Tiny, LSTM,
    CNNs, MLPs): with Adam 3e-4 the largest rise is 12% of the initial loss (a dropout-0.5 CNN on 8
    images), 0-2.3% elsewhere; with 100x that learning rate ResNet-18, MobileNetV3, ViT-Tiny, BERT
    and the dropout CNN rise by 110-900% within 5 steps, while the small MLPs, LSTM and LMs still
    descend smoothly there: the check judges what the loss does, not the learning rate.

    Where the float inputs reach the first layer far from unit scale (``assert_input_scale``:
    raw 0-255 pixels, inputs normalised twice), that is named as the first likely cause.

    Proves: on this batch, the first steps at this learning rate descend without overshooting.
    Does not prove: training stays stable later (after warm-up, at a larger batch), nor that the
    loss decreases enough (:func:`nnsanity.assert_loss_decreases`).

    ``step_factory(model) -> step`` builds your step afresh for this check (with its own
    optimizer: no state carried over from another check); pass it or ``step``, not both.

    Raises ``SanityError`` when the check fails, ``TypeError``/``ValueError`` on misuse.
    """
    __tracebackhide__ = True
    r = measure_loss_stability(
        model, batch, loss_fn, optimizer=optimizer, step=step,
        step_factory=step_factory, steps=steps, max_rise=max_rise,
        unpack=unpack, seed=seed,
    )  # fmt: skip
    if not r.passed:
        fail(_explain(r), r, msg)
    return r


_LR = Cause(
    id="lr_too_high",
    summary="the learning rate is too high",
    remedy="lower it 3-10x (Adam 3e-4 is a safe start), or warm it up from a small value",
)


def _diagnose(r: LossStabilityResult) -> list[Cause]:
    if not math.isfinite(r.initial_loss):
        return [Cause(id="nonfinite_at_init", summary="log/exp/division without an epsilon",
                      remedy="run nnsanity.assert_finite")]  # fmt: skip
    first = [r.input_scale] if r.input_scale else []
    lr = replace(
        _LR,
        support=CONSISTENT,
        evidence=(
            f"the loss rose by {r.rise:.3g} at step {r.rise_at} of a descent on one fixed batch",
        ),
    )
    if r.diverged:
        return [
            *first,
            lr,
            Cause(id="amplified_gradient", summary="the step amplifies the gradient: a loss "
                  "summed over the batch (reduction='sum'), no gradient clipping, or a learning "
                  "rate scaled up for a larger batch", remedy="average the loss, clip gradients"),
            Cause(id="flipped_sign", summary="the update climbs the loss: a flipped sign "
                  "((-loss).backward(), maximize=True)", remedy="minimise the loss itself"),
        ]  # fmt: skip
    return [
        *first,
        lr,
        Cause(id="momentum_too_high", summary="momentum too high for this learning rate (SGD "
              "momentum / Adam beta1)", remedy="lower one"),
        Cause(id="dropout_noise", summary="heavy dropout on a tiny batch makes each step's loss "
              "a noisy draw", remedy="raise max_rise= or use a larger batch"),
    ]  # fmt: skip


def _explain(r: LossStabilityResult) -> Explanation:
    if not math.isfinite(r.initial_loss):
        return Explanation(
            header="Loss is not finite at initialisation!",
            lines=[f"Initial loss: {r.initial_loss} (before any step)"],
        )
    k = r.first_over
    assert k is not None
    loss, best = r.trace[k], min(r.trace[:k])
    rise = loss - best if math.isfinite(loss) else math.inf
    bound = (
        f"{r.allowed:.3g}: {r.max_rise:g} x |initial loss| {abs(r.initial_loss):.4g} + "
        f"{NOISE_Z * math.sqrt(2):.3g} x noise sd {r.noise_sd:.2g}"
    )
    lines = [
        f"Loss at step {k}: {loss:.4g}, "
        + ("above" if r.diverged else "back above")
        + f" its best so far {best:.4g} by "
        + up_to(f"{rise:.4g}", bound),
        f"Trace: {excerpt(r.trace)}",
    ]
    if r.rise_at != k and math.isfinite(rise):
        lines.insert(1, f"Largest rise: {r.rise:.4g} at step {r.rise_at}")
    return Explanation(
        header="Loss diverged!" if r.diverged else "Loss oscillates!",
        lines=lines,
        where=f"step {k}",
        relax="max_rise= (larger).",
    )
