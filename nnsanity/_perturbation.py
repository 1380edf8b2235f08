"""Change the inputs that must not matter and measure how far the outputs move.

What the dependency checks share: batch independence (for token inputs, which have no gradient)
and causality both change some entries of the data inputs along one dimension (masks, lengths
and position ids are structure and stay as they are), rerun the model with the same dropout
masks, and compare the outputs index by index along that dimension.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from nnsanity._arguments import check_int
from nnsanity._harness import Harness
from nnsanity._structures import Path, describe, leaves, select_output
from nnsanity.seeding import seed_torch

# Relative bound on a dependence that must be absent. A healthy model gives exactly 0 (the
# gradient rows of other examples are sums of exact zeros; unchanged rows recompute bit for bit),
# while a real leak is of order 1/B or larger, so 1e-5 leaves room on both sides.
MAX_DEPENDENCE = 1e-5


def _different(t: torch.Tensor, g: torch.Generator, where: str) -> torch.Tensor:
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
            f"{where} holds a single value ({int(values[0])}), so no entry can be changed to "
            "test what depends on it; pass a varied batch, or perturb= naming the inputs that "
            "carry the data."
        )
    shift = torch.randint(1, values.numel(), t.shape, generator=g).to(t.device)
    changed: torch.Tensor = values[
        (torch.searchsorted(values, t.contiguous()) + shift) % values.numel()
    ]
    return changed


def sequence_dim(h: Harness, dim: int, what: str) -> tuple[int, int]:
    """``dim`` as a non-negative axis of the first data tensor of ``h``'s inputs, and the
    sequence's length along it (at least 2); ``what`` names the check in the errors."""
    first = next((t for _, t in h.data_leaves() if t.dim()), None)
    if first is None:
        raise ValueError(
            "the inputs hold no data tensor to change along the sequence; pass the sequence "
            "inputs (perturb= names them where the check takes it)."
        )
    if not -first.dim() <= dim < first.dim():
        raise ValueError(
            f"dim={dim} is not a dimension of inputs of shape {tuple(first.shape)}; pass the "
            "sequence dimension (1 for (B, T, ...) inputs, 0 for time-first (T, B, ...))."
        )
    dim %= first.dim()
    n = first.shape[dim]
    if n < 2:
        raise ValueError(
            f"inputs have length {n} along dim {dim}; {what} needs at least 2 positions. Pass "
            "dim= if the sequence is on another dimension."
        )
    return dim, n


def perturbed(h: Harness, dim: int, which: torch.Tensor, g: torch.Generator) -> Any:
    """The inputs with the data entries selected by the bool vector ``which`` along ``dim``
    changed; structure (masks, lengths, ids of positions) and tensors too short kept."""
    n = which.numel()

    def change(path: Path, t: torch.Tensor) -> torch.Tensor:
        if t.dim() <= dim or t.shape[dim] != n:
            return t
        shape = [1] * t.dim()
        shape[dim] = n
        new = _different(t, g, describe(path))
        return torch.where(which.to(t.device).view(shape), new, t)

    return h.map_data(change)


def outputs_along(
    h: Harness, x: Any, dim: int, n: int, lead: tuple[int, ...] = ()
) -> list[torch.Tensor]:
    """The model's output tensors of size ``n`` along ``dim``, as float64 for exact differences
    (only the one ``output=`` picks, when given). ``lead``, the inputs' first two sizes
    (``(T, B)`` for time-first inputs), also reads an output whose first dim is their product
    as flattened from them (word_language_model's ``(T * B, vocab)``).

    The RNGs are reseeded first, so every pass draws the same dropout masks.
    """
    seed_torch(h.seed)
    with torch.no_grad():
        outputs = h.forward(x)
    found = (
        [select_output(outputs, h.output)[0]]
        if h.output is not None
        else [t for _, t in leaves(outputs)]
    )
    if dim < len(lead) and len(lead) >= 2 and min(lead) > 1:
        size = math.prod(lead)
        found = [o.unflatten(0, lead) if o.dim() and o.shape[0] == size else o for o in found]
    rows = [
        o.detach().to(torch.float64)
        for o in found
        if o.dim() > dim and o.shape[dim] == n and not o.is_complex()
    ]
    if not rows:
        shapes = [tuple(o.shape) for o in found]
        raise ValueError(
            f"no model output has size {n} along dim {dim} (outputs: {shapes}); "
            "the check needs one output per input along that dimension."
        )
    return rows


def relative_change(a: list[torch.Tensor], b: list[torch.Tensor], dim: int) -> torch.Tensor:
    """Largest |a - b| per index along ``dim``, relative to the largest |a|; NaN == NaN."""
    per_index, scale = [], torch.finfo(torch.float64).tiny
    for x, y in zip(a, b, strict=True):
        d = (x - y).abs().nan_to_num(nan=float("inf"))
        d[x.isnan() & y.isnan()] = 0.0
        per_index.append(d.movedim(dim, 0).reshape(x.shape[dim], -1).amax(1))
        scale = max(scale, float(x.abs().nan_to_num(nan=0.0, posinf=0.0, neginf=0.0).max()))
    return torch.stack(per_index).amax(0).cpu() / scale


def index_option(values: Any, n: int, name: str, default: list[int]) -> tuple[int, ...]:
    """The sorted distinct indices in ``values`` (one index, or several) into ``n`` entries."""
    if values is None:
        return tuple(sorted(set(default)))
    if not hasattr(values, "__iter__") or (isinstance(values, torch.Tensor) and not values.dim()):
        values = [values]  # a single index
    out = set()
    for v in values:
        v = check_int(v, f"each of {name}")
        if not -n <= v < n:
            raise ValueError(
                f"{name} holds {v}, outside the {n} available; pass indices in "
                f"[0, {n - 1}] (or negative ones from the end)."
            )
        out.add(v % n)
    if not out:
        raise ValueError(f"{name} is empty; pass at least one index or None for the default.")
    return tuple(sorted(out))
