"""Everything a check promises to leave as it found it, captured to compare before and after."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn


def snapshot(model: nn.Module | None = None) -> dict[str, Any]:
    """The global state a check may touch and, if given, the model's state."""
    state: dict[str, Any] = {
        "torch RNG": torch.get_rng_state(),
        "CUDA RNG": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "numpy RNG": np.random.get_state(),
        "random RNG": random.getstate(),
        "grad mode": torch.is_grad_enabled(),
        "inference mode": torch.is_inference_mode_enabled(),
        "deterministic algorithms": (
            torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled(),
        ),
    }
    if model is not None:
        state |= {
            # named_buffers, not state_dict: it skips buffers registered with persistent=False
            "parameters and buffers": {
                k: v.detach().clone()
                for k, v in [*model.named_parameters(), *model.named_buffers()]
            },
            "gradients": {
                n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()
            },
            "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
            "train/eval modes": {n: m.training for n, m in model.named_modules()},
        }
    return state


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def assert_same(before: dict[str, Any], after: dict[str, Any]) -> None:
    """Fail naming each part of two snapshots that differs."""
    changed = [k for k in before if not _same(before[k], after[k])]
    assert not changed, f"changed by the check: {', '.join(changed)}"


def assert_restores(
    check: Callable[[], Any],
    model: nn.Module | None = None,
    mode: Callable[[], Any] = torch.no_grad,
) -> Any:
    """Call ``check()`` inside ``mode()`` (grad off, as in a caller's evaluation code) and assert
    that it leaves the global state, grad mode included, and ``model`` as it found them."""
    with mode():
        before = snapshot(model)
        result = check()
        assert_same(before, snapshot(model))
    return result
