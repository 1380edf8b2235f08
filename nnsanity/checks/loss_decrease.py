"""The loss falls: a few optimisation steps on one fixed batch lower its loss beyond its noise.

Karpathy's recipe, "set up the end-to-end training/evaluation skeleton": verify that the loss
decreases. The check trains ``model`` on ``batch`` with the library's own step (``optimizer``
factory, default Adam 3e-4) or the user's ``step(batch) -> loss``, so bugs in the user's loop are
caught too. The model and global state are restored afterwards; the user's own optimizer inside
``step`` is not (nnsanity never sees it), so give ``step`` a fresh one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from nnsanity._arguments import (
    LossFn,
    OptimizerFactory,
    Step,
    StepFactory,
    check_int,
    check_number,
    resolve_step,
)
from nnsanity._diagnosis import CONSISTENT, GENERIC, MEASURED, Cause
from nnsanity._forensics import OFF_BY, StepForensics
from nnsanity._harness import N_EVALS, Harness
from nnsanity._messages import Explanation, Msg, at_least, fail
from nnsanity._result import CheckResult, diagnosed
from nnsanity._state import preserved_module
from nnsanity._training import NOISE_FACTOR, divergence, excerpt, required_change
from nnsanity.seeding import preserved_rng


@dataclass(frozen=True, kw_only=True)
class LossDecreaseResult(CheckResult):
    """What ``measure_loss_decrease`` measured; losses in the loss's own unit (e.g. nats)."""

    steps: int  # the ``steps`` asked for
    min_decrease: float  # the bound's fraction of the initial loss
    initial_loss: float  # mean of N_EVALS train-mode losses before training
    final_loss: float  # the same after the steps
    decrease: float  # initial_loss - final_loss
    required: float  # max(min_decrease * |initial_loss|, 1.5 * noise_sd): the bound
    noise_sd: float  # sd of one train-mode evaluation of the initial loss
    trace: tuple[float, ...]  # loss returned by each step, before its update
    diverged_at: int | None  # first step with a NaN/Inf loss, or above initial + required
    parameters_changed: bool
    accumulates_gradients: bool | None  # user step only: never zeroes .grad (None: no verdict)
    # when nothing changed: the value every output element had, if all had the same one
    constant_output: float | None = None
    forensics: StepForensics | None = None  # what the user's step did to the optimizer

    @property
    def step_problem(self) -> str | None:
        """What the user's step applies that is not the loss's gradient, if anything: it never
        zeroes ``.grad``, clips gradients still scaled by a GradScaler, or scales them."""
        f = self.forensics
        if self.accumulates_gradients:
            return "accumulates_gradients"
        if f is not None and f.clipped_scaled:
            return "clip_before_unscale"
        if f is not None and f.gradient_scaled:
            return "gradient_scaled"
        return None

    @property
    def passed(self) -> bool:
        return (
            self.parameters_changed
            and self.step_problem is None
            and math.isfinite(self.final_loss)
            and self.decrease >= self.required
        )


def measure_loss_decrease(
    model: torch.nn.Module,
    batch: Any,
    loss_fn: LossFn | None = None,
    *,
    optimizer: OptimizerFactory | None = None,
    step: Step | None = None,
    step_factory: StepFactory | None = None,
    steps: int = 100,
    min_decrease: float = 0.01,
    unpack: bool | None = None,
    seed: int = 0,
) -> LossDecreaseResult:
    """Train up to ``steps`` steps on ``batch`` and measure the loss before and after.

    See :func:`assert_loss_decreases`. Never raises ``SanityError``.
    """
    steps = check_int(steps, "steps", minimum=1)
    min_decrease = check_number(
        min_decrease, "min_decrease", low=0, high=1, high_open=True, what="a fraction"
    )
    step = resolve_step(model, optimizer, step, step_factory)
    h = Harness(model, batch, loss_fn, seed=seed, optimizer=optimizer, step=step, unpack=unpack)
    with h.isolated():
        initial, sd = h.evaluate()
        required = required_change(min_decrease, initial, sd)
        start = [p.detach().clone() for p in h.model.parameters()]
        run = h.stepper()
        trace: list[float] = []
        final, confirmed = math.nan, False
        limit = _EXPLODED * abs(initial) + required
        confirm_after = _MIN_PROBE  # the user step's zero_grad probe needs two calls
        for _ in range(steps if math.isfinite(initial) else 0):
            loss = run()
            trace.append(loss)
            if not math.isfinite(loss) or loss > limit:
                break
            if len(trace) == _STILL and all(
                torch.equal(a, p) for a, p in zip(start, h.model.parameters(), strict=True)
            ):
                break  # nothing has moved in _STILL steps: more will not tell more
            if len(trace) >= confirm_after and _looks_done(trace, initial, required, sd):
                final = h.evaluate()[0]  # confirmed by a mean of evaluations, as at the start
                confirmed = initial - final >= required
                if confirmed:
                    break
                confirm_after = len(trace) + _RECHECK
        healthy = all(math.isfinite(v) and v <= limit for v in trace)
        if not confirmed and healthy:
            final = h.evaluate()[0]
        changed = any(
            not torch.equal(a, p) for a, p in zip(start, h.model.parameters(), strict=True)
        )
        constant = None if changed else _constant_output(h)
        forensics = h.forensics()
    r = LossDecreaseResult(
        seed=h.seed,
        steps=steps,
        min_decrease=min_decrease,
        initial_loss=initial,
        final_loss=final,
        decrease=initial - final,
        required=required,
        noise_sd=sd,
        trace=tuple(trace),
        diverged_at=_diverged(trace, initial, required, final),
        parameters_changed=changed,
        accumulates_gradients=None if forensics is None else forensics.zero_grad is False,
        constant_output=constant,
        forensics=forensics,
    )
    return diagnosed(r, _diagnose)


def _constant_output(h: Harness) -> float | None:
    """The single value of the judged output, when every element of it has the same one."""
    with preserved_module(h.model), preserved_rng(), torch.no_grad():
        logits = h.logits(h.forward())
    first = logits.flatten()[:1]
    if logits.numel() < 2 or not bool((logits == first).all()):
        return None
    return float(first)


# Steps whose loss exceeds _EXPLODED times the initial loss (plus the required change) diverged,
# whatever the loss does afterwards: 1.6, then 1.5e12, then 0.0 is a divergent learning rate.
_EXPLODED = 10.0
# The decrease is confirmed by evaluation once the recent steps' losses show it: from step
# _MIN_PROBE on, and again _RECHECK steps after a confirmation that failed.
_MIN_PROBE, _RECHECK, _RECENT = 2, 10, 5
# A run in which no parameter has changed after _STILL steps stops there (a learning-rate warmup
# from 0 moves them by the second or third step).
_STILL = 10


def _looks_done(trace: list[float], initial: float, required: float, sd: float) -> bool:
    """Whether the last steps' losses (each one noisy draw, sd ``sd``) clear the bound with a
    margin of NOISE_FACTOR standard errors of their mean."""
    recent = trace[-_RECENT:]
    margin = NOISE_FACTOR * sd / math.sqrt(len(recent))
    return initial - sum(recent) / len(recent) >= required + margin


def _diverged(trace: list[float], initial: float, required: float, final: float) -> int | None:
    """The first step with a NaN/Inf loss or one that exploded; else, if the loss ended above
    where it started, the first step above the start."""
    exploded = divergence(trace, _EXPLODED * abs(initial) + required)
    if exploded is not None:
        return exploded
    if math.isfinite(final) and final > initial + required:
        return divergence([*trace, final], initial + required)
    return None


def assert_loss_decreases(
    model: torch.nn.Module,
    batch: Any,
    loss_fn: LossFn | None = None,
    *,
    optimizer: OptimizerFactory | None = None,
    step: Step | None = None,
    step_factory: StepFactory | None = None,
    steps: int = 100,
    min_decrease: float = 0.01,
    unpack: bool | None = None,
    seed: int = 0,
    msg: Msg = None,
) -> LossDecreaseResult:
    """Assert that ``steps`` optimisation steps on one batch lower its loss by a clear margin.

    The loss before and after is the mean of 8 train-mode evaluations; the decrease must reach
    ``min_decrease`` (1%) of the initial loss and 3 standard deviations of the difference of two
    such means (1.5 sd of one evaluation's dropout/BatchNorm noise). 25 steps of Adam 3e-4 lower
    every healthy model in the test zoo by 4% to 40%. With ``step``, the check also catches a
    step that never calls ``optimizer.step()`` (no parameter changes), flips the loss sign (the
    loss rises), diverges (NaN/Inf: "diverged at step k") or never calls ``zero_grad`` (its
    second call leaves the previous gradient plus the new one in ``.grad``, compared with a
    gradient computed independently; without this probe such a step still lowers the loss on one
    batch under Adam).

    It proves the wiring from loss to parameters works and descends. It does NOT prove the model
    can fit the batch (:func:`nnsanity.assert_can_overfit`), uses its inputs
    (:func:`nnsanity.assert_uses_inputs`) or generalises.

    ``step_factory(model) -> step`` builds your step afresh for this check (with its own
    optimizer: no state carried over from another check); pass it or ``step``, not both.

    Raises ``SanityError`` when the check fails, ``TypeError``/``ValueError`` on misuse.
    """
    __tracebackhide__ = True
    r = measure_loss_decrease(
        model, batch, loss_fn, optimizer=optimizer, step=step,
        step_factory=step_factory, steps=steps,
        min_decrease=min_decrease, unpack=unpack, seed=seed,
    )  # fmt: skip
    if not r.passed:
        fail(_explain(r), r, msg)
    return r


def _cause(id: str, summary: str, remedy: str = "", support: float = GENERIC, **kw: Any) -> Cause:
    return Cause(id=id, summary=summary, remedy=remedy, support=support, **kw)


def _diagnose(r: LossDecreaseResult) -> list[Cause]:
    if not math.isfinite(r.initial_loss):
        return [
            _cause("nonfinite_at_init", "log/exp/division without an epsilon in the model or loss",
                   "run nnsanity.assert_finite to find the first non-finite value"),
            _cause("broken_init", "a broken init (NaN/Inf weights)", "check the init"),
        ]  # fmt: skip
    if not r.parameters_changed:
        causes = [
            _cause("no_optimizer_step", "the step never calls optimizer.step()",
                   "call optimizer.step() after loss.backward()"),
            _cause("optimizer_holds_other_params", "the optimizer holds other parameters (built "
                   "before the model was replaced, copied or moved), or lr=0",
                   "build it from model.parameters() after moving the model"),
            _cause("graph_cut", "every gradient is zero or None: a detach() or no_grad() cuts "
                   "the graph", "keep the graph from the parameters to the loss"),
        ]  # fmt: skip
        if r.constant_output is not None:  # the gradients were zero: the output is why
            causes.insert(0, _cause(
                "constant_output",
                f"the output is {r.constant_output:g} for every sample whatever the parameters: "
                "softmax or log_softmax over a dimension of size 1 (a single output unit)",
                "use a sigmoid with BCEWithLogitsLoss, or 2 units",
                evidence=(f"every output element is {r.constant_output:g}",), support=MEASURED,
            ))  # fmt: skip
        return causes
    if r.step_problem == "accumulates_gradients":
        return [
            _cause("gradient_accumulation_never_zeroed", "gradient accumulation that never "
                   "zeroes .grad after optimizer.step()", "zero the gradients after each step"),
        ]  # fmt: skip
    if r.step_problem is not None:
        return []  # the forensics' own causes say it
    if r.diverged_at is not None:
        n = len(r.trace)
        loss = r.trace[r.diverged_at] if r.diverged_at < n else r.final_loss
        exploded = not math.isfinite(loss) or max(r.trace) > _EXPLODED * abs(r.initial_loss)
        lr = _cause("lr_too_high", "the learning rate is too high",
                    "lower it 10x (Adam 3e-4 is a safe start)",
                    support=CONSISTENT if exploded else GENERIC)  # fmt: skip
        sign = _cause("flipped_sign", "the update climbs the loss: a flipped sign "
                      "((-loss).backward(), maximize=True, or a negated loss_fn)",
                      "minimise the loss itself",
                      evidence=() if exploded else ("the loss rose smoothly, without exploding",),
                      support=GENERIC if exploded else CONSISTENT)  # fmt: skip
        return [lr, sign]
    return [
        _cause("lr_too_low", "the learning rate is too low for this optimizer",
               "raise it (Adam 3e-4 is a safe start)"),
        _cause("frozen_or_no_gradient", "most parameters are frozen or receive no gradient",
               "run nnsanity.assert_params_update"),
        _cause("noisy_loss", "the loss is very noisy (heavy dropout)", "raise steps="),
    ]  # fmt: skip


def _explain(r: LossDecreaseResult) -> Explanation:
    losses = f"Loss: {r.initial_loss:.4g} -> {r.final_loss:.4g} (train mode, mean of {N_EVALS})"
    if not math.isfinite(r.initial_loss):
        return Explanation(
            header="Loss is not finite at initialisation!",
            lines=[f"Initial loss: {r.initial_loss} (before any step)"],
        )
    if not r.parameters_changed:
        return Explanation(
            header="No parameter changed during training!",
            lines=[f"Parameters changed after {len(r.trace)} steps: none", losses],
        )
    f = r.forensics
    if r.step_problem == "accumulates_gradients":
        return Explanation(
            header="Training step accumulates gradients across calls!",
            lines=["After its 1st call .grad held the previous gradient when the next backward "
                   "began (zero_grad never ran)"],
        )  # fmt: skip
    if r.step_problem is not None:
        assert f is not None
        return Explanation(
            header="The training step does not apply the loss's gradient!",
            lines=[
                f"Gradient at optimizer.step() / gradient of the loss: "
                f"{f.grad_ratio:.3g} (within [{1 / OFF_BY:.2g}, {OFF_BY:g}] required), "
                f"cosine {f.grad_cosine:.3f}, at step {f.grad_step}",
                losses,
            ],
            where=f"your step= function, at its call {f.grad_step} (0 = the first)",
        )
    if r.diverged_at is not None:
        n = len(r.trace)
        loss = r.trace[r.diverged_at] if r.diverged_at < n else r.final_loss
        return Explanation(
            header="Loss diverged!",
            lines=[
                f"Loss at step {r.diverged_at}: {loss:.4g} (up to {r.initial_loss + r.required:.4g}"
                f" allowed: the initial {r.initial_loss:.4g} plus the required change)",
                f"Trace: {excerpt(r.trace)}",
            ],
        )
    return Explanation(
        header="Loss did not decrease enough!",
        lines=[
            f"Decrease over {len(r.trace)} steps: "
            + at_least(f"{r.decrease:.3g}", f"{r.required:.3g}"),
            f"Required: max({r.min_decrease:g} x |initial loss|, {NOISE_FACTOR:g} x noise sd "
            f"{r.noise_sd:.2g}) = max({r.min_decrease * abs(r.initial_loss):.3g}, "
            f"{NOISE_FACTOR * r.noise_sd:.3g})",
            losses,
        ],
        relax="steps= (more) or min_decrease= (smaller).",
    )
