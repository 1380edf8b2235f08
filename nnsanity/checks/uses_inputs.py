"""The input-independent baseline: a model must fit its batch better with its inputs than without.

Karpathy's recipe, "set up the end-to-end training/evaluation skeleton": train an input-independent
baseline (all inputs set to zero) and check that the model does worse with it than with the real
data. The same model is trained from the same init on both, with the library's own step
(``optimizer`` factory, default Adam 3e-4) or the user's ``step(batch) -> loss``. The model and
global state are restored afterwards; the user's own optimizer inside ``step`` is not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from nnsanity._arguments import LossFn, OptimizerFactory, Step, check_int, check_number
from nnsanity._harness import Harness
from nnsanity._messages import Explanation, Msg, at_least, fail
from nnsanity._result import CheckResult
from nnsanity._state import autograd, preserved_module
from nnsanity._training import NOISE_FACTOR, required_change, train
from nnsanity.seeding import seed_torch


@dataclass(frozen=True, kw_only=True)
class UsesInputsResult(CheckResult):
    """What ``measure_uses_inputs`` measured; losses in the loss's own unit (e.g. nats)."""

    steps: int
    min_gap: float  # the bound's fraction of the initial loss
    initial_loss: float  # mean of N_EVALS train-mode losses on the real inputs at init
    real_loss: float  # after ``steps`` steps on the real inputs (same kind of mean)
    zeroed_loss: float  # after ``steps`` steps from the same init on all-zero inputs
    gap: float  # zeroed_loss - real_loss
    required: float  # max(min_gap * |initial_loss|, 1.5 * noise_sd): the bound
    noise_sd: float  # sd of one train-mode evaluation of the initial loss
    real_trace: tuple[float, ...]
    zeroed_trace: tuple[float, ...]

    @property
    def passed(self) -> bool:
        return math.isfinite(self.gap) and self.gap >= self.required


def measure_uses_inputs(
    model: torch.nn.Module,
    batch: Any,
    loss_fn: LossFn | None = None,
    *,
    optimizer: OptimizerFactory | None = None,
    step: Step | None = None,
    steps: int = 200,
    min_gap: float = 0.05,
    unpack: bool | None = None,
    perturb: Any = None,
    seed: int = 0,
) -> UsesInputsResult:
    """Train from the same init on the real and on all-zero inputs; measure both final losses.

    See :func:`assert_uses_inputs`. Never raises ``SanityError``.
    """
    steps = check_int(steps, "steps", minimum=1)
    min_gap = check_number(min_gap, "min_gap", low=0, high=1, high_open=True, what="a fraction")
    h = Harness(
        model, batch, loss_fn, seed=seed, optimizer=optimizer, step=step, unpack=unpack,
        perturb=perturb,
    )  # fmt: skip
    with autograd():  # zeros autograd can use, even when made under inference_mode()
        zeroed = h.map_data(lambda _, t: torch.zeros_like(t))
    results = []
    with h.isolated():
        initial, sd = h.evaluate()
        # Real inputs first: a user step's optimizer keeps its state into the second run, which
        # can only favour the baseline, so a pass still holds.
        for x in (h.inputs, zeroed):
            with preserved_module(h.model):  # both runs start from the same init
                seed_torch(h.seed)  # ... with the same dropout masks
                trace = train(h.stepper(x), steps)
                final = h.evaluate(x)[0] if all(map(math.isfinite, trace)) else math.nan
            results.append((final, tuple(trace)))
    (real, real_trace), (zero, zeroed_trace) = results
    return UsesInputsResult(
        seed=h.seed,
        steps=steps,
        min_gap=min_gap,
        initial_loss=initial,
        real_loss=real,
        zeroed_loss=zero,
        gap=zero - real,
        required=required_change(min_gap, initial, sd),
        noise_sd=sd,
        real_trace=real_trace,
        zeroed_trace=zeroed_trace,
    )


def assert_uses_inputs(
    model: torch.nn.Module,
    batch: Any,
    loss_fn: LossFn | None = None,
    *,
    optimizer: OptimizerFactory | None = None,
    step: Step | None = None,
    steps: int = 200,
    min_gap: float = 0.05,
    unpack: bool | None = None,
    perturb: Any = None,
    seed: int = 0,
    msg: Msg = None,
) -> UsesInputsResult:
    """Assert that the model fits its batch clearly better with its inputs than with zeros.

    Karpathy's input-independent baseline: the same model, from the same init and seed, is trained
    ``steps`` steps on the real inputs and on ``torch.zeros_like`` inputs (token ids become 0);
    the loss on the real inputs must end lower by ``min_gap`` (5%) of the initial loss and by 3
    standard deviations of the difference of two 8-evaluation means (1.5 sd of one evaluation's
    dropout/BatchNorm noise). From zero inputs a model can only learn the label frequencies, from
    real ones it can memorise the batch: after 200 Adam 3e-4 steps the healthy zoo models show
    gaps of 20% to 80% of the initial loss. Only the data inputs are zeroed; masks, lengths and
    position or type ids are kept (``perturb=`` names the data inputs instead).

    It proves the outputs depend on the inputs in a way training can exploit. It does NOT prove
    the model uses the right inputs, or that inputs are not leaking the targets.

    Raises ``SanityError`` when the check fails, ``TypeError``/``ValueError`` on misuse.
    """
    __tracebackhide__ = True
    r = measure_uses_inputs(
        model, batch, loss_fn, optimizer=optimizer, step=step, steps=steps, min_gap=min_gap,
        unpack=unpack, perturb=perturb, seed=seed,
    )  # fmt: skip
    if not r.passed:
        fail(_explain(r), r, seed=r.seed, msg=msg)
    return r


def _explain(r: UsesInputsResult) -> Explanation:
    same = " (identical: the outputs ignore the inputs)" if r.gap == 0 else ""
    return Explanation(
        header="Model does no better with its inputs than with zeros!",
        lines=[
            f"Gap after {r.steps} steps: " + at_least(f"{r.gap:.3g}{same}", f"{r.required:.3g}"),
            f"Required: max({r.min_gap:g} x |initial loss| {abs(r.initial_loss):.4g}, "
            f"{NOISE_FACTOR:g} x noise sd {r.noise_sd:.2g})",
            f"Loss: {r.real_loss:.4g} on the real inputs, {r.zeroed_loss:.4g} on zeroed ones",
        ],
        causes=[
            "forward ignores its input: it returns a learned constant, multiplies the input by 0, "
            "or reads something other than its argument",
            "the inputs carry no information about the targets (shuffled separately, wrong column)",
            f"steps={r.steps} is too few for the model to start using its inputs",
        ],
        relax="steps= (more) or min_gap= (smaller).",
    )
