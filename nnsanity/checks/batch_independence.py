"""Batch independence: the outputs for one example depend on no other example of the batch.

Karpathy's recipe ("use backprop to chart dependencies"): the output for example i must not
depend on any other example j in the batch. A model that mixes the batch trains fine and quietly
cheats, so this is checked directly: by the gradient of example i's outputs with respect to every
input (float inputs), or by changing the other examples' inputs and requiring example i's outputs
to stay put (token inputs). Causality, the same question along the time axis, is in
``nnsanity.checks.causal``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from nnsanity._arguments import check_bool, check_number
from nnsanity._diagnosis import CONSISTENT, MEASURED, Cause, Place
from nnsanity._harness import Harness
from nnsanity._localisation import Property, along, locate
from nnsanity._messages import Explanation, Msg, fail, indices
from nnsanity._perturbation import (
    MAX_DEPENDENCE,
    _different,
    index_option,
    outputs_along,
    perturbed,
    relative_change,
)
from nnsanity._result import CheckResult, diagnosed
from nnsanity._state import autograd
from nnsanity._structures import Path, describe, leaves, select_output, tensors_in
from nnsanity.seeding import seed_torch


@dataclass(frozen=True, kw_only=True)
class BatchIndependenceResult(CheckResult):
    """How much the outputs of the checked samples depend on the other samples' inputs.

    ``dependence[k]`` is the largest dependence of sample ``samples[k]`` on another sample:
    the other's input gradient relative to its own (``method="gradient"``), or the change of its
    outputs relative to their scale when the others' inputs change (``"perturbation"``).
    ``sources[k]`` lists the samples whose dependence exceeds ``max_dependence``.
    """

    max_dependence: float  # the bound on every entry of ``dependence``
    samples: tuple[int, ...]
    batch_size: int
    dependence: tuple[float, ...]
    sources: tuple[tuple[int, ...], ...]
    method: Literal["gradient", "perturbation"]
    train_mode: bool
    batchnorm: bool  # the model has BatchNorm layers (they mix the batch in train mode)
    batch_dim: int = 0  # the inputs' dimension that indexes the samples
    time_first_rnns: tuple[str, ...] = ()  # RNN/LSTM/GRU layers without batch_first=True
    # the first module (and op) whose output mixes the batch while its inputs do not
    where: Place | None = None
    # the module at ``where``, as data the diagnosis reads: its settings that mix the batch
    where_settings: tuple[str, ...] = ()
    # a graph batch: how its samples were told apart (the input of graph ids), else None
    sample_index: str | None = None

    @property
    def passed(self) -> bool:
        return max(self.dependence) <= self.max_dependence


def _along(t: torch.Tensor, d: int, b: int) -> bool:
    return t.dim() > d and t.shape[d] == b


def _gradient_chart(
    h: Harness, b: int, samples: Sequence[int], g: torch.Generator, d: int, lead: tuple[int, ...]
) -> list[torch.Tensor] | None:
    """Per checked sample, every sample's input-gradient size relative to its own (or None)."""
    with autograd():  # even when the caller is inside no_grad() or inference_mode()
        leaves_ = h.map_data(
            lambda _, t: t.detach().clone().requires_grad_(True) if _along(t, d, b) else t
        )
        wrt = [t for t in tensors_in(leaves_) if t.requires_grad]
        outputs = h.forward(leaves_)
        found = (
            [select_output(outputs, h.output)[0]] if h.output is not None else tensors_in(outputs)
        )
        if d > 0:  # outputs flattened from (T, B) rows, as the inputs' leading dims
            flat = math.prod(lead)
            found = [o.unflatten(0, lead) if o.dim() and o.shape[0] == flat else o for o in found]
        rows = [
            o.movedim(d, 0)
            for o in found
            if _along(o, d, b) and o.is_floating_point() and o.requires_grad
        ]
        if not rows or not wrt:
            return None
        # A random projection rather than the plain sum: the sum of a softmax or of a normalised
        # vector is constant, and its gradient is rounding noise.
        weights = [torch.randn(o.shape[1:], generator=g, dtype=torch.float64).to(o) for o in rows]
        chart = []
        for i in samples:
            objective = torch.stack(
                [(o[i] * w).sum() for o, w in zip(rows, weights, strict=True)]
            ).sum()
            grads = torch.autograd.grad(objective, wrt, retain_graph=True, allow_unused=True)
            sizes = [
                gr.detach().abs().movedim(d, 0).reshape(b, -1).amax(1).double().cpu()
                for gr in grads
                if gr is not None
            ]
            if not sizes or not torch.stack(sizes).any():
                return None  # no gradient reaches the inputs (argmax, casts): perturb instead
            size = torch.stack(sizes).amax(0)
            own = size[i] if size[i] > 0 else torch.tensor(0.0)  # then any leak is infinite
            chart.append(torch.where(size > 0, size / own, 0.0))
    return chart


def _perturbation_chart(
    h: Harness,
    b: int,
    samples: Sequence[int],
    bound: float,
    g: torch.Generator,
    d: int,
    lead: tuple[int, ...],
    graphs: _Graphs | None = None,
) -> list[torch.Tensor]:
    """Per checked sample, its output change when other samples' inputs change.

    One pass per checked sample changes all the others at once; only if that moves it is the
    culprit found with one pass per sample (so a healthy model costs len(samples) + 1 passes).
    """

    def outputs(x: Any) -> list[torch.Tensor]:
        return outputs_along(h, x, d, b, lead) if graphs is None else graphs.outputs(h, x)

    def moved(which: torch.Tensor) -> torch.Tensor:  # per sample, with the inputs `which` changed
        changed = perturbed(h, d, which, g) if graphs is None else graphs.perturbed(h, which, g)
        return relative_change(base, outputs(changed), d)

    base = outputs(h.inputs)
    chart = []
    for i in samples:
        others = torch.arange(b) != i
        row = torch.zeros(b, dtype=torch.float64)
        row[others] = moved(others)[i]
        chart.append(row)
    if any(float(row.max()) > bound for row in chart):
        alone = [moved(torch.arange(b) == j) for j in range(b)]
        for row, i in zip(chart, samples, strict=True):
            # A dependence on the others jointly but on none alone (the batch mean of many)
            # keeps the joint value on every source.
            if any(float(alone[j][i]) > bound for j in range(b) if j != i):
                row[:] = torch.tensor([float(alone[j][i]) if j != i else 0.0 for j in range(b)])
    return chart


GRAPH_IDS = "batch"  # PyTorch Geometric's name for the vector of each node's graph


@dataclass(frozen=True)
class _Graphs:
    """A graph batch (PyTorch Geometric style): node rows, an ``edge_index`` (2, E) and the
    graph id of every node. A sample is a graph: its node rows, and its edges' rows."""

    ids: torch.Tensor  # (N,) the graph of each node
    edges: torch.Tensor | None  # (2, E) edge_index, when the inputs hold one
    where: str  # how the ids were given, as a message says it

    @property
    def count(self) -> int:
        return int(self.ids.max()) + 1

    def rows(self, n: int) -> torch.Tensor | None:
        """The graph of each row of a tensor with ``n`` rows: nodes, or edges (by their source
        node); None for a tensor of other rows (kept as it is)."""
        if n == self.ids.numel():
            return self.ids
        if self.edges is not None and n == self.edges.shape[1]:
            return self.ids[self.edges[0]]
        return None

    def perturbed(self, h: Harness, which: torch.Tensor, g: torch.Generator) -> Any:
        """The inputs with the data rows of the graphs ``which`` changed; the edges, the ids
        and every other structure input kept (changing them would rewire the graphs)."""

        def change(path: Path, t: torch.Tensor) -> torch.Tensor:
            rows = self.rows(t.shape[0]) if t.dim() else None
            if rows is None or t is self.ids or t is self.edges:
                return t
            select = which.to(t.device)[rows].view(-1, *([1] * (t.dim() - 1)))
            return torch.where(select, _different(t, g, describe(path)), t)

        return h.map_data(change)

    def outputs(self, h: Harness, x: Any) -> list[torch.Tensor]:
        """The outputs per graph: a graph-level output (G, ...) as it is; a node-level one
        (N, ...) as (G, largest graph, ...), each graph's nodes in order, zeros after."""
        g, n = self.count, self.ids.numel()
        seed_torch(h.seed)
        with torch.no_grad():
            outputs = h.forward(x)
        found = (
            [select_output(outputs, h.output)[0]] if h.output is not None else tensors_in(outputs)
        )
        rows = []
        counts = torch.bincount(self.ids.cpu(), minlength=g)
        place = torch.cat([torch.arange(int(c)) for c in counts])[
            torch.argsort(self.ids.cpu(), stable=True).argsort()
        ]
        for o in found:
            if not o.dim() or o.is_complex():
                continue
            o = o.detach().to(torch.float64).cpu()
            if o.shape[0] == g:
                rows.append(o)
            elif o.shape[0] == n:
                padded = o.new_zeros((g, int(counts.max()), *o.shape[1:]))
                padded[self.ids.cpu(), place] = o
                rows.append(padded)
        if not rows:
            raise ValueError(
                f"no model output has one row per graph ({g}) or per node ({n}) (outputs: "
                f"{[tuple(o.shape) for o in found]}); pass output= naming the per-graph output."
            )
        return rows


def _graphs(h: Harness, sample_index: Any) -> _Graphs | None:
    """The graph batch ``sample_index`` names (a key or path of the inputs, or the (N,) tensor
    of graph ids itself); by default an input named ``batch`` (PyG's graph ids) holding
    non-decreasing ids 0..G-1, one per row of the first data tensor. None: not a graph batch."""
    found = {p: t for p, t in leaves(h.inputs)}
    edges = next((t for p, t in found.items() if p and p[-1] == "edge_index"), None)
    if sample_index is None:
        ids = next((t for p, t in found.items() if p and p[-1] == GRAPH_IDS), None)
        first = next((t for _, t in h.data_leaves() if t.dim()), None)
        if ids is None or first is None or ids.dim() != 1 or ids.is_floating_point():
            return None
        if ids.numel() != first.shape[0] or not bool((ids[1:] >= ids[:-1]).all()):
            return None
        where = f"inputs[{GRAPH_IDS!r}]"
    elif isinstance(sample_index, torch.Tensor):
        ids, where = sample_index, "sample_index= (your graph ids)"
    else:
        path = sample_index if isinstance(sample_index, tuple) else (sample_index,)
        if path not in found:
            shown = ", ".join(describe(p) for p in found)
            raise ValueError(
                f"sample_index={sample_index!r} names no tensor of the inputs (they hold: "
                f"{shown}); pass the key of the vector of graph ids (PyG: 'batch') or the tensor."
            )
        ids, where = found[path], describe(path)
    if ids.dim() != 1 or ids.is_floating_point() or ids.dtype == torch.bool or not ids.numel():
        raise TypeError(
            f"sample_index must give one integer graph id per node, a 1-D integer tensor; "
            f"{where} is a {ids.dtype} tensor of shape {tuple(ids.shape)}."
        )
    device = next(iter(h.model.parameters())).device
    ids = ids.to(device)
    if int(ids.min()) < 0 or torch.unique(ids).numel() != int(ids.max()) + 1:
        raise ValueError(
            f"{where} must number the graphs 0, 1, ..., G-1 (every id used), got ids "
            f"{torch.unique(ids).tolist()[:8]}."
        )
    return _Graphs(ids=ids, edges=edges, where=where)


def measure_batch_independence(
    model: torch.nn.Module,
    batch: Any,
    *,
    samples: Sequence[int] | None = None,
    train_mode: bool = False,
    max_dependence: float = MAX_DEPENDENCE,
    output: Any = None,
    unpack: bool | None = None,
    perturb: Any = None,
    batch_dim: int | None = None,
    sample_index: Any = None,
    seed: int = 0,
) -> BatchIndependenceResult:
    """Measure how much each checked sample's outputs depend on the other samples' inputs."""
    check_bool(train_mode, "train_mode")
    bound = check_number(max_dependence, "max_dependence", low=0, what="a number >= 0")
    h = Harness(
        model, batch, seed=seed, output=output, unpack=unpack, perturb=perturb, needs_loss=False
    )
    graphs = _graphs(h, sample_index)
    d = 0 if graphs is not None else h.batch_dim(batch_dim)
    first = next(t for _, t in h.data_leaves() if t.dim() > d)
    b, lead = int(first.shape[d]), tuple(int(n) for n in first.shape[: d + 1])
    if graphs is not None:
        b, lead = graphs.count, (graphs.count,)
    if b < 2:
        raise ValueError(f"batch independence needs a batch of at least 2 samples, got {b}.")
    checked = index_option(samples, b, "samples", [0, b // 2, b - 1])
    g = torch.Generator().manual_seed(h.seed)
    with h.isolated(train=train_mode):
        data = [t for _, t in h.data_leaves() if _along(t, d, b)]
        floats = all(t.is_floating_point() for t in data)
        chart = _gradient_chart(h, b, checked, g, d, lead) if floats and graphs is None else None
        method: Literal["gradient", "perturbation"] = (
            "gradient" if chart is not None else "perturbation"
        )
        if chart is None:
            try:
                chart = _perturbation_chart(h, b, checked, bound, g, d, lead, graphs)
            except ValueError as e:
                if graphs is not None or "no model output has size" not in str(e):
                    raise
                raise ValueError(
                    f"{e} For a graph batch (node rows, an edge_index), pass sample_index= "
                    "naming the vector of each node's graph id (PyG's 'batch')."
                ) from e
        dependence, sources = [], []
        for row, i in zip(chart, checked, strict=True):
            row = row.clone()
            row[i] = 0.0
            dependence.append(float(row.max()))
            sources.append(tuple(int(j) for j in (row > bound).nonzero().flatten()))
        failing = [i for i, d in zip(checked, dependence, strict=True) if d > bound]
        # localisation reads module outputs by batch row; a graph's rows are its nodes
        where = _localise(h, b, failing[0], bound, d) if failing and graphs is None else None
        carried = h.carried_state() if failing else ()
    r = BatchIndependenceResult(
        seed=h.seed,
        carried_state=carried,
        max_dependence=bound,
        samples=checked,
        batch_size=b,
        dependence=tuple(dependence),
        sources=tuple(sources),
        method=method,
        train_mode=train_mode,
        batch_dim=d,
        batchnorm=any(
            isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in h.model.modules()
        ),
        time_first_rnns=tuple(
            name or type(m).__name__
            for name, m in h.model.named_modules()
            if isinstance(m, torch.nn.RNNBase) and not m.batch_first
        ),
        where=where,
        where_settings=_settings(h.model, where),
        sample_index=None if graphs is None else graphs.where,
    )
    return diagnosed(r, _diagnose)


def _localise(h: Harness, b: int, i: int, bound: float, d: int = 0) -> Place | None:
    """The first module whose output rows of sample ``i`` change when the other samples'
    inputs change, while its input rows of sample ``i`` do not."""
    g = torch.Generator().manual_seed(h.seed + 1)
    others = torch.arange(b) != i
    changed = perturbed(h, d, others, g)

    def run(x: Any) -> Any:
        seed_torch(h.seed)
        return h.forward(x)

    axis, region = along(b, torch.tensor([i]))
    return locate(
        h.model, lambda: run(h.inputs), lambda: run(changed), Property(region, axis, bound)
    )


def _module(model: torch.nn.Module, name: str) -> torch.nn.Module | None:
    return dict(model.named_modules()).get(name)


def _settings(model: torch.nn.Module, where: Place | None) -> tuple[str, ...]:
    """What the module at ``where`` is set to do that mixes the batch, read from the model."""
    m = _module(model, where.module) if where is not None else None
    found = []
    if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
        if not m.track_running_stats or m.running_mean is None:
            found.append("track_running_stats=False")
        if m.training:
            found.append("train mode")
    if isinstance(m, (torch.nn.RNNBase, torch.nn.MultiheadAttention)) and not m.batch_first:
        found.append("batch_first=False")
    layers = (torch.nn.TransformerEncoderLayer, torch.nn.TransformerDecoderLayer)
    if isinstance(m, layers) and not getattr(m.self_attn, "batch_first", True):
        found.append("batch_first=False")
    return tuple(found)


def assert_batch_independence(
    model: torch.nn.Module,
    batch: Any,
    *,
    samples: Sequence[int] | None = None,
    train_mode: bool = False,
    max_dependence: float = MAX_DEPENDENCE,
    output: Any = None,
    unpack: bool | None = None,
    perturb: Any = None,
    batch_dim: int | None = None,
    sample_index: Any = None,
    seed: int = 0,
    msg: Msg = None,
) -> BatchIndependenceResult:
    """Assert that the outputs of a sample depend on no other sample's inputs.

    For float inputs the gradient of a random projection of sample i's outputs is taken with
    respect to the whole batch: every other sample's gradient must be at most ``max_dependence``
    of sample i's own (exactly 0 in a healthy model). Integer inputs (tokens) have no gradient,
    so the other samples' inputs are changed instead and sample i's outputs must stay within
    ``max_dependence`` of their scale. Samples ``samples`` (default: first, middle, last) are
    checked. Only data inputs are changed (masks, lengths, position and type ids are kept;
    ``perturb=`` names the data inputs instead). ``batch`` may be the inputs' ``(inputs,
    targets)`` pair or a mapping batch (its labels are ignored).

    The samples are indexed by ``batch_dim`` of the inputs (and of the outputs, where an output
    of rows flattened from the inputs' ``(T, B)``, such as word_language_model's
    ``(T * B, vocab)``, is read as ``(T, B, ...)``). By default it is 1 where the inputs say so
    unambiguously (input tensors that disagree on dim 0 and agree on dim 1: time-first tokens
    beside an LSTM state of shape (layers, B, H), a seq2seq's (S, B) source and (T, B) target),
    else 0. A time-first model fed a lone (T, B) tensor (``nn.Transformer``'s default
    ``batch_first=False``) needs ``batch_dim=1``: without it, the positions are read as the
    samples and a causal mask as a leak.

    Graph batches (PyTorch Geometric style: node rows ``x``, an ``edge_index`` (2, E), and the
    graph id of every node) have no batch dimension: a sample is a graph. ``sample_index``
    names the vector of graph ids (a key or path of the inputs, or the (N,) tensor); by default
    an input named ``batch`` (PyG's name) holding non-decreasing ids is one. Then each checked
    graph's outputs (per graph, or its nodes' rows) must not move when the other graphs' node
    and edge rows change; ``edge_index`` and the ids are never changed (that would rewire the
    graphs), and the comparison is by perturbation.

    The model runs in eval mode unless ``train_mode=True``: BatchNorm in train mode normalises
    with the batch's statistics, which legitimately mixes the batch (and is caught here if you
    ask for it). Proves: no leak through the checked samples' outputs, for this batch. Does NOT
    prove: independence for other batch sizes or other samples, nor in a mode not checked.

    Raises ``SanityError`` when the check fails, ``TypeError``/``ValueError`` on misuse.
    """
    __tracebackhide__ = True
    r = measure_batch_independence(
        model, batch, samples=samples, train_mode=train_mode, max_dependence=max_dependence,
        output=output, unpack=unpack, perturb=perturb, batch_dim=batch_dim,
        sample_index=sample_index, seed=seed,
    )  # fmt: skip
    if not r.passed:
        fail(_explain(r), r, msg)
    return r


def _only_earlier(r: BatchIndependenceResult) -> bool:
    """Every failing sample depends only on samples before it (a recurrence over the batch)."""
    failing = [(i, src) for i, src in zip(r.samples, r.sources, strict=True) if src]
    return bool(failing) and all(max(src) < i for i, src in failing)


_RESHAPE = Cause(
    id="reshape_across_batch",
    summary="a view/reshape/permute across the batch dim (x.view(-1, B), "
    "x.permute(1, 0, 2, 3).reshape(B, -1))",
    remedy="flatten with x.flatten(1) and keep the batch dim first",
)
_STATISTICS = Cause(
    id="batch_statistics",
    summary="batch statistics in forward (x.mean(0), x.std(0), or BatchNorm in train mode)",
    remedy="reduce over the features of each sample, not over the batch",
)
_ACROSS = Cause(
    id="sequence_layer_across_batch",
    summary="attention, pooling or an RNN across the batch dim (a layer without "
    "batch_first=True given (B, T, D) inputs)",
    remedy="build it with batch_first=True or transpose the input to (T, B, D)",
)


def _diagnose(r: BatchIndependenceResult) -> list[Cause]:
    w = r.where
    at = w.short if w is not None else None
    causes = [_RESHAPE, _STATISTICS, _ACROSS]
    if r.time_first_rnns and _only_earlier(r):
        # An RNN run over dim 0 of (B, T, D) recurs across the samples: each sees those before.
        causes.append(
            Cause(
                id="rnn_across_batch",
                summary=f"an RNN run across the batch: {', '.join(map(repr, r.time_first_rnns))} "
                "expects (T, B, D) without batch_first=True",
                remedy="build it with batch_first=True or transpose the input to (T, B, D)",
                evidence=("each sample depends only on the samples before it, as a recurrence "
                          "over dim 0 does",),
                where=at,
                support=MEASURED if w is not None and "batch_first=False" in r.where_settings
                else CONSISTENT,
            )
        )  # fmt: skip
    if w is None:
        if r.train_mode and r.batchnorm:
            causes.insert(0, _train_mode_batchnorm(None, CONSISTENT))
        return causes
    settings = r.where_settings
    if "track_running_stats=False" in settings:
        causes.append(
            Cause(
                id="batchnorm_batch_statistics",
                summary=f"{w.label} normalises with the batch's own statistics in eval mode "
                "(track_running_stats=False)",
                remedy="build it with track_running_stats=True (the default), or use "
                "GroupNorm/LayerNorm, which normalise each sample alone",
                evidence=("its output mixes the batch while its input does not",),
                where=at,
                support=MEASURED,
            )
        )
    elif "train mode" in settings:
        causes.append(_train_mode_batchnorm(at, MEASURED))
    elif "batch_first=False" in settings:
        causes.append(
            Cause(
                id="rnn_across_batch" if w.module_type.endswith(("LSTM", "GRU", "RNN"))
                else "sequence_layer_across_batch",
                summary=f"{w.label} has batch_first=False: it reads (B, T, D) inputs as "
                "(T, B, D) and runs across the batch",
                remedy="build it with batch_first=True or transpose the input to (T, B, D)",
                evidence=("its output mixes the batch while its input does not",),
                where=at,
                support=MEASURED,
            )
        )  # fmt: skip
    elif w.op is not None:
        causes.append(_op_cause(w))
    else:
        causes.append(
            Cause(
                id="module_mixes_batch",
                summary=f"{w.label} mixes the batch: its output for one sample depends on the "
                "others' while its input does not",
                remedy="find the op in its forward that reduces, normalises or reshapes over dim 0",
                where=at,
                support=CONSISTENT,
            )
        )
    return causes


def _train_mode_batchnorm(at: str | None, support: float) -> Cause:
    return Cause(
        id="batchnorm_train_mode",
        summary="BatchNorm in train mode mixes the batch by design",
        remedy="check with train_mode=False (the default) unless the model must not mix it",
        where=at,
        support=support,
    )


def _op_cause(w: Place) -> Cause:
    assert w.operation is not None
    o, at = w.operation, w.short
    op, k = o.text, o.kind
    evidence = ("the first op whose output mixes the batch while its inputs do not",)
    if k == "softmax" and o.on_axis:
        return Cause(
            id="softmax_over_batch",
            summary=f"{op} normalises over the batch dim, not the classes",
            remedy="normalise over the last dim (dim=-1): each sample's scores on their own",
            evidence=evidence, where=at, support=MEASURED,
        )  # fmt: skip
    if k == "reduction" and o.on_axis:
        return Cause(
            id="batch_statistics",
            summary=f"{op} reduces over the batch dim",
            remedy="reduce over each sample's own features (dim=-1 or dims 1..), not dim 0",
            evidence=evidence, where=at, support=MEASURED,
        )  # fmt: skip
    if k == "reshape":
        return Cause(
            id="reshape_across_batch",
            summary=f"{op} moves data across the batch dim",
            remedy="keep the batch dim first: x.flatten(1), x.reshape(x.shape[0], -1), or "
            "permute before reshaping",
            evidence=evidence, where=at, support=MEASURED,
        )  # fmt: skip
    return Cause(
        id="op_mixes_batch",
        summary=f"{op} combines samples of the batch",
        remedy="apply it to each sample on its own (over dims 1.. only)",
        evidence=evidence, where=at, support=CONSISTENT,
    )  # fmt: skip


def _explain(r: BatchIndependenceResult) -> Explanation:
    unit = "of its own input gradient" if r.method == "gradient" else "of its output scale"
    lines = []
    for i, src, dep in zip(r.samples, r.sources, r.dependence, strict=True):
        if dep > r.max_dependence:
            many = len(src) == r.batch_size - 1
            on = f"all {len(src)} others" if many else f"samples {indices(src)}"
            size = (
                f"{dep:.3g} {unit}" if dep < float("inf") else "inf (its own input has no effect)"
            )
            lines.append(f"Sample {i} depends on {on}: {size} (up to {r.max_dependence:g} allowed)")
    lines.append(f"Method: {r.method}, {'train' if r.train_mode else 'eval'} mode")
    return Explanation(
        header="Outputs depend on other samples' inputs!",
        lines=lines,
        where=r.where,
        relax="max_dependence= (larger); samples= chooses which samples are checked; "
        "batch_dim=1 for time-first (T, B) batches.",
    )
