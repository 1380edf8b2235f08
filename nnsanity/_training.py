"""What the training checks share: their arguments, one optimisation step, and reading the loss.

A training check trains ``model`` on one fixed batch with the library's own step (``optimizer``
factory, default Adam 3e-4) or the user's ``step(batch) -> loss``, inside ``isolated(model)`` so
the model and global state come back afterwards. Losses before and after training are means of
``N_EVALS`` train-mode evaluations, whose spread is the noise floor of any comparison of two.
"""

from __future__ import annotations

import contextlib
import math
import statistics
from collections.abc import Callable, Iterator
from typing import Any

import torch

from nnsanity._arguments import (
    LossFn,
    OptimizerFactory,
    Step,
    check_batch,
    check_model,
    check_seed,
    check_step,
    compute_loss,
    default_optimizer,
    forward,
)
from nnsanity._state import autograd, isolated, preserved_module
from nnsanity.seeding import seed_torch

N_EVALS = 8  # repeated train-mode evaluations measure dropout/BatchNorm noise in the loss
NOISE_Z = 3.0  # a difference of two such means must exceed 3 of its standard deviations


def validate(
    model: Any, batch: Any, loss_fn: Any, optimizer: Any, step: Any, seed: Any, **counts: Any
) -> tuple[Any, Any]:
    """Check the shared arguments of the training checks; return the batch on the model's device."""
    check_model(model)
    if not callable(loss_fn):
        raise TypeError(
            f"loss_fn must be callable as loss_fn(outputs, targets), got {type(loss_fn).__name__}."
        )
    check_step(step)
    if optimizer is not None and not callable(optimizer):
        raise TypeError(
            "optimizer must be a factory params -> Optimizer, e.g. "
            f"lambda p: torch.optim.SGD(p, lr=0.1); got {type(optimizer).__name__}."
        )
    if optimizer is not None and step is not None:
        raise ValueError(
            "pass either optimizer= (nnsanity runs the step) or step= (your own "
            "training step, which owns its optimizer), not both."
        )
    check_seed(seed)
    for name, value in counts.items():
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}.")
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}.")
    return check_batch(batch, model)


def check_fraction(value: Any, name: str) -> None:
    if not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"{name} must be a fraction in [0, 1), got {value!r}.")


@contextlib.contextmanager
def isolated_training(model: torch.nn.Module, seed: int) -> Iterator[None]:
    """The model in train mode and the RNGs seeded, all restored on exit."""
    with isolated(model):
        seed_torch(seed)
        model.train()
        yield


def make_stepper(
    model: torch.nn.Module,
    inputs: Any,
    targets: Any,
    loss_fn: LossFn,
    optimizer: OptimizerFactory | None,
    step: Step | None,
) -> Callable[[], float]:
    """Return ``run() -> loss`` performing one optimisation step on ``(inputs, targets)``.

    With ``step``, the user's own training step is called as ``step((inputs, targets))`` and must
    return the loss *before* its update (as a tensor or a float), so that bugs in the user's loop
    are what gets tested. Either step runs with autograd on, even if the check was called inside
    ``torch.no_grad()`` or ``torch.inference_mode()``.
    """
    if step is not None:

        def run_user() -> float:
            with autograd():
                loss = step((inputs, targets))
            if isinstance(loss, torch.Tensor):
                if loss.numel() != 1:
                    raise ValueError(
                        f"step returned a tensor of shape {tuple(loss.shape)}; it must return the "
                        "scalar loss of the batch (a 0-d tensor or a float)."
                    )
                return float(loss.detach())
            if isinstance(loss, (int, float)):
                return float(loss)
            raise TypeError(
                f"step must return the loss as a tensor or float, got {type(loss).__name__}."
            )

        return run_user

    params = [p for p in model.parameters() if p.requires_grad]
    opt = (optimizer or default_optimizer)(params)
    if not isinstance(opt, torch.optim.Optimizer):
        raise TypeError(
            "optimizer must be a factory params -> torch.optim.Optimizer, e.g. "
            "lambda p: torch.optim.SGD(p, lr=0.1); got one returning "
            f"{type(opt).__name__}."
        )

    def run_default() -> float:
        with autograd():
            opt.zero_grad(set_to_none=True)
            loss = compute_loss(loss_fn, forward(model, inputs), targets)
            loss.backward()
            opt.step()
        return float(loss.detach())

    return run_default


def train(run: Callable[[], float], steps: int, stop_at: float = -math.inf) -> list[float]:
    """Losses returned by up to ``steps`` calls; stops at a non-finite loss or at ``stop_at``."""
    trace: list[float] = []
    for _ in range(steps):
        trace.append(run())
        if not math.isfinite(trace[-1]) or trace[-1] <= stop_at:
            break
    return trace


def divergence(trace: list[float], threshold: float) -> int | None:
    """The first step whose loss was NaN/Inf or above ``threshold``."""
    return next((k for k, v in enumerate(trace) if not math.isfinite(v) or v > threshold), None)


def evaluate(
    model: torch.nn.Module, inputs: Any, targets: Any, loss_fn: LossFn
) -> tuple[float, float]:
    """Mean and sd of ``N_EVALS`` train-mode losses: dropout masks and BatchNorm batch statistics
    make them differ, and that spread is the noise floor of any comparison of two losses."""
    with preserved_module(model), torch.no_grad():  # BatchNorm running stats stay untouched
        losses = [
            float(compute_loss(loss_fn, forward(model, inputs), targets)) for _ in range(N_EVALS)
        ]
    if not all(map(math.isfinite, losses)):
        return math.nan, math.nan
    return statistics.fmean(losses), statistics.stdev(losses)


def final_loss(
    model: torch.nn.Module, inputs: Any, targets: Any, loss_fn: LossFn, trace: list[float]
) -> float:
    """The mean train-mode loss after training; NaN if training met a non-finite loss."""
    if not all(map(math.isfinite, trace)):
        return math.nan
    return evaluate(model, inputs, targets, loss_fn)[0]


def required_change(fraction: float, initial: float, sd: float) -> float:
    """The change of a mean loss that counts: ``fraction`` of ``initial``, and beyond the noise
    (``NOISE_Z`` standard deviations of a difference of two means of ``N_EVALS`` evaluations)."""
    if not math.isfinite(sd):
        return 0.0
    return max(fraction * abs(initial), NOISE_Z * sd * math.sqrt(2 / N_EVALS))


def backward_once(model: torch.nn.Module, inputs: Any, targets: Any, loss_fn: LossFn) -> float:
    """One forward/backward in training mode on fresh gradients; returns the loss.

    Autograd is on for it even when the caller is inside ``no_grad()``/``inference_mode()``.
    """
    model.train()
    for p in model.parameters():
        p.grad = None
    with autograd():
        loss = compute_loss(loss_fn, forward(model, inputs), targets)
        loss.backward()
    return float(loss.detach())
