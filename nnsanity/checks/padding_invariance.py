"""Padding invariance: what sits at padded positions does not move the outputs at real ones.

A batch of sequences of unequal lengths is padded to a common length, and the model is told
where (an attention mask, a pad token id). If it listens, the outputs at real positions (and a
per-sequence output pooled over them) are exactly the same whatever the padded positions hold.
An inverted ``key_padding_mask`` (True passed for the real tokens), a mask not passed to every
layer, pooling over the padding and an RNN run over it all break that, and training still runs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from nnsanity._arguments import check_number
from nnsanity._diagnosis import CONSISTENT, GENERIC, MEASURED, Cause, Place
from nnsanity._harness import Harness
from nnsanity._localisation import Property, locate, real_positions
from nnsanity._messages import Explanation, Msg, fail, indices, up_to
from nnsanity._padding import (
    at_positions,
    batch_outputs,
    changed_embeddings,
    changed_inputs,
    check_padding,
    find_padding,
    position_dim,
)
from nnsanity._perturbation import MAX_DEPENDENCE
from nnsanity._result import CheckResult, diagnosed
from nnsanity.seeding import seed_torch

_ATTENTION_WORDS = ("attention", "attn")


@dataclass(frozen=True, kw_only=True)
class PaddingInvarianceResult(CheckResult):
    """How far the outputs at real positions moved when the padded positions changed.

    ``dependence`` is the largest change of an output at a real position (or of a per-sequence
    output), relative to the largest such output; ``moved`` lists the samples that moved more
    than ``max_dependence``. ``nonfinite`` counts NaN/Inf outputs at real positions (eval mode).
    """

    max_dependence: float  # the bound on ``dependence``
    dependence: float  # relative to the output scale; 0 for a model that ignores its padding
    moved: tuple[int, ...]  # samples whose real outputs moved beyond the bound
    nonfinite: int  # NaN/Inf output values at real positions, before any change
    nonfinite_samples: tuple[int, ...]
    unpadded_samples: tuple[int, ...]  # samples without any padding
    # samples whose every position is padding: no real sequence is empty (a tokenizer keeps at
    # least its special tokens), so the mask marks the real tokens
    all_padded_samples: tuple[int, ...] = ()
    padded: int  # padded positions in the batch
    positions: int  # all positions (batch x length)
    source: str  # where the padding was found
    changed: str  # what was changed at the padded positions: "inputs" or "embeddings"
    attention: bool  # the model has attention layers
    recurrent: bool  # the model has RNN layers
    # the first module (and op) whose real-position outputs read the padding while its inputs
    # there do not
    where: Place | None = None
    where_kind: str | None = None  # "attention", "recurrent" or None: what that module is

    @property
    def passed(self) -> bool:
        return self.dependence <= self.max_dependence and self.nonfinite == 0


def _compare(
    base: list[torch.Tensor], moved: list[torch.Tensor], real: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per sample: the largest change at real positions, the output scale there, and the count
    of non-finite base outputs there."""
    b, t = real.shape
    change = torch.zeros(b, dtype=torch.float64)
    nonfinite = torch.zeros(b, dtype=torch.long)
    scale = torch.finfo(torch.float64).tiny
    for x, y in zip(base, moved, strict=True):
        d = (x - y).abs().nan_to_num(nan=float("inf"))
        d[x.isnan() & y.isnan()] = 0.0
        bad = ~torch.isfinite(x)
        dim = position_dim(x.shape, b, t)
        if dim is None:  # one output per sample: all of it must stay
            d, bad, mag = d.reshape(b, -1), bad.reshape(b, -1), x.reshape(b, -1)
        else:
            keep = real.to(x.device).unsqueeze(-1)
            d = torch.where(keep, at_positions(d, dim), 0.0).reshape(b, -1)
            bad = (at_positions(bad, dim) & keep).reshape(b, -1)
            mag = torch.where(keep, at_positions(x, dim), 0.0).reshape(b, -1)
        change = torch.maximum(change, d.amax(1).cpu()) if d.numel() else change
        nonfinite += bad.sum(1).cpu()
        finite = mag.abs().nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)
        scale = max(scale, float(finite.max())) if finite.numel() else scale
    return change / scale, torch.tensor(scale), nonfinite


def measure_padding_invariance(
    model: torch.nn.Module,
    batch: Any,
    *,
    padding: Any = None,
    max_dependence: float = MAX_DEPENDENCE,
    output: Any = None,
    unpack: bool | None = None,
    perturb: Any = None,
    seed: int = 0,
) -> PaddingInvarianceResult:
    """Change what sits at the padded positions and measure how far real outputs move."""
    bound = check_number(max_dependence, "max_dependence", low=0, what="a number >= 0")
    pad_arg = check_padding(padding)
    h = Harness(
        model, batch, seed=seed, output=output, unpack=unpack, perturb=perturb, needs_loss=False
    )
    g = torch.Generator().manual_seed(h.seed)
    with h.isolated(train=False):
        pad = find_padding(h, pad_arg)
        base = batch_outputs(h, h.inputs)
        if not base:
            raise ValueError(
                f"no floating-point output of {type(model).__name__} has the batch in front; "
                "pass output= (a key, an index or a callable outputs -> tensor)."
            )
        if pad.embeddings:
            moved = batch_outputs(h, h.inputs, around=lambda: changed_embeddings(pad, g))
        else:
            changed = changed_inputs(h, pad, g)
            moved = batch_outputs(h, changed)
        real = ~pad.mask.cpu()
        change, _, nonfinite = _compare(base, moved, real)
        where = None
        if float(change.max()) > bound:
            where = _localise(h, pad, bound, None if pad.embeddings else changed, seed=h.seed)
    modules = [(n.lower(), m) for n, m in h.model.named_modules()]
    r = PaddingInvarianceResult(
        seed=h.seed,
        max_dependence=bound,
        dependence=float(change.max()),
        moved=tuple(int(i) for i in (change > bound).nonzero().flatten()),
        nonfinite=int(nonfinite.sum()),
        nonfinite_samples=tuple(int(i) for i in nonfinite.nonzero().flatten()),
        unpadded_samples=tuple(int(i) for i in real.all(1).nonzero().flatten()),
        all_padded_samples=tuple(int(i) for i in (~real).all(1).nonzero().flatten()),
        padded=int(pad.mask.sum()),
        positions=pad.mask.numel(),
        source=pad.source,
        changed="embeddings" if pad.embeddings else "inputs",
        attention=any(_is_attention(m) for _, m in modules),
        recurrent=any(isinstance(m, torch.nn.RNNBase) for _, m in modules),
        where=where,
        where_kind=_kind(dict(h.model.named_modules()).get(where.module) if where else None),
    )
    return diagnosed(r, _diagnose)


def _localise(h: Harness, pad: Any, bound: float, changed: Any, *, seed: int) -> Place | None:
    """The first module whose outputs at real positions change with the padding while its
    inputs there do not (the changed embeddings count as inputs of the modules they feed)."""
    g = torch.Generator().manual_seed(seed + 1)

    def base() -> Any:
        seed_torch(h.seed)
        return h.forward()

    def moved() -> Any:
        seed_torch(h.seed)
        if changed is not None:
            return h.forward(changed)
        with changed_embeddings(pad, g):
            return h.forward()

    axis, region = real_positions(pad.mask)
    return locate(h.model, base, moved, Property(region, axis, bound))


def _is_attention(m: torch.nn.Module) -> bool:
    return isinstance(m, torch.nn.MultiheadAttention) or any(
        w in type(m).__name__.lower() for w in _ATTENTION_WORDS
    )


def _kind(m: torch.nn.Module | None) -> str | None:
    if m is None:
        return None
    if isinstance(m, torch.nn.RNNBase):
        return "recurrent"
    if _is_attention(m) or isinstance(
        m, (torch.nn.TransformerEncoderLayer, torch.nn.TransformerDecoderLayer)
    ):
        return "attention"
    return None


def assert_ignores_padding(
    model: torch.nn.Module,
    batch: Any,
    *,
    padding: Any = None,
    max_dependence: float = MAX_DEPENDENCE,
    output: Any = None,
    unpack: bool | None = None,
    perturb: Any = None,
    seed: int = 0,
    msg: Msg = None,
) -> PaddingInvarianceResult:
    """Assert that the outputs at real positions do not depend on what the padded positions hold.

    The padding is found from ``padding=`` (a bool ``(B, T)`` tensor, True at padded positions,
    or the pad token id), else an ``attention_mask`` among the inputs (the Hugging Face
    convention: 0 = padding), else an ``nn.Embedding(padding_idx=p)`` in the model (token id p
    is padding). What sits at the padded positions is then changed where the model first reads
    it: the vectors of every ``nn.Embedding`` that reads the token ids are replaced there by
    random ones (the ids, the mask and all that the model derives from them stay as they are),
    or, with no embedding, the data inputs there are (tokens moved to other tokens of the batch,
    floats redrawn; ``perturb=`` names those inputs). In eval mode, the outputs at real
    positions (an output ``(B, T, ...)`` or ``(B, C, T)``) and every per-sequence output
    (``(B, ...)``, such as a pooled classifier's) must then stay within ``max_dependence`` of
    their scale, and be finite.

    The bound 1e-5 is the one of the other dependency checks (``_perturbation.MAX_DEPENDENCE``):
    a masked position gets exactly zero attention weight (exp(-inf) = 0, and exp of Hugging
    Face's finfo.min also underflows to 0), so a model that ignores its padding reproduces the
    real outputs bit for bit (0.0 measured on BERT, T5, GPT-2 right-padded, Llama left-padded,
    a packed LSTM, a packed GRU tagger and a masked transformer classifier), while one that
    reads the padding moves them by 0.2 of their scale or more (measured: 0.20 for an unpacked
    bidirectional GRU, 0.42 for an inverted key_padding_mask, 0.54 for mean pooling over the
    padding). A NaN at a real position in eval mode fails too: with
    ``torch.no_grad()`` in eval mode, PyTorch's fast path of ``nn.TransformerEncoderLayer`` /
    ``nn.MultiheadAttention`` gives NaN for a query whose every key is masked (pytorch/pytorch
    issue 24816), the mark of an inverted ``key_padding_mask`` on a sequence without padding.

    Proves: for this batch, in eval mode, nothing the padded positions hold reaches a real
    output. Does not prove: that the amount of padding does not matter (a bidirectional RNN fed
    zero vectors at the padding passes a changed-content test only if it ignores them), that the
    loss ignores the padding (``assert_loss_masks_padding``), or the same in train mode.

    Raises ``SanityError`` when the check fails, ``TypeError``/``ValueError`` on misuse (no
    padding found, or none in the batch).
    """
    __tracebackhide__ = True
    r = measure_padding_invariance(
        model, batch, padding=padding, max_dependence=max_dependence, output=output,
        unpack=unpack, perturb=perturb, seed=seed,
    )  # fmt: skip
    if not r.passed:
        fail(_explain(r), r, msg)
    return r


_POLARITY = Cause(
    id="mask_polarity",
    summary="the padding mask has the wrong polarity: key_padding_mask (nn.MultiheadAttention, "
    "nn.Transformer*) takes True at the padding to ignore; a Hugging Face attention_mask takes 1 "
    "at the real tokens. Inverted, every real token attends only to padding, and a sequence "
    "without padding to nothing (NaN in eval mode)",
    remedy="pass key_padding_mask=(attention_mask == 0) (or tokens == PAD)",
)
_NOT_PASSED = Cause(
    id="mask_not_passed",
    summary="the mask is not passed to every attention",
    remedy="give each layer src_key_padding_mask, and a decoder's cross-attention "
    "memory_key_padding_mask",
)
_POOLING = Cause(
    id="pooling_over_padding",
    summary="pooling over the positions without the mask (x.mean(1), x.max(1))",
    remedy="pool the real positions only: (x * m).sum(1) / m.sum(1) with m = 1 at real tokens",
)
_RNN = Cause(
    id="rnn_over_padding",
    summary="an RNN run over the padding (bidirectional, or left-padded)",
    remedy="pack the batch with pack_padded_sequence(x, lengths, batch_first=True, "
    "enforce_sorted=False)",
)


def _inverted(r: PaddingInvarianceResult) -> bool:
    nan_where_unpadded = set(r.nonfinite_samples) <= set(r.unpadded_samples)
    return bool(r.all_padded_samples) or (bool(r.nonfinite_samples) and nan_where_unpadded)


def _diagnose(r: PaddingInvarianceResult) -> list[Cause]:
    inverted = _inverted(r)
    generic = [_POLARITY, _NOT_PASSED, _POOLING, _RNN]
    if r.recurrent and not r.attention and not inverted:
        generic = [_RNN, _POOLING, _POLARITY, _NOT_PASSED]
    elif not r.attention and not inverted:
        generic = [_POOLING, _POLARITY, _NOT_PASSED, _RNN]
    causes = list(generic)
    if inverted:
        evidence = (
            f"samples {indices(r.all_padded_samples)} would be all padding under this mask"
            if r.all_padded_samples
            else "the NaN/Inf outputs are exactly in the samples without padding"
        )
        causes.insert(0, replace(_POLARITY, support=MEASURED, evidence=(evidence,)))
    w = r.where
    if w is None:
        return causes
    at, first = w.short, "the first module whose real outputs read the padding"
    o = w.operation
    if o is not None and o.kind == "mask" and o.fill is not None:
        causes.insert(0, Cause(
            id="mask_fill_not_inf",
            summary=f"{o.text} masks the padding with a finite value, so the padded keys keep "
            "a weight in the softmax",
            remedy="fill with float('-inf') (or torch.finfo(scores.dtype).min)",
            evidence=(first,), where=at, support=MEASURED,
        ))  # fmt: skip
    elif o is not None and o.kind in ("reduction", "softmax") and o.on_axis:
        causes.insert(0, replace(_POOLING, evidence=(f"{first}: {o.text}",), where=at,
                                 support=MEASURED))  # fmt: skip
    elif r.where_kind == "recurrent":
        causes.insert(0, replace(_RNN, evidence=(first,), where=at, support=MEASURED))
    elif r.where_kind == "attention" and not inverted:
        mask = _NOT_PASSED if w.module else _POLARITY
        causes.insert(0, replace(mask, evidence=(first,), where=at, support=CONSISTENT))
    elif not inverted:
        causes.insert(0, Cause(
            id="module_reads_padding", summary=f"{w.label} reads what the padding holds",
            remedy="mask or pack the padded positions before it", evidence=(first,), where=at,
            support=CONSISTENT if o is None else MEASURED,
        ))  # fmt: skip
    return [c for c in causes if c.support >= GENERIC]


def _explain(r: PaddingInvarianceResult) -> Explanation:
    lines = []
    found = f"Padding: {r.source}, {r.padded} of {r.positions} positions"
    if r.dependence > r.max_dependence:
        size = "inf (a NaN appeared)" if r.dependence == float("inf") else f"{r.dependence:.3g}"
        lines.append(
            "Largest change of an output at a real position when the padded "
            + ("inputs" if r.changed == "inputs" else "tokens' embeddings")
            + " change: "
            + up_to(f"{size} of the output scale", f"{r.max_dependence:g}")
        )
        lines.append(f"Samples whose real outputs moved: {indices(r.moved)}")
    if r.nonfinite:
        which = " (exactly samples without padding)" if _inverted(r) else ""
        lines.append(
            up_to(f"NaN/Inf outputs at real positions in eval mode: {r.nonfinite}", "0")
            + f", in samples {indices(r.nonfinite_samples)}{which}"
        )
    lines.append(found)
    header = (
        "Outputs at real positions depend on the padding!"
        if r.dependence > r.max_dependence
        else "Outputs at real positions are NaN/Inf in eval mode!"
    )
    return Explanation(
        header=header,
        lines=lines,
        where=r.where,
        relax="max_dependence= (larger); padding= says where the padding is, if it was found "
        "wrongly.",
    )
