"""Does every parameter learn? Gradients reach it, and one optimisation step changes it.

Catches the silent bugs that leave part of a network untrained while the loss still falls:
a layer frozen or detached by mistake, dead ReLU units, a step that never updates.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

import torch

from nnsanity._arguments import (
    LossFn,
    OptimizerFactory,
    Step,
)
from nnsanity._messages import failure
from nnsanity._state import isolated
from nnsanity._training import backward_once, make_stepper, validate
from nnsanity.seeding import seed_torch

# A unit is a row of a Linear/Conv weight (dim 1 of a transposed conv's weight); it is dead on
# the batch when that row's gradient is exactly zero: e.g. a ReLU whose input is < 0 for every
# example. Healthy zoo models at init have none (0 of 32-128 units per layer), so half a layer
# dead is far outside what random init produces on a batch of 16.
_UNIT_LAYERS = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
_TRANSPOSED = (torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)


@dataclass(frozen=True)
class ParamsUpdateResult:
    """Parameter names by problem found (empty tuples when healthy)."""

    loss: float
    n_params: int
    n_trainable: int
    frozen_by_mistake: tuple[str, ...]  # requires_grad=False, not matched by ``frozen``
    not_frozen: tuple[str, ...]  # matched by ``frozen`` but requires_grad=True
    nonfinite_grad: tuple[str, ...]
    no_grad: tuple[str, ...]  # trainable, but .grad is None after backward
    zero_grad: tuple[str, ...]  # gradient exactly zero everywhere
    dead_units: tuple[tuple[str, int, int], ...]  # (layer, units with zero gradient, units)
    unchanged: tuple[str, ...]  # trainable, identical after one step
    frozen_changed: tuple[str, ...]  # requires_grad=False, yet changed by the step
    nonfinite_after: tuple[str, ...]  # NaN/Inf after the step


def _names(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(f"'{n}'" for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _patterns(frozen: Any, model: torch.nn.Module) -> tuple[str, ...]:
    patterns = (frozen,) if isinstance(frozen, str) else frozen
    if not isinstance(patterns, Iterable) or not all(isinstance(p, str) for p in patterns):
        raise TypeError(
            f"frozen must be a glob or a list of globs over parameter names, e.g. "
            f"frozen=['backbone.*'], got {frozen!r}."
        )
    patterns = tuple(patterns)
    names = [n for n, _ in model.named_parameters()]
    for pat in patterns:
        if not any(fnmatchcase(n, pat) for n in names):
            raise ValueError(
                f"frozen pattern {pat!r} matches no parameter of "
                f"{type(model).__name__}; its parameters are {_names(names)}."
            )
    return patterns


def _dead_units(model: torch.nn.Module) -> list[tuple[str, int, int]]:
    """Per layer, the units whose weight row and bias both get exactly zero gradient.

    The bias gradient is the unit's summed error, so a layer fed all-zero inputs (weight rows
    zero, bias alive) is not counted; without a bias only the weight row can be read.
    """
    found = []
    for name, m in model.named_modules():
        if not isinstance(m, _UNIT_LAYERS + _TRANSPOSED):
            continue
        w, b = m.weight, m.bias
        if not w.requires_grad or w.grad is None:
            continue
        g = w.grad.detach().transpose(0, 1) if isinstance(m, _TRANSPOSED) else w.grad.detach()
        zero = (g.reshape(g.shape[0], -1) == 0).all(1)
        if b is not None and b.grad is not None and b.shape[0] == zero.shape[0]:
            zero &= b.grad.detach() == 0
        if dead := int(zero.sum()):
            found.append((name or type(m).__name__, dead, zero.shape[0]))
    return found


def measure_params_update(
    model: torch.nn.Module,
    batch: Any,
    loss_fn: LossFn,
    *,
    frozen: str | Iterable[str] = (),
    optimizer: OptimizerFactory | None = None,
    step: Step | None = None,
    seed: int = 0,
) -> ParamsUpdateResult:
    """Backward once (training mode), then take one optimisation step; see the assert."""
    inputs, targets = validate(model, batch, loss_fn, optimizer, step, seed)
    patterns = _patterns(frozen, model)
    with isolated(model):
        seed_torch(seed)
        params = dict(model.named_parameters())
        listed = {n for n in params if any(fnmatchcase(n, pat) for pat in patterns)}
        trainable = [n for n, p in params.items() if p.requires_grad]
        loss = backward_once(model, inputs, targets, loss_fn)
        grads = {n: params[n].grad for n in trainable}
        dead = _dead_units(model)

        before = {n: p.detach().clone() for n, p in params.items()}
        for p in params.values():
            p.grad = None  # the step starts from fresh gradients, as in a training loop
        make_stepper(model, inputs, targets, loss_fn, optimizer, step)()
        after = {n: p.detach() for n, p in params.items()}

        def pick(cond: Any, among: Iterable[str]) -> tuple[str, ...]:
            return tuple(n for n in among if cond(n))

        return ParamsUpdateResult(
            loss=loss,
            n_params=len(params),
            n_trainable=len(trainable),
            frozen_by_mistake=pick(lambda n: n not in listed and n not in trainable, params),
            not_frozen=pick(lambda n: n in listed, trainable),
            nonfinite_grad=pick(
                lambda n: grads[n] is not None and not bool(torch.isfinite(grads[n]).all()),
                trainable,
            ),
            no_grad=pick(lambda n: grads[n] is None, trainable),
            zero_grad=pick(lambda n: grads[n] is not None and not bool(grads[n].any()), trainable),
            dead_units=tuple(dead),
            unchanged=pick(lambda n: torch.equal(before[n], after[n]), trainable),
            frozen_changed=pick(
                lambda n: n not in trainable and not torch.equal(before[n], after[n]), params
            ),
            nonfinite_after=pick(lambda n: not bool(torch.isfinite(after[n]).all()), params),
        )


def assert_params_update(
    model: torch.nn.Module,
    batch: Any,
    loss_fn: LossFn,
    *,
    frozen: str | Iterable[str] = (),
    optimizer: OptimizerFactory | None = None,
    step: Step | None = None,
    max_dead_fraction: float = 0.5,
    seed: int = 0,
) -> ParamsUpdateResult:
    """Check that every trainable parameter gets a non-zero finite gradient and is updated.

    Fails when a parameter has ``requires_grad=False`` without matching a glob in ``frozen``
    (or matches one yet is trainable), gets no gradient (``.detach()``, ``no_grad``, unused),
    an all-zero or non-finite gradient, when over ``max_dead_fraction`` of a Linear/Conv
    layer's units get exactly zero gradient on the batch (dead ReLUs), or when one step of
    ``optimizer`` (default Adam 3e-4) or of your ``step(batch) -> loss`` leaves a trainable
    parameter unchanged, changes a frozen one, or makes one non-finite.

    Proves: on this batch, every parameter is wired to the loss and the step updates it.
    Does not prove: the updates have a sensible size or direction (see the loss-decrease and
    overfitting checks), or that a unit dead on this batch is dead on all data.
    """
    __tracebackhide__ = True
    if not isinstance(max_dead_fraction, (int, float)) or not 0 <= max_dead_fraction <= 1:
        raise ValueError(
            f"max_dead_fraction must be a number in [0, 1], got {max_dead_fraction!r}."
        )
    r = measure_params_update(
        model, batch, loss_fn, frozen=frozen, optimizer=optimizer, step=step, seed=seed
    )
    count = f"of {r.n_params} parameters"
    detach = (
        "a .detach(), .item()/.numpy() round trip or torch.no_grad() in forward cuts it "
        "from the loss: keep the graph"
    )
    if r.frozen_by_mistake:
        raise failure(
            f"{len(r.frozen_by_mistake)} {count} are frozen (requires_grad=False)",
            _names(r.frozen_by_mistake),
            [
                "left frozen after fine-tuning or a freeze loop that matched too much: call "
                "requires_grad_(True)",
                "frozen on purpose: list it in frozen=[...]",
            ],
            "Pass frozen=[glob, ...] naming the parameters meant to stay fixed.",
            r,
        )
    if r.not_frozen:
        raise failure(
            f"{len(r.not_frozen)} {count} match frozen= but are trainable",
            _names(r.not_frozen),
            [
                "the freeze was never applied: call requires_grad_(False) on them",
                "the glob matches more than intended: narrow it",
            ],
            None,
            r,
        )
    if r.nonfinite_grad:
        raise failure(
            f"{len(r.nonfinite_grad)} {count} get NaN/Inf gradients",
            _names(r.nonfinite_grad),
            [
                "log/sqrt/division of a value that can be zero: clamp it or add an epsilon",
                "exploding activations: run assert_finite to find the first non-finite tensor",
            ],
            None,
            r,
        )
    if r.no_grad:
        raise failure(
            f"{len(r.no_grad)} {count} receive no gradient (.grad is None after backward)",
            _names(r.no_grad),
            [
                detach,
                "the module is never called in forward (or its output never reaches the "
                "loss): remove it or wire it in",
                "frozen on purpose: set requires_grad=False and list it in frozen=[...]",
            ],
            None,
            r,
        )
    dead = [(n, d, t) for n, d, t in r.dead_units if d > max_dead_fraction * t]
    dead_text = "; ".join(f"'{n}' {d}/{t} units ({d / t:.0%})" for n, d, t in dead[:5])
    relu = (
        "dead ReLUs: a large negative bias or too high a learning rate pushed units below "
        "zero for every example; use He init with zero biases, LeakyReLU, or a lower lr"
    )
    if r.zero_grad:
        raise failure(
            f"{len(r.zero_grad)} {count} get an exactly zero gradient",
            _names(r.zero_grad) + (f" (dead units: {dead_text})" if dead else ""),
            [
                relu,
                "a zero-initialised layer or a multiplication by zero blocks the gradient: "
                "initialise it randomly",
                detach,
            ],
            None,
            r,
        )
    if dead:
        raise failure(
            f"Over {max_dead_fraction:.0%} of a layer's units get exactly zero gradient (dead)",
            dead_text,
            [relu, "inputs all zero or constant: check the data pipeline"],
            f"Pass max_dead_fraction={math.ceil(100 * max(d / t for _, d, t in dead)) / 100:g} "
            "or more to allow this.",
            r,
        )
    if r.nonfinite_after:
        raise failure(
            f"{len(r.nonfinite_after)} {count} are NaN/Inf after one step",
            _names(r.nonfinite_after),
            [
                "a learning rate far too high: lower it",
                "the step divides by zero (e.g. a custom optimiser without an epsilon)",
            ],
            None,
            r,
        )
    if r.unchanged and len(r.unchanged) == r.n_trainable:
        raise failure(
            f"None of the {r.n_trainable} trainable parameters changed after one step",
            "every parameter is identical before and after",
            [
                "the step never calls optimizer.step() (or calls it before backward)",
                "the optimizer holds copies or another model's parameters: build it from "
                "model.parameters() after moving the model to its device",
                "a learning rate of zero",
            ],
            None,
            r,
        )
    if r.unchanged:
        raise failure(
            f"{len(r.unchanged)} {count} did not change after one step",
            _names(r.unchanged),
            [
                "they are missing from the optimizer: build it from model.parameters() (or add "
                "a param group)",
                "a learning rate of zero in their param group",
            ],
            None,
            r,
        )
    if r.frozen_changed:
        raise failure(
            f"{len(r.frozen_changed)} frozen parameters changed after one step",
            _names(r.frozen_changed),
            [
                "the step writes to them directly (weight decay or an EMA outside the "
                "optimizer): skip parameters with requires_grad=False"
            ],
            None,
            r,
        )
    return r
