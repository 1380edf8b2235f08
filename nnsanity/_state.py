"""Save and restore everything a check may touch, so checks have no side effects."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from nnsanity.seeding import preserved_rng


@contextlib.contextmanager
def preserved_globals() -> Iterator[None]:
    """Restore the RNG states, grad mode and the deterministic-algorithms flags on exit."""
    grad_enabled = torch.is_grad_enabled()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        with preserved_rng():
            yield
    finally:
        torch.set_grad_enabled(grad_enabled)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


@contextlib.contextmanager
def autograd() -> Iterator[None]:
    """Record operations for backward inside the block, even when the caller is inside
    ``torch.no_grad()`` or ``torch.inference_mode()``; both come back on exit."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


def _tensors(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Every parameter and buffer (persistent or not) by name, each shared one once."""
    yield from model.named_parameters()
    yield from model.named_buffers()


def state_attributes(model: torch.nn.Module) -> dict[str, tuple[torch.Tensor, ...]]:
    """The tensors a module keeps as plain attributes (not parameters or buffers), by name
    (``"hidden"``, ``"encoder.cache"``): where a hidden state carried between calls lives.
    An attribute counts when it holds a tensor, or a tuple, list or dict of tensors (an LSTM's
    ``(h, c)``); parameters in it (an RNN's ``_flat_weights``) do not."""
    found = {}
    for prefix, m in model.named_modules():
        for key, value in vars(m).items():
            if isinstance(value, dict):
                if key.startswith("_"):  # the module's own _parameters, _buffers, ...
                    continue
                value = tuple(value.values())  # self.state = {"h": h, "c": c}
            items = value if isinstance(value, (tuple, list)) else (value,)
            if not items or not all(isinstance(t, torch.Tensor) for t in items):
                continue
            if any(isinstance(t, torch.nn.Parameter) for t in items):
                continue
            found[f"{prefix}.{key}" if prefix else key] = tuple(items)
    return found


@contextlib.contextmanager
def preserved_module(model: torch.nn.Module) -> Iterator[None]:
    """Restore a module's parameters, buffers, gradients and train/eval modes on exit.

    Values are restored in place (``copy_``), so the caller's parameter objects, and the
    optimizers that hold them, stay valid.
    """
    # Not state_dict(): it skips buffers registered with persistent=False (e.g. a counter).
    saved = {k: v.detach().clone() for k, v in _tensors(model)}
    with torch.inference_mode(False):  # restored .grads the caller can train with afterwards
        grads = {
            n: None if p.grad is None else p.grad.detach().clone()
            for n, p in model.named_parameters()
        }
    modes = {name: m.training for name, m in model.named_modules()}
    requires = {n: p.requires_grad for n, p in model.named_parameters()}
    # A state kept on the module between calls (a hidden state) is put back as it was, by
    # reference, as are the attributes that held none and came to hold one.
    kept = {name: vars(m).copy() for name, m in model.named_modules()}
    held = set(state_attributes(model))
    try:
        yield
    finally:
        with torch.no_grad():
            for k, v in _tensors(model):
                if k in saved:
                    v.copy_(saved[k])
        for n, p in model.named_parameters():
            p.grad = grads.get(n)
            p.requires_grad_(requires.get(n, p.requires_grad))
        for name, m in model.named_modules():
            m.training = modes.get(name, m.training)
        _restore_state(model, kept, held | set(state_attributes(model)))


def _restore_state(
    model: torch.nn.Module, kept: dict[str, dict[str, Any]], names: set[str]
) -> None:
    """Put back the attributes ``names`` (``"prefix.key"``) as they were in ``kept``."""
    modules = dict(model.named_modules())
    for name in names:
        prefix, _, key = name.rpartition(".")
        m, before = modules.get(prefix), kept.get(prefix, {})
        if m is None:
            continue
        if key in before:
            object.__setattr__(m, key, before[key])
        elif key in vars(m):
            delattr(m, key)


@contextlib.contextmanager
def isolated(model: torch.nn.Module | None = None) -> Iterator[None]:
    """Everything a check may touch: the globals and, if given, the model."""
    with preserved_globals():
        if model is None:
            yield
        else:
            with preserved_module(model):
                yield
