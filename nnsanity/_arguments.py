"""Validate the arguments checks share, with errors that name the problem and the fix.

Checks call these before doing any work, so misuse raises ``TypeError``/``ValueError`` at the
user's call instead of a traceback from deep inside torch (``torch.testing``'s split between a
misuse and a failed check, which raises :class:`nnsanity.SanityError`).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable
from typing import Any

import torch

LossFn = Callable[[Any, Any], torch.Tensor]
OptimizerFactory = Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]
Step = Callable[[Any], Any]
StepFactory = Callable[[torch.nn.Module], Step]


def check_model(model: Any) -> torch.nn.Module:
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    params = list(model.parameters())
    if not any(p.requires_grad for p in params):
        raise ValueError(
            f"{type(model).__name__} has no trainable parameters (none with requires_grad=True); "
            "a sanity check needs something to train. Did you freeze the whole model?"
        )
    if any(p.is_meta for p in params):
        raise ValueError(
            f"{type(model).__name__} has parameters on the meta device (no data): materialise "
            "it first, e.g. model.to_empty(device='cpu') and initialise, or load its weights."
        )
    if any(p.is_inference() for p in params):
        raise ValueError(
            f"{type(model).__name__}'s parameters were created under torch.inference_mode(), so "
            "autograd cannot train them. Build the model outside inference_mode (or under "
            "torch.no_grad())."
        )
    return model


def check_seed(seed: Any, name: str = "seed") -> int:
    """One rule for every ``seed``: an int in [0, 2**64), what ``torch.manual_seed`` accepts."""
    value = check_int(seed, name)
    if not 0 <= value < 2**64:
        raise ValueError(
            f"{name}={value} is outside [0, 2**64), the range torch can be seeded with"
        )
    return value


def check_int(value: Any, name: str, minimum: int | None = None) -> int:
    """An int that is not a bool (numpy and 0-d torch integers too), at least ``minimum``."""
    try:
        if isinstance(value, bool):
            raise TypeError
        number = int(operator.index(value))
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}.") from None
    if minimum is not None and number < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {number}.")
    return number


def check_number(
    value: Any,
    name: str,
    *,
    low: float = -math.inf,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
    what: str = "a number",
) -> float:
    """A finite real number in the interval from ``low`` to ``high`` (open ends where asked)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise TypeError(f"{name} must be {what}, got {value!r}.")
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high or math.isinf(value):
        lo, hi = "(" if low_open else "[", ")" if high_open else "]"
        raise ValueError(f"{name} must be {what} in {lo}{low:g}, {high:g}{hi}, got {value!r}.")
    return float(value)


def check_bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}.")
    return value


def check_training(optimizer: Any, step: Any) -> None:
    """``optimizer`` (a factory) or ``step`` (the user's training step), not both."""
    if step is not None and not callable(step):
        raise TypeError(f"step must be callable as step(batch) -> loss, got {type(step).__name__}.")
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


def resolve_step(model: Any, optimizer: Any, step: Any, step_factory: Any) -> Step | None:
    """The user's step for one check: ``step`` itself, or a fresh one from
    ``step_factory(model)`` (a new optimizer each check, so no optimizer state, such as Adam's
    moments or a scheduler's count, leaks from one check of a test file into the next)."""
    if step_factory is None:
        return step  # type: ignore[no-any-return]
    if not callable(step_factory):
        raise TypeError(
            "step_factory must be callable as step_factory(model) -> step, got "
            f"{type(step_factory).__name__}."
        )
    if step is not None or optimizer is not None:
        given = "step=" if step is not None else "optimizer="
        raise ValueError(
            f"pass either step_factory= (a fresh step for each check) or {given}, not both: "
            "step_factory(model) builds the step, and with it the optimizer."
        )
    made = step_factory(check_model(model))
    if not callable(made):
        raise TypeError(
            f"step_factory(model) must return a step callable as step(batch) -> loss, got "
            f"{type(made).__name__}."
        )
    return made  # type: ignore[no-any-return]


# Adam at 3e-4 is Karpathy's "safe and forgiving" default, for the checks that ask whether
# training works at all; fitting one batch needs no such caution, and Adam's own default of
# 1e-3 memorises the zoo's healthy models in a third of the steps (assert_can_overfit).
SAFE_LR, FIT_LR = 3e-4, 1e-3


def default_optimizer(lr: float) -> OptimizerFactory:
    """Adam at ``lr``, as a factory ``params -> Optimizer``, fused where torch supports it: one
    kernel for the whole update instead of several per parameter (on torchvision's ResNet-18,
    11 M parameters on one CPU thread, 30 ms instead of 140 ms, a third of a training step on 8
    images of 32 px); the plain one on a device or dtype fused Adam does not cover."""

    def adam(params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
        params = list(params)
        try:
            return torch.optim.Adam(params, lr=lr, fused=True)
        except (RuntimeError, TypeError, ValueError):
            return torch.optim.Adam(params, lr=lr)

    return adam


def first_line(e: BaseException) -> str:
    """The first line of an error's message, without a final period (the caller adds one)."""
    return (str(e).splitlines() or [type(e).__name__])[0].rstrip(".")
