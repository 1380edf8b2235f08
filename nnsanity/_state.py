"""Save and restore everything a check may touch, so checks have no side effects."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch


def seed_torch(seed: int) -> None:
    """Seed torch's CPU generator, and the CUDA ones only if CUDA is already initialised.

    ``torch.manual_seed`` would also queue a lazy CUDA seed when CUDA is not initialised yet, so
    the caller's first CUDA use later would start from the check's seed: a leak that
    ``preserved_rng`` cannot undo. A check on a CUDA model has initialised CUDA already.
    """
    torch.default_generator.manual_seed(seed)
    if torch.cuda.is_initialized():
        torch.cuda.manual_seed_all(seed)


@contextlib.contextmanager
def preserved_rng(*, all_cuda: bool = False) -> Iterator[None]:
    """Restore the torch (CPU and every CUDA device), numpy and ``random`` RNG states on exit.

    The CUDA states are saved if CUDA is initialised, or with ``all_cuda`` whenever it is
    available (initialising it): for a block that seeds CUDA even before its first use.
    """
    py_state = random.getstate()
    np_state = np.random.get_state()
    torch_state = torch.get_rng_state()
    save_cuda = torch.cuda.is_initialized() or (all_cuda and torch.cuda.is_available())
    cuda_states = torch.cuda.get_rng_state_all() if save_cuda else None
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)


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
