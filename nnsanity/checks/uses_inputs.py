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

from nnsanity._arguments import LossFn, OptimizerFactory, Step, map_tensors
from nnsanity._messages import failure
from nnsanity._state import autograd, preserved_module
from nnsanity._training import (
    check_fraction,
    evaluate,
    final_loss,
    isolated_training,
    make_stepper,
    required_change,
    train,
    validate,
)
from nnsanity.seeding import seed_torch


@dataclass(frozen=True)
class UsesInputsResult:
    """What ``measure_uses_inputs`` measured."""

    initial_loss: float  # mean of N_EVALS train-mode losses on the real inputs at init
    real_loss: float  # after ``steps`` steps on the real inputs (same kind of mean)
    zeroed_loss: float  # after ``steps`` steps from the same init on all-zero inputs
    gap: float  # zeroed_loss - real_loss
    required: float  # max(min_gap * |initial_loss|, 3 sd of the noise)
    noise_sd: float
    real_trace: tuple[float, ...]
    zeroed_trace: tuple[float, ...]

    @property
    def passed(self) -> bool:
        return math.isfinite(self.gap) and self.gap >= self.required


def measure_uses_inputs(
    model: torch.nn.Module,
    batch: Any,
    loss_fn: LossFn,
    *,
    optimizer: OptimizerFactory | None = None,
    step: Step | None = None,
    steps: int = 200,
    min_gap: float = 0.05,
    seed: int = 0,
) -> UsesInputsResult:
    """Train from the same init on the real and on all-zero inputs; measure both final losses.

    See :func:`assert_uses_inputs`. Never raises ``SanityError``.
    """
    inputs, targets = validate(model, batch, loss_fn, optimizer, step, seed, steps=steps)
    check_fraction(min_gap, "min_gap")
    with autograd():  # zeros autograd can use, even when made under inference_mode()
        zeroed = map_tensors(torch.zeros_like, inputs)
    results = []
    with isolated_training(model, seed):
        initial, sd = evaluate(model, inputs, targets, loss_fn)
        # Real inputs first: a user step's optimizer keeps its state into the second run, which
        # can only favour the baseline, so a pass still holds.
        for x in (inputs, zeroed):
            with preserved_module(model):  # both runs start from the same init
                seed_torch(seed)  # ... with the same dropout masks
                trace = train(make_stepper(model, x, targets, loss_fn, optimizer, step), steps)
                final = final_loss(model, x, targets, loss_fn, trace)
            results.append((final, tuple(trace)))
    (real, real_trace), (zeroed, zeroed_trace) = results
    required = required_change(min_gap, initial, sd)
    return UsesInputsResult(
        initial, real, zeroed, zeroed - real, required, sd, real_trace, zeroed_trace
    )


def assert_uses_inputs(
    model: torch.nn.Module,
    batch: Any,
    loss_fn: LossFn,
    *,
    optimizer: OptimizerFactory | None = None,
    step: Step | None = None,
    steps: int = 200,
    min_gap: float = 0.05,
    seed: int = 0,
) -> UsesInputsResult:
    """Assert that the model fits its batch clearly better with its inputs than with zeros.

    Karpathy's input-independent baseline: the same model, from the same init and seed, is trained
    ``steps`` steps on the real inputs and on ``torch.zeros_like`` inputs (token ids become 0);
    the loss on the real inputs must end lower by ``min_gap`` (5%) of the initial loss and by 3
    standard deviations of the dropout/BatchNorm noise. From zero inputs a model can only learn
    the label frequencies, from real ones it can memorise the batch: after 200 Adam 3e-4 steps
    the healthy zoo models show gaps of 20% to 80% of the initial loss.

    It proves the outputs depend on the inputs in a way training can exploit. It does NOT prove
    the model uses the right inputs, or that inputs are not leaking the targets.
    """
    __tracebackhide__ = True
    r = measure_uses_inputs(
        model,
        batch,
        loss_fn,
        optimizer=optimizer,
        step=step,
        steps=steps,
        min_gap=min_gap,
        seed=seed,
    )
    if r.passed:
        return r
    same = " (identical: the outputs ignore the inputs)" if r.gap == 0 else ""
    raise failure(
        "Model does no better with its inputs than with zeros",
        f"loss after {steps} steps {r.real_loss:.4g} on the real inputs vs {r.zeroed_loss:.4g} on "
        f"zeroed ones, a gap of {r.gap:.3g}{same} < {r.required:.3g} required ({min_gap:g} x the "
        f"initial {r.initial_loss:.4g}, or 3 sd of its noise)",
        [
            "forward ignores its input: it returns a learned constant, multiplies the input by 0, "
            "or reads something other than its argument",
            "the inputs carry no information about the targets (shuffled separately, wrong column)",
            f"steps={steps} is too few for the model to start using its inputs",
        ],
        "Pass steps= (more) or min_gap= (smaller) to relax.",
        r,
    )
