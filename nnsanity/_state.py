"""Save and restore everything a check may touch, so checks have no side effects."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

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


@contextlib.contextmanager
def isolated(model: torch.nn.Module | None = None) -> Iterator[None]:
    """Everything a check may touch: the globals and, if given, the model."""
    with preserved_globals():
        if model is None:
            yield
        else:
            with preserved_module(model):
                yield
