"""The input-independent baseline: a model must fit its batch better than any output that
ignores the inputs can.

Karpathy's recipe, "set up the end-to-end training/evaluation skeleton": train an
input-independent baseline (all inputs set to zero) and check that the model does worse with it
than with the real data. Whatever such a baseline learns, its outputs are the same for every
sample of the batch, so no baseline can beat the best output shared by all samples; that best
loss is found directly, by optimising one shared output against the loss (the label frequencies
for cross-entropy, the target mean for MSE), and the model, trained with the library's own step
(``optimizer`` factory, default Adam 1e-3) or the user's ``step(batch) -> loss``, must get below
it. The model and global state are restored afterwards; the user's own optimizer inside ``step``
is not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
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
from nnsanity._diagnosis import CONTRADICTED, GENERIC, MEASURED, Cause
from nnsanity._forensics import StepForensics
from nnsanity._harness import Harness
from nnsanity._messages import Explanation, Msg, at_least, fail, unpaired_explanation
from nnsanity._outputs import read_outputs, unpaired_causes
from nnsanity._result import CheckResult, diagnosed
from nnsanity._state import autograd, preserved_module
from nnsanity._training import NOISE_FACTOR, required_change, train
from nnsanity.seeding import preserved_rng, seed_torch

# Once the recent steps' mean loss clears the bar by NOISE_FACTOR standard errors, an evaluation
# confirms it; a failed confirmation waits _RECHECK steps. The mean is over _RECENT steps.
_RECENT, _RECHECK = 5, 10


@dataclass(frozen=True, kw_only=True)
class UsesInputsResult(CheckResult):
    """What ``measure_uses_inputs`` measured; losses in the loss's own unit (e.g. nats)."""

    steps: int  # the budget of optimisation steps
    min_gap: float  # the bound's fraction of the input-independent loss
    method: Literal["baseline", "zeroed inputs"]  # how the input-independent loss was found
    initial_loss: float  # mean of N_EVALS train-mode losses on the real inputs at init
    real_loss: float  # after training on the real inputs (same kind of mean)
    baseline_loss: float  # the best input-independent loss (or the zeroed-input run's)
    gap: float  # baseline_loss - real_loss
    required: float  # max(min_gap * |baseline_loss|, 1.5 * noise_sd): the bound on the gap
    noise_sd: float  # sd of one train-mode evaluation of the initial loss
    trace: tuple[float, ...]  # the real run's losses, one per step
    unpaired: str | None = None  # how the loss fails to pair outputs with their own targets
    identical_inputs: bool | None = None  # every sample's data inputs are the same
    forensics: StepForensics | None = None  # what the user's step did to the optimizer

    @property
    def passed(self) -> bool:
        return self.unpaired is None and math.isfinite(self.gap) and self.gap >= self.required


def _baseline(h: Harness) -> tuple[float | None, str | None]:
    with preserved_module(h.model), preserved_rng(), torch.no_grad():
        out = read_outputs(h, h.forward())
        if out is None or not out.logits.is_floating_point():
            return None, None
        return out.baseline_loss(), out.unpaired()


def _zeroed_baseline(h: Harness, steps: int) -> float:
    """Karpathy's literal baseline, where no shared output can be optimised (an ``output=``
    callable): the same model trained from the same init on all-zero data inputs."""
    with autograd():  # zeros autograd can use, even when made under inference_mode()
        zeroed = h.map_data(lambda _, t: torch.zeros_like(t))
    with preserved_module(h.model):
        seed_torch(h.seed)
        trace = train(h.stepper(zeroed), steps)
        return h.evaluate(zeroed)[0] if all(map(math.isfinite, trace)) else math.nan


def measure_uses_inputs(
    model: torch.nn.Module,
    batch: Any,
    loss_fn: LossFn | None = None,
    *,
    optimizer: OptimizerFactory | None = None,
    step: Step | None = None,
    step_factory: StepFactory | None = None,
    steps: int = 200,
    min_gap: float = 0.05,
    output: Any = None,
    unpack: bool | None = None,
    perturb: Any = None,
    seed: int = 0,
) -> UsesInputsResult:
    """Find the best input-independent loss, then train on the real inputs until the model beats
    it by the required gap or ``steps`` steps have run. See :func:`assert_uses_inputs`."""
    steps = check_int(steps, "steps", minimum=1)
    min_gap = check_number(min_gap, "min_gap", low=0, high=1, high_open=True, what="a fraction")
    step = resolve_step(model, optimizer, step, step_factory)
    h = Harness(
        model, batch, loss_fn, seed=seed, optimizer=optimizer, step=step, output=output,
        unpack=unpack, perturb=perturb, default_lr=FIT_LR,
    )  # fmt: skip
    with h.isolated():
        initial, sd = h.evaluate()
        baseline, unpaired = _baseline(h)
        method: Literal["baseline", "zeroed inputs"] = "baseline"
        if baseline is None or not math.isfinite(baseline):
            method, baseline = "zeroed inputs", _zeroed_baseline(h, steps)
        # The gap is measured from the input-independent loss, so it is a fraction of that: the
        # initial loss can be far above it (CTC at init: 35 nats, its best shared output 7.7).
        required = required_change(min_gap, baseline, sd)
        bar = baseline - required
        # a model without randomness has exact step losses: the first below the bar decides
        run, trace, real, confirm_after = h.stepper(), [], math.nan, 1 if sd == 0 else _RECENT
        for _ in range(steps if unpaired is None and math.isfinite(initial) else 0):
            trace.append(run())
            if not math.isfinite(trace[-1]):
                break
            recent = trace[-_RECENT:]
            margin = NOISE_FACTOR * sd / math.sqrt(len(recent))
            if len(trace) >= confirm_after and sum(recent) / len(recent) <= bar - margin:
                real = h.evaluate()[0]
                if real <= bar:
                    break
                confirm_after = len(trace) + _RECHECK
        else:
            real = h.evaluate()[0] if all(map(math.isfinite, trace)) else math.nan
    r = UsesInputsResult(
        seed=h.seed,
        steps=steps,
        min_gap=min_gap,
        method=method,
        initial_loss=initial,
        real_loss=real,
        baseline_loss=baseline,
        gap=baseline - real,
        required=required,
        noise_sd=sd,
        trace=tuple(trace),
        unpaired=unpaired,
        identical_inputs=_identical(h),
        forensics=h.forensics(),
    )
    return diagnosed(r, _diagnose)


def _identical(h: Harness) -> bool | None:
    b = h.batch_size
    data = [t for _, t in h.data_leaves() if t.dim() and t.shape[0] == b]
    if b < 2 or not data:
        return None
    return all(bool((t == t[:1]).all()) for t in data)


def assert_uses_inputs(
    model: torch.nn.Module,
    batch: Any,
    loss_fn: LossFn | None = None,
    *,
    optimizer: OptimizerFactory | None = None,
    step: Step | None = None,
    step_factory: StepFactory | None = None,
    steps: int = 200,
    min_gap: float = 0.05,
    output: Any = None,
    unpack: bool | None = None,
    perturb: Any = None,
    seed: int = 0,
    msg: Msg = None,
) -> UsesInputsResult:
    """Assert that the model fits its batch clearly better than any input-independent output.

    Karpathy's input-independent baseline, at its best: a model that ignores its inputs gives
    every sample of the batch the same output (it may still vary along other dimensions, such
    as position in a sequence), so no such model can beat the lowest loss of one output shared by
    all samples, which the check finds by optimising that output directly against the loss
    (L-BFGS; for a model that computes its own loss, the better of the uniform output and the
    batch's label frequencies). The model is then trained, up to ``steps`` (200) steps, and its
    loss must end below that baseline by ``min_gap`` (5%) of the baseline and by 3 standard
    deviations of the difference of two 8-evaluation means (1.5 sd of one evaluation's dropout
    noise); training stops as soon as an evaluation confirms it. Where no shared output can be
    optimised (an ``output=`` callable), the same model trained on all-zero data inputs is the
    baseline instead, as in the recipe (masks, lengths and ids of positions are kept).

    It proves the outputs depend on the inputs in a way training can exploit. It does NOT prove
    the model uses the right inputs, that the inputs carry information about the labels (one
    batch can be memorised whatever its labels: see ``assert_learns_signal``), or that inputs
    are not leaking the targets.

    ``step_factory(model) -> step`` builds your step afresh for this check (with its own
    optimizer: no state carried over from another check); pass it or ``step``, not both.

    Raises ``SanityError`` when the check fails, ``TypeError``/``ValueError`` on misuse.
    """
    __tracebackhide__ = True
    r = measure_uses_inputs(
        model, batch, loss_fn, optimizer=optimizer, step=step,
        step_factory=step_factory, steps=steps, min_gap=min_gap,
        output=output, unpack=unpack, perturb=perturb, seed=seed,
    )  # fmt: skip
    if not r.passed:
        fail(_explain(r), r, msg)
    return r


def _diagnose(r: UsesInputsResult) -> list[Cause]:
    if r.unpaired is not None:
        return unpaired_causes(r.unpaired)
    same = r.identical_inputs
    return [
        Cause(id="ignores_inputs", summary="forward ignores its input: it returns a learned "
              "constant, multiplies the input by 0, or reads something other than its argument",
              remedy="trace what forward does with its argument",
              evidence=("the real inputs do exactly as well as the best shared output",)
              if r.gap == 0 else (), support=MEASURED if r.gap == 0 and not same else GENERIC),
        Cause(id="identical_inputs", summary="the inputs are the same for every sample (a "
              "preprocessing step zeroed or clipped them)", remedy="check the data pipeline",
              evidence=("every sample's data inputs are identical",) if same else
              ("the samples' inputs differ",) if same is False else (),
              support=MEASURED if same else CONTRADICTED if same is False else GENERIC),
        Cause(id="too_few_steps", summary=f"steps={r.steps} is too few for the model to start "
              "using its inputs", remedy="raise steps="),
    ]  # fmt: skip


def _explain(r: UsesInputsResult) -> Explanation:
    if r.unpaired is not None:
        return unpaired_explanation(r.unpaired)
    baseline = (
        "the best output shared by every sample"
        if r.method == "baseline"
        else "the same model trained on zeroed inputs"
    )
    same = " (the same: the outputs ignore the inputs)" if r.gap == 0 else ""
    return Explanation(
        header="Model does no better with its inputs than without them!",
        lines=[
            f"Gap below the input-independent loss after {len(r.trace)} steps: "
            + at_least(f"{r.gap:.3g}{same}", f"{r.required:.3g}"),
            f"Loss: {r.real_loss:.4g} on the real inputs; {r.baseline_loss:.4g} for {baseline}",
            f"Required: max({r.min_gap:g} x |input-independent loss| {abs(r.baseline_loss):.4g}, "
            f"{NOISE_FACTOR:g} x noise sd {r.noise_sd:.2g})",
        ],
        relax="steps= (more) or min_gap= (smaller).",
    )
