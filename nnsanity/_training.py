"""One optimisation step on a fixed batch: the library's own, or the user's training step."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from nnsanity._arguments import (
    LossFn,
    OptimizerFactory,
    Step,
    compute_loss,
    default_optimizer,
    forward,
)


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
    are what gets tested.
    """
    if step is not None:

        def run_user() -> float:
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
        opt.zero_grad(set_to_none=True)
        loss = compute_loss(loss_fn, forward(model, inputs), targets)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return run_default


def evaluate_loss(model: torch.nn.Module, inputs: Any, targets: Any, loss_fn: LossFn) -> float:
    with torch.no_grad():
        return float(compute_loss(loss_fn, forward(model, inputs), targets))


def is_finite(x: float) -> bool:
    return math.isfinite(x)
