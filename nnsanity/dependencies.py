"""Chart which outputs depend on which inputs: batch independence and causality.

Karpathy's recipe ("use backprop to chart dependencies"): the output for example i must not
depend on any other example j in the batch, and in an autoregressive model the output at position
t must not depend on inputs after t. Both bugs train fine and quietly cheat, so they are checked
directly: by the gradient of example i's outputs with respect to every input (float inputs), or
by changing the inputs that must not matter and requiring the outputs to stay put (token inputs,
and always for causality).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from nnsanity._arguments import _tensors, check_batch, forward
from nnsanity._messages import failure
from nnsanity._state import isolated

# Relative bound on a dependence that must be absent. A healthy model gives exactly 0 (the
# gradient rows of other examples are sums of exact zeros; unchanged rows recompute bit for bit),
# while a real leak is of order 1/B or larger, so 1e-5 leaves room on both sides.
RTOL = 1e-5


def _rebuild(x: Any, leaves: Iterator[torch.Tensor]) -> Any:
    """``x`` with its tensors replaced, in ``_tensors`` order."""
    if isinstance(x, torch.Tensor):
        return next(leaves)
    if isinstance(x, tuple) and hasattr(x, "_fields"):  # namedtuple
        return type(x)(*(_rebuild(v, leaves) for v in x))
    if isinstance(x, (list, tuple)):
        return type(x)(_rebuild(v, leaves) for v in x)
    if isinstance(x, dict):
        return {k: _rebuild(v, leaves) for k, v in x.items()}
    return x


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
        raise ValueError(f"the {t.dtype} inputs hold a single value ({int(values[0])}), so no "
                         "input can be changed to test what depends on it; pass a varied batch.")
    shift = torch.randint(1, values.numel(), t.shape, generator=g).to(t.device)
    return values[(torch.searchsorted(values, t) + shift) % values.numel()]


def _changed(x: Any, dim: int, which: torch.Tensor, g: torch.Generator) -> Any:
    """``x`` with the entries selected by the bool vector ``which`` along ``dim`` changed."""
    n = which.numel()
    out = []
    for t in _tensors(x):
        if t.dim() > dim and t.shape[dim] == n:
            shape = [1] * t.dim()
            shape[dim] = n
            t = torch.where(which.to(t.device).view(shape), _different(t, g), t)
        out.append(t)
    return _rebuild(x, iter(out))


def _rows(outputs: Any, dim: int, n: int) -> list[torch.Tensor]:
    """The output tensors indexed by ``dim`` of size ``n``, as float64 for exact differences."""
    rows = [o.detach().to(torch.float64) for o in _tensors(outputs)
            if o.dim() > dim and o.shape[dim] == n and not o.is_complex()]
    if not rows:
        shapes = [tuple(o.shape) for o in _tensors(outputs)]
        raise ValueError(f"no model output has size {n} along dim {dim} (outputs: {shapes}); "
                         "the check needs one output per input along that dimension.")
    return rows


def _change(a: list[torch.Tensor], b: list[torch.Tensor], dim: int) -> torch.Tensor:
    """Largest |a - b| per index along ``dim``, relative to the largest |a|; NaN == NaN."""
    per_index, scale = [], torch.finfo(torch.float64).tiny
    for x, y in zip(a, b):
        d = (x - y).abs().nan_to_num(nan=float("inf"))
        d[x.isnan() & y.isnan()] = 0.0
        per_index.append(d.movedim(dim, 0).reshape(x.shape[dim], -1).amax(1))
        scale = max(scale, float(x.abs().nan_to_num(nan=0.0, posinf=0.0, neginf=0.0).max()))
    return torch.stack(per_index).amax(0).cpu() / scale


def _listing(indices: Sequence[int], limit: int = 8) -> str:
    shown = ", ".join(str(i) for i in indices[:limit])
    return shown + (f", ... ({len(indices)} in all)" if len(indices) > limit else "")


@dataclass(frozen=True)
class BatchIndependenceResult:
    """How much the outputs of the checked samples depend on the other samples' inputs.

    ``dependence[k]`` is the largest dependence of sample ``samples[k]`` on another sample:
    the other's input gradient relative to its own (``method="gradient"``), or the change of its
    outputs relative to their scale when the others' inputs change (``"perturbation"``).
    ``sources[k]`` lists the samples whose dependence exceeds ``rtol``.
    """

    samples: tuple[int, ...]
    dependence: tuple[float, ...]
    sources: tuple[tuple[int, ...], ...]
    method: str
    train_mode: bool
    rtol: float
    passed: bool


