"""Chart which outputs depend on which inputs: batch independence and causality.

Karpathy's recipe ("use backprop to chart dependencies"): the output for example i must not
depend on any other example j in the batch, and in an autoregressive model the output at position
t must not depend on inputs after t. Both bugs train fine and quietly cheat, so they are checked
directly: by the gradient of example i's outputs with respect to every input (float inputs), or
by changing the inputs that must not matter and requiring the outputs to stay put (token inputs,
and always for causality).
"""

from __future__ import annotations

import operator
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
        raise ValueError(
            f"the {t.dtype} inputs hold a single value ({int(values[0])}), so no "
            "input can be changed to test what depends on it; pass a varied batch."
        )
    shift = torch.randint(1, values.numel(), t.shape, generator=g).to(t.device)
    return values[(torch.searchsorted(values, t.contiguous()) + shift) % values.numel()]


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
    rows = [
        o.detach().to(torch.float64)
        for o in _tensors(outputs)
        if o.dim() > dim and o.shape[dim] == n and not o.is_complex()
    ]
    if not rows:
        shapes = [tuple(o.shape) for o in _tensors(outputs)]
        raise ValueError(
            f"no model output has size {n} along dim {dim} (outputs: {shapes}); "
            "the check needs one output per input along that dimension."
        )
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
    batch_size: int
    dependence: tuple[float, ...]
    sources: tuple[tuple[int, ...], ...]
    method: str
    train_mode: bool
    rtol: float
    passed: bool


def _gradient_chart(model, inputs, b, samples, g) -> list[torch.Tensor] | None:
    """Per checked sample, every sample's input-gradient size relative to its own (or None)."""
    leaves = [
        t.detach().clone().requires_grad_(True) if t.dim() and t.shape[0] == b else t
        for t in _tensors(inputs)
    ]
    wrt = [t for t in leaves if t.requires_grad]
    with torch.enable_grad():
        rows = [
            o
            for o in _tensors(forward(model, _rebuild(inputs, iter(leaves))))
            if o.dim() and o.shape[0] == b and o.is_floating_point() and o.requires_grad
        ]
        if not rows:
            return None
        # A random projection rather than the plain sum: the sum of a softmax or of a normalised
        # vector is constant, and its gradient is rounding noise.
        weights = [torch.randn(o.shape[1:], generator=g, dtype=torch.float64).to(o) for o in rows]
        chart = []
        for i in samples:
            objective = sum((o[i] * w).sum() for o, w in zip(rows, weights))
            grads = torch.autograd.grad(objective, wrt, retain_graph=True, allow_unused=True)
            sizes = [
                gr.detach().abs().reshape(b, -1).amax(1).double().cpu()
                for gr in grads
                if gr is not None
            ]
            if not sizes or not torch.stack(sizes).any():
                return None  # no gradient reaches the inputs (argmax, casts): perturb instead
            size = torch.stack(sizes).amax(0)
            own = size[i] if size[i] > 0 else torch.tensor(0.0)  # then any leak is infinite
            chart.append(torch.where(size > 0, size / own, 0.0))
    return chart


def _perturbation_chart(model, inputs, b, samples, seed, rtol, g) -> list[torch.Tensor]:
    """Per checked sample, its output change when other samples' inputs change.

    One pass per checked sample changes all the others at once; only if that moves it is the
    culprit found with one pass per sample (so a healthy model costs len(samples) + 1 passes).
    """

    def run(x: Any) -> list[torch.Tensor]:
        torch.manual_seed(seed)  # the same dropout masks in every pass
        with torch.no_grad():
            return _rows(forward(model, x), 0, b)

    base = run(inputs)
    chart = []
    for i in samples:
        others = torch.arange(b) != i
        row = torch.zeros(b, dtype=torch.float64)
        row[others] = _change(base, run(_changed(inputs, 0, others, g)), 0)[i]
        chart.append(row)
    if any(float(row.max()) > rtol for row in chart):
        alone = [
            _change(base, run(_changed(inputs, 0, torch.arange(b) == j, g)), 0) for j in range(b)
        ]
        for row, i in zip(chart, samples):
            # A dependence on the others jointly but on none alone (the batch mean of many)
            # keeps the joint value on every source.
            if any(float(alone[j][i]) > rtol for j in range(b) if j != i):
                row[:] = torch.tensor([float(alone[j][i]) if j != i else 0.0 for j in range(b)])
    return chart


def _int_option(value: Any, name: str) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        return operator.index(value)  # also numpy and 0-d torch integers
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}.") from None


def _indices(values: Any, n: int, name: str, default: list[int]) -> tuple[int, ...]:
    if values is None:
        return tuple(sorted(set(default)))
    if not hasattr(values, "__iter__") or (isinstance(values, torch.Tensor) and not values.dim()):
        values = [values]  # a single index
    out = set()
    for v in values:
        v = _int_option(v, f"each of {name}")
        if not -n <= v < n:
            raise ValueError(
                f"{name} holds {v}, outside the {n} available; pass indices in "
                f"[0, {n - 1}] (or negative ones from the end)."
            )
        out.add(v % n)
    if not out:
        raise ValueError(f"{name} is empty; pass at least one index or None for the default.")
    return tuple(sorted(out))


def _options(model: Any, train_mode: Any, rtol: Any, seed: Any) -> None:
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    if not isinstance(train_mode, bool):
        raise TypeError(f"train_mode must be a bool, got {type(train_mode).__name__}.")
    if isinstance(rtol, bool) or not isinstance(rtol, (int, float)) or not rtol >= 0:
        raise ValueError(f"rtol must be a number >= 0, got {rtol!r}.")
    _int_option(seed, "seed")


def measure_batch_independence(
    model: torch.nn.Module,
    batch: Any,
    *,
    samples: Sequence[int] | None = None,
    train_mode: bool = False,
    rtol: float = RTOL,
    seed: int = 0,
) -> BatchIndependenceResult:
    """Measure how much each checked sample's outputs depend on the other samples' inputs."""
    _options(model, train_mode, rtol, seed)
    inputs, _ = check_batch(batch, model)
    b = _tensors(inputs)[0].shape[0] if _tensors(inputs)[0].dim() else 0
    if b < 2:
        raise ValueError(f"batch independence needs a batch of at least 2 samples, got {b}.")
    checked = _indices(samples, b, "samples", [0, b // 2, b - 1])
    g = torch.Generator().manual_seed(seed)
    with isolated(model):
        model.train(train_mode)
        torch.manual_seed(seed)
        floats = all(t.is_floating_point() for t in _tensors(inputs) if t.dim() and t.shape[0] == b)
        chart = _gradient_chart(model, inputs, b, checked, g) if floats else None
        method = "gradient" if chart is not None else "perturbation"
        if chart is None:
            chart = _perturbation_chart(model, inputs, b, checked, seed, rtol, g)
    dependence, sources = [], []
    for row, i in zip(chart, checked):
        row = row.clone()
        row[i] = 0.0
        dependence.append(float(row.max()))
        sources.append(tuple(int(j) for j in (row > rtol).nonzero().flatten()))
    return BatchIndependenceResult(
        samples=checked,
        batch_size=b,
        dependence=tuple(dependence),
        sources=tuple(sources),
        method=method,
        train_mode=train_mode,
        rtol=float(rtol),
        passed=max(dependence) <= rtol,
    )


def assert_batch_independence(
    model: torch.nn.Module,
    batch: Any,
    *,
    samples: Sequence[int] | None = None,
    train_mode: bool = False,
    rtol: float = RTOL,
    seed: int = 0,
) -> BatchIndependenceResult:
    """Assert that the outputs of a sample depend on no other sample's inputs.

    For float inputs the gradient of a random projection of sample i's outputs is taken with
    respect to the whole batch: every other sample's gradient must be at most ``rtol`` of sample
    i's own (exactly 0 in a healthy model). Integer inputs (tokens) have no gradient, so the other
    samples' inputs are changed instead and sample i's outputs must stay within ``rtol`` of their
    scale. Samples ``samples`` (default: first, middle, last) are checked.

    The model runs in eval mode unless ``train_mode=True``: BatchNorm in train mode normalises
    with the batch's statistics, which legitimately mixes the batch (and is caught here if you
    ask for it). Proves: no leak through the checked samples' outputs, for this batch. Does NOT
    prove: independence for other batch sizes or other samples, nor in a mode not checked.
    """
    __tracebackhide__ = True
    result = measure_batch_independence(
        model, batch, samples=samples, train_mode=train_mode, rtol=rtol, seed=seed
    )
    if result.passed:
        return result
    unit = " of its own input gradient" if result.method == "gradient" else " of its output scale"
    leaks = []
    for i, src, dep in zip(result.samples, result.sources, result.dependence):
        if dep > result.rtol:
            many = len(src) == result.batch_size - 1
            on = f"all {len(src)} others" if many else f"samples {_listing(src)}"
            size = f"{dep:.3g}{unit}" if dep < float("inf") else "its own input has no effect"
            leaks.append(f"sample {i} on {on} ({size})")
            unit = ""  # said once
    batchnorm = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    causes = [
        "a view/reshape/permute across the batch dim (x.view(-1, B), x.permute(1, 0, 2, 3)"
        ".reshape(B, -1)): flatten with x.flatten(1) and keep the batch dim first",
        "batch statistics in forward (x.mean(0), x.std(0)"
        + (")" if train_mode and batchnorm else ", or BatchNorm in train mode)"),
        "attention, pooling or an RNN across the batch dim (a layer without batch_first=True "
        "given (B, T, D) inputs)",
    ]
    if train_mode and batchnorm:
        causes.insert(
            0,
            "BatchNorm in train mode mixes the batch by design; check with "
            "train_mode=False (the default) unless the model must not mix it",
        )
    raise failure(
        "Batch independence failed",
        f"outputs depend on other samples' inputs: {'; '.join(leaks)}; up to {result.rtol:g} "
        f"allowed ({result.method} method, {'train' if train_mode else 'eval'} mode)",
        causes,
        relax="rtol= relaxes the bound; samples= chooses which samples are checked.",
        result=result,
    )


@dataclass(frozen=True)
class CausalResult:
    """How much outputs at or before position t change when the inputs after t change.

    ``changes[k]`` is that change for ``t = positions[k]``, relative to the largest output.
    ``first_leak`` is the earliest output position that moved (it sees the future), revealed
    by changing the inputs after ``leak_after``, by ``leak_change``; None when nothing moved.
    """

    positions: tuple[int, ...]
    changes: tuple[float, ...]
    first_leak: int | None
    leak_after: int | None
    leak_change: float | None
    dim: int
    rtol: float
    passed: bool


def measure_causal(
    model: torch.nn.Module,
    inputs: Any,
    *,
    dim: int = 1,
    positions: Sequence[int] | None = None,
    train_mode: bool = False,
    rtol: float = RTOL,
    seed: int = 0,
) -> CausalResult:
    """Measure how much outputs up to each checked position t depend on inputs after t."""
    _options(model, train_mode, rtol, seed)
    if not _tensors(inputs):
        raise TypeError(
            f"inputs must be a tensor (or a container of tensors) of sequences, "
            f"got {type(inputs).__name__}."
        )
    inputs, _ = check_batch((inputs, None), model)
    first = _tensors(inputs)[0]
    dim = _int_option(dim, "dim")
    if not -first.dim() <= dim < first.dim():
        raise ValueError(
            f"dim={dim} is not a dimension of inputs of shape {tuple(first.shape)}; "
            "pass the sequence dimension (1 for (B, T, ...) inputs)."
        )
    dim %= first.dim()
    n = first.shape[dim]
    if n < 2:
        raise ValueError(
            f"inputs have length {n} along dim {dim}; causality needs at least 2 "
            "positions. Pass dim= if the sequence is on another dimension."
        )
    spread = torch.linspace(0, n - 2, min(8, n - 1)).round().long().tolist()
    checked = _indices(positions, n, "positions", spread)
    if checked[-1] == n - 1:
        raise ValueError(
            f"positions holds {n - 1}, the last position: no input comes after it. "
            f"Pass positions in [0, {n - 2}]."
        )
    g = torch.Generator().manual_seed(seed)
    with isolated(model):
        model.train(train_mode)

        def run(x: Any) -> list[torch.Tensor]:
            torch.manual_seed(seed)  # the same dropout masks in every pass
            with torch.no_grad():
                return _rows(forward(model, x), dim, n)

        base = run(inputs)

        def moved(t: int) -> torch.Tensor:  # change of the outputs at <= t, inputs > t changed
            return _change(base, run(_changed(inputs, dim, torch.arange(n) > t, g)), dim)[: t + 1]

        changes, leak = [], None
        for t in checked:
            change = moved(t)
            changes.append(float(change.max()))
            early = (change > rtol).nonzero().flatten()
            if len(early) and (leak is None or int(early[0]) < leak[0]):
                leak = (int(early[0]), t, float(change.max()))
        if leak is not None:
            # Output s sees the future exactly when changing the inputs after s moves it; trying
            # the unchecked t below the leak in order finds the first such s.
            for t in (t for t in range(leak[0]) if t not in checked):
                change = moved(t)
                if float(change.max()) > rtol:
                    leak = (int((change > rtol).nonzero()[0]), t, float(change.max()))
                    break
    return CausalResult(
        positions=checked,
        changes=tuple(changes),
        first_leak=None if leak is None else leak[0],
        leak_after=None if leak is None else leak[1],
        leak_change=None if leak is None else leak[2],
        dim=dim,
        rtol=float(rtol),
        passed=leak is None,
    )


def assert_causal(
    model: torch.nn.Module,
    inputs: Any,
    *,
    dim: int = 1,
    positions: Sequence[int] | None = None,
    train_mode: bool = False,
    rtol: float = RTOL,
    seed: int = 0,
) -> CausalResult:
    """Assert that the output at position t depends on no input after t.

    For each checked t (default: up to 8 positions spread from 0 to T-2) the inputs after t are
    changed (tokens to other tokens of the batch, floats redrawn) and the outputs at positions
    <= t must stay within ``rtol`` of the output scale (a causal model reproduces them exactly).
    The sequence is on ``dim`` of the inputs and of the outputs; the model runs in eval mode
    unless ``train_mode=True``. Proves: no output looks ahead, for these inputs and positions.
    Does NOT prove: that the targets are shifted by one, nor causality at other lengths.
    """
    __tracebackhide__ = True
    result = measure_causal(
        model, inputs, dim=dim, positions=positions, train_mode=train_mode, rtol=rtol, seed=seed
    )
    if result.passed:
        return result
    s, t = result.first_leak, result.leak_after
    raise failure(
        "Causality failed",
        f"the output at position {s} sees the future: it changes by "
        f"{result.leak_change:.3g} of the output scale when the inputs "
        f"after position {t} change (up to {result.rtol:g} allowed; checked t = "
        f"{_listing(result.positions)} along dim {result.dim})",
        [
            "no causal mask in self-attention: pass attn_mask=nn.Transformer."
            "generate_square_subsequent_mask(T) (is_causal=True alone is only a hint to "
            "nn.MultiheadAttention / nn.TransformerEncoderLayer)",
            "a mask of the wrong orientation (triu vs tril, or a bool mask with True meaning "
            "'attend' where torch means 'masked out')",
            "a layer that looks ahead: a bidirectional RNN, a convolution padded on both sides "
            "instead of on the left only, or normalisation/pooling over the time dim",
        ],
        relax="rtol= relaxes the bound; dim= names the sequence dimension if it is not 1.",
        result=result,
    )
