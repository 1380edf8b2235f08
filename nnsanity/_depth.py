"""Repeated layers, like with like: the groups along which a depth trend is fitted.

Comparing layers of different kinds says nothing about depth (an embedding at a 0.02 init, a stem
convolution, a squeeze-excitation gate differ for reasons of their own), so a depth check groups
the modules that own a weight matrix by type, weight shapes, output shape and name with block
numbers replaced by ``*`` (``blocks.3.attn.qkv`` with ``blocks.4.attn.qkv``), in the order the
forward pass first ran them, and fits the least-squares trend of a log quantity along each group.
Shared by the error-signal (gradient_ratio) and forward-signal (activation_growth) checks.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch

T = TypeVar("T")
_DIGITS = re.compile(r"\d+")

Group = tuple[str, list[tuple[str, float]]]  # the pattern, and (layer name, value) in order


def owns_weight(module: torch.nn.Module) -> bool:
    """Whether ``module`` itself (not a child) holds a parameter of dim >= 2."""
    return any(p.dim() >= 2 for p in module.parameters(recurse=False))


def pattern(name: str) -> str:
    """``name`` up to its block numbers: the numeric parts of a container's path
    (``blocks.3.mlp.fc1`` -> ``blocks.*.mlp.fc1``) where it has any, so that one block's ``fc1``
    and ``fc2`` stay two roles; only a flat model's own numbering (``fc1``, ``fc2``, ``fc3`` of
    an MLP built by hand) is its depth, and then every digit is."""
    parts = name.split(".")
    if any(p.isdigit() for p in parts):
        return ".".join("*" if p.isdigit() else p for p in parts)
    return _DIGITS.sub("*", name)


def group_key(name: str, module: torch.nn.Module, out_shape: tuple[int, ...]) -> tuple[object, ...]:
    """Type, weight shapes, output shape (without the batch dim) and name up to block numbers."""
    weights = tuple(tuple(p.shape) for p in module.parameters(recurse=False) if p.dim() >= 2)
    return (type(module).__name__, weights, out_shape, pattern(name))


def repeated(
    values: Sequence[tuple[str, tuple[int, ...], float]], modules: dict[str, torch.nn.Module]
) -> list[Group]:
    """``values`` (layer name, output shape, value) in forward order, grouped like with like;
    only groups of at least two layers are returned."""
    groups: dict[tuple[object, ...], list[tuple[str, float]]] = {}
    for name, shape, value in values:
        groups.setdefault(group_key(name, modules[name], shape), []).append((name, value))
    return [(str(key[3]), members) for key, members in groups.items() if len(members) >= 2]


def trend(values: Sequence[float]) -> tuple[float, float]:
    """Least-squares slope of log ``values`` on position, as (total change, slope): the total
    change is exp(|slope| x (n - 1)), the change per layer exp(|slope|)."""
    n = len(values)
    x = [i - (n - 1) / 2 for i in range(n)]
    y = [math.log(v) for v in values]
    my = sum(y) / n
    slope = sum(a * (b - my) for a, b in zip(x, y, strict=True)) / sum(a * a for a in x)
    return math.exp(abs(slope) * (n - 1)), slope


def worst(
    groups: Sequence[T],
    *,
    grows: Callable[[T], bool],
    max_growth: float,
    max_decay: float,
    min_rate: float,
) -> T | None:
    """The group whose total change exceeds its bound (``max_growth`` if it ``grows``, else
    ``max_decay``) by the largest factor, if any does; a group changing by less than
    ``min_rate`` per layer is a flat, noisy one and never counts. Groups have ``.trend`` (the
    total change) and ``.rate`` (the change per layer)."""

    def excess(g: Any) -> float:
        if g.rate < min_rate:
            return 0.0
        return float(g.trend / (max_growth if grows(g) else max_decay))

    over = [g for g in groups if excess(g) > 1]
    return max(over, key=excess) if over else None
