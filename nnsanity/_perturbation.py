"""Change the inputs that must not matter and measure how far the outputs move.

What the dependency checks share: batch independence (for token inputs, which have no gradient)
and causality both change some entries of the inputs along one dimension, rerun the model with
the same dropout masks, and compare the outputs index by index along that dimension. Also their
shared options (``rtol``, ``train_mode``, ``seed``, lists of indices) and how they print them.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import torch

from nnsanity._arguments import check_seed, forward, map_tensors, tensors_in
from nnsanity.seeding import seed_torch

# Relative bound on a dependence that must be absent. A healthy model gives exactly 0 (the
# gradient rows of other examples are sums of exact zeros; unchanged rows recompute bit for bit),
# while a real leak is of order 1/B or larger, so 1e-5 leaves room on both sides.
RTOL = 1e-5


def _different(t: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A tensor like ``t`` that differs from it at every element, with plausible values.

    Tokens move to another value already present in ``t`` (so embedding lookups stay in range);
    floats are redrawn from a normal with ``t``'s mean and standard deviation.
    """
    if t.dtype == torch.bool:
        return ~t
    if t.is_floating_point() or t.is_complex():
        std = float(t.float().std()) if t.numel() > 1 else 1.0
        std = std if std > 0 and std == std else 1.0
        noise = torch.randn(t.shape, generator=g, dtype=torch.float64)
        return (float(t.float().mean()) + std * noise).to(t.dtype).to(t.device)
    values = torch.unique(t)
    if values.numel() < 2:
        raise ValueError(
            f"the {t.dtype} inputs hold a single value ({int(values[0])}), so no "
            "input can be changed to test what depends on it; pass a varied batch."
        )
    shift = torch.randint(1, values.numel(), t.shape, generator=g).to(t.device)
    return values[(torch.searchsorted(values, t.contiguous()) + shift) % values.numel()]


def perturbed(x: Any, dim: int, which: torch.Tensor, g: torch.Generator) -> Any:
    """``x`` with the entries selected by the bool vector ``which`` along ``dim`` changed."""
    n = which.numel()

    def change(t: torch.Tensor) -> torch.Tensor:
        if t.dim() <= dim or t.shape[dim] != n:
            return t
        shape = [1] * t.dim()
        shape[dim] = n
        return torch.where(which.to(t.device).view(shape), _different(t, g), t)

    return map_tensors(change, x)


def outputs_along(
    model: torch.nn.Module, x: Any, dim: int, n: int, seed: int
) -> list[torch.Tensor]:
    """The model's output tensors of size ``n`` along ``dim``, as float64 for exact differences.

    The RNGs are reseeded first, so every pass draws the same dropout masks.
    """
    seed_torch(seed)
    with torch.no_grad():
        outputs = forward(model, x)
    rows = [
        o.detach().to(torch.float64)
        for o in tensors_in(outputs)
        if o.dim() > dim and o.shape[dim] == n and not o.is_complex()
    ]
    if not rows:
        shapes = [tuple(o.shape) for o in tensors_in(outputs)]
        raise ValueError(
            f"no model output has size {n} along dim {dim} (outputs: {shapes}); "
            "the check needs one output per input along that dimension."
        )
    return rows


def relative_change(a: list[torch.Tensor], b: list[torch.Tensor], dim: int) -> torch.Tensor:
    """Largest |a - b| per index along ``dim``, relative to the largest |a|; NaN == NaN."""
    per_index, scale = [], torch.finfo(torch.float64).tiny
    for x, y in zip(a, b):
        d = (x - y).abs().nan_to_num(nan=float("inf"))
        d[x.isnan() & y.isnan()] = 0.0
        per_index.append(d.movedim(dim, 0).reshape(x.shape[dim], -1).amax(1))
        scale = max(scale, float(x.abs().nan_to_num(nan=0.0, posinf=0.0, neginf=0.0).max()))
    return torch.stack(per_index).amax(0).cpu() / scale


def listing(indices: Sequence[int], limit: int = 8) -> str:
    shown = ", ".join(str(i) for i in indices[:limit])
    return shown + (f", ... ({len(indices)} in all)" if len(indices) > limit else "")


def int_option(value: Any, name: str) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        return operator.index(value)  # also numpy and 0-d torch integers
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}.") from None


def index_option(values: Any, n: int, name: str, default: list[int]) -> tuple[int, ...]:
    """The sorted distinct indices in ``values`` (one index, or several) into ``n`` entries."""
    if values is None:
        return tuple(sorted(set(default)))
    if not hasattr(values, "__iter__") or (isinstance(values, torch.Tensor) and not values.dim()):
        values = [values]  # a single index
    out = set()
    for v in values:
        v = int_option(v, f"each of {name}")
        if not -n <= v < n:
            raise ValueError(
                f"{name} holds {v}, outside the {n} available; pass indices in "
                f"[0, {n - 1}] (or negative ones from the end)."
            )
        out.add(v % n)
    if not out:
        raise ValueError(f"{name} is empty; pass at least one index or None for the default.")
    return tuple(sorted(out))


def check_options(model: Any, train_mode: Any, rtol: Any, seed: Any) -> None:
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    if not isinstance(train_mode, bool):
        raise TypeError(f"train_mode must be a bool, got {type(train_mode).__name__}.")
    if isinstance(rtol, bool) or not isinstance(rtol, (int, float)) or not rtol >= 0:
        raise ValueError(f"rtol must be a number >= 0, got {rtol!r}.")
    check_seed(seed)
