"""Causality: in an autoregressive model the output at position t depends on no input after t.

Karpathy's recipe ("use backprop to chart dependencies") for the time axis: a model that looks
ahead trains beautifully and cheats, because the target it predicts is among its inputs. The
check changes the inputs after t and requires the outputs up to t to stay put, which works for
token and float inputs alike. Batch independence, the same question across the batch, is in
``nnsanity.checks.batch_independence``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from nnsanity._arguments import check_bool, check_int, check_number, first_line
from nnsanity._diagnosis import CONSISTENT, MEASURED, Cause, Place
from nnsanity._harness import Harness
from nnsanity._localisation import Property, along, locate
from nnsanity._messages import Explanation, Msg, fail, indices, up_to
from nnsanity._perturbation import (
    MAX_DEPENDENCE,
    index_option,
    outputs_along,
    perturbed,
    relative_change,
    sequence_dim,
)
from nnsanity._result import CheckResult, diagnosed
from nnsanity.seeding import seed_torch


@dataclass(frozen=True, kw_only=True)
class CausalResult(CheckResult):
    """How much outputs at or before position t change when the inputs after t change.

    ``changes[k]`` is that change for ``t = positions[k]``, relative to the largest output.
    ``first_leak`` is the earliest output position that moved (it sees the future), revealed
    by changing the inputs after ``leak_after``, by ``leak_change``; None when nothing moved.
    """

    max_dependence: float  # the bound on every change
    positions: tuple[int, ...]
    changes: tuple[float, ...]
    first_leak: int | None
    leak_after: int | None
    leak_change: float | None
    dim: int
    # the first module (and op) whose outputs at <= leak_after see the inputs after it, while
    # its inputs there do not
    where: Place | None = None
    where_settings: tuple[str, ...] = ()  # the module's settings that look ahead

    @property
    def passed(self) -> bool:
        return self.first_leak is None


def _first_leak(
    moved: Callable[[int], torch.Tensor],
    checked: Sequence[int],
    changes: Sequence[torch.Tensor],
    bound: float,
) -> tuple[int, int, float] | None:
    """(first output position that moved, the t whose change moved it, by how much), or None.

    ``changes[k]`` holds the change of outputs 0..t for ``t = checked[k]``. Output s sees the
    future exactly when changing the inputs after s moves it; trying the unchecked t below the
    earliest leak in order finds the first such s.
    """
    leak = None
    for t, change in zip(checked, changes, strict=True):
        early = (change > bound).nonzero().flatten()
        if len(early) and (leak is None or int(early[0]) < leak[0]):
            leak = (int(early[0]), t, float(change.max()))
    if leak is None:
        return None
    for t in (t for t in range(leak[0]) if t not in checked):
        change = moved(t)
        if float(change.max()) > bound:
            return int((change > bound).nonzero()[0]), t, float(change.max())
    return leak


def measure_causal(
    model: torch.nn.Module,
    inputs: Any,
    *,
    dim: int = 1,
    positions: Sequence[int] | None = None,
    train_mode: bool = False,
    max_dependence: float = MAX_DEPENDENCE,
    output: Any = None,
    unpack: bool | None = None,
    perturb: Any = None,
    seed: int = 0,
) -> CausalResult:
    """Measure how much outputs up to each checked position t depend on inputs after t."""
    check_bool(train_mode, "train_mode")
    bound = check_number(max_dependence, "max_dependence", low=0, what="a number >= 0")
    dim = check_int(dim, "dim")
    h = Harness(
        model, inputs, seed=seed, output=output, unpack=unpack, perturb=perturb,
        needs_loss=False, inputs_only=True,
    )  # fmt: skip
    dim, n = sequence_dim(h, dim, "causality")
    first = next(t for _, t in h.data_leaves() if t.dim())
    spread = torch.linspace(0, n - 2, min(8, n - 1)).round().long().tolist()
    checked = index_option(positions, n, "positions", spread)
    if checked[-1] == n - 1:
        raise ValueError(
            f"positions holds {n - 1}, the last position: no input comes after it. "
            f"Pass positions in [0, {n - 2}]."
        )
    g = torch.Generator().manual_seed(h.seed)
    # outputs flattened from the inputs' first two dims ((T * B, vocab)) are read unflattened
    lead = tuple(int(s) for s in first.shape[:2]) if first.dim() >= 2 else ()
    with h.isolated(train=train_mode):
        try:
            base = outputs_along(h, h.inputs, dim, n, lead)
        except ValueError as e:
            if not isinstance(inputs, (tuple, list)) or len(inputs) != 2:
                raise
            # Most likely the whole (inputs, targets) batch pair, which the model cannot take.
            raise TypeError(
                f"{type(model).__name__} failed on inputs that are a {type(inputs).__name__} "
                f"of {len(inputs)} ({first_line(e)}). assert_causal takes the inputs alone, not "
                "an (inputs, targets) batch pair: pass batch[0]."
            ) from e

        def moved(t: int) -> torch.Tensor:  # change of the outputs at <= t, inputs > t changed
            changed = perturbed(h, dim, torch.arange(n) > t, g)
            return relative_change(base, outputs_along(h, changed, dim, n, lead), dim)[: t + 1]

        changes = [moved(t) for t in checked]
        leak = _first_leak(moved, checked, changes, bound)
        where = _localise(h, dim, n, leak[1], bound, g) if leak is not None else None
        carried = h.carried_state() if leak is not None else ()
    r = CausalResult(
        seed=h.seed,
        carried_state=carried,
        max_dependence=bound,
        positions=checked,
        changes=tuple(float(c.max()) for c in changes),
        first_leak=None if leak is None else leak[0],
        leak_after=None if leak is None else leak[1],
        leak_change=None if leak is None else leak[2],
        dim=dim,
        where=where,
        where_settings=_settings(h.model, where),
    )
    return diagnosed(r, _diagnose)


def _localise(
    h: Harness, dim: int, n: int, t: int, bound: float, g: torch.Generator
) -> Place | None:
    """The first module whose outputs at positions <= t change with the inputs after t while its
    inputs at <= t do not."""
    changed = perturbed(h, dim, torch.arange(n) > t, g)

    def run(x: Any) -> Any:
        seed_torch(h.seed)
        return h.forward(x)

    axis, region = along(n, torch.arange(n) <= t, dim=dim)
    return locate(
        h.model, lambda: run(h.inputs), lambda: run(changed), Property(region, axis, bound)
    )


_ATTENTION = (torch.nn.MultiheadAttention, torch.nn.TransformerEncoderLayer,
              torch.nn.TransformerDecoderLayer)  # fmt: skip


def _settings(model: torch.nn.Module, where: Place | None) -> tuple[str, ...]:
    """What the module at ``where`` is, or is set to do, that looks ahead."""
    m = dict(model.named_modules()).get(where.module) if where is not None else None
    found = []
    if isinstance(m, torch.nn.RNNBase) and m.bidirectional:
        found.append("bidirectional=True")
    if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d)) and m.padding not in (0, (0,), (0, 0)):
        found.append(f"padding={m.padding}")
    if isinstance(m, _ATTENTION) or (
        m is not None and any(w in type(m).__name__.lower() for w in ("attn", "attention"))
    ):
        found.append("attention")
    return tuple(found)


def assert_causal(
    model: torch.nn.Module,
    inputs: Any,
    *,
    dim: int = 1,
    positions: Sequence[int] | None = None,
    train_mode: bool = False,
    max_dependence: float = MAX_DEPENDENCE,
    output: Any = None,
    unpack: bool | None = None,
    perturb: Any = None,
    seed: int = 0,
    msg: Msg = None,
) -> CausalResult:
    """Assert that the output at position t depends on no input after t.

    For each checked t (default: up to 8 positions spread from 0 to T-2) the data inputs after t
    are changed (tokens to other tokens of the batch, floats redrawn; masks and position ids
    kept) and the outputs at positions <= t must stay within ``max_dependence`` of the output
    scale (a causal model reproduces them exactly). The sequence is on ``dim`` of the inputs and
    of the outputs; the model runs in eval mode unless ``train_mode=True``. ``inputs`` is what
    the model takes: a tensor, or a dict such as a tokenizer's output (called as
    ``model(**inputs)`` when its forward takes those keywords).

    Proves: no output looks ahead, for these inputs and positions. Does NOT prove: that the
    targets are shifted by one, nor causality at other lengths.

    Raises ``SanityError`` when the check fails, ``TypeError``/``ValueError`` on misuse.
    """
    __tracebackhide__ = True
    r = measure_causal(
        model, inputs, dim=dim, positions=positions, train_mode=train_mode,
        max_dependence=max_dependence, output=output, unpack=unpack, perturb=perturb, seed=seed,
    )  # fmt: skip
    if not r.passed:
        fail(_explain(r), r, msg)
    return r


_NO_MASK = Cause(
    id="no_causal_mask",
    summary="no causal mask in self-attention",
    remedy="pass attn_mask=nn.Transformer.generate_square_subsequent_mask(T) (is_causal=True "
    "alone is only a hint to nn.MultiheadAttention / nn.TransformerEncoderLayer)",
)
_WRONG_MASK = Cause(
    id="mask_orientation",
    summary="a mask of the wrong orientation (triu vs tril, or a bool mask with True meaning "
    "'attend' where torch means 'masked out')",
    remedy="mask the keys after each query: True (or -inf) above the diagonal",
)
_LOOKS_AHEAD = Cause(
    id="layer_looks_ahead",
    summary="a layer that looks ahead: a bidirectional RNN, a convolution padded on both sides, "
    "or normalisation/pooling over the time dim",
    remedy="use unidirectional layers, pad convolutions on the left only",
)


def _diagnose(r: CausalResult) -> list[Cause]:
    causes = [_NO_MASK, _WRONG_MASK, _LOOKS_AHEAD]
    w = r.where
    if w is None:
        return causes
    at, s = w.short, r.where_settings
    first = "the first module whose early outputs see the later inputs while its own inputs do not"
    o = w.operation
    if o is not None:
        evidence = (f"{o.text} at {o.line} is the first op on the path to the output that sees "
                    "the future",)  # fmt: skip
        if o.kind == "mask" and o.fill is not None:
            causes.append(Cause(
                id="mask_fill_not_inf",
                summary=f"{o.text} masks with a finite value, so the masked scores still count",
                remedy="fill with float('-inf') (or torch.finfo(scores.dtype).min)",
                evidence=evidence, where=at, support=MEASURED,
            ))  # fmt: skip
        elif o.kind == "softmax" and o.shape is not None and o.dim != len(o.shape) - 1:
            causes.append(Cause(
                id="softmax_wrong_dim",
                summary=f"{o.text} of a {o.shape} tensor normalises over dim {o.dim}, not the "
                "last (the keys): each query's weights then depend on the other queries",
                remedy="softmax(dim=-1) over the keys",
                evidence=evidence, where=at, support=MEASURED,
            ))  # fmt: skip
        elif o.kind == "reshape":
            causes.append(Cause(
                id="reshape_mixes_positions",
                summary=f"{o.text} moves data across positions: (B, heads, T, d) reshaped to "
                "(B, T, heads*d) without moving the heads next to d first",
                remedy="transpose(1, 2) before the reshape: x.transpose(1, 2).reshape(B, T, -1)",
                evidence=evidence, where=at, support=MEASURED,
            ))  # fmt: skip
        elif o.kind in ("reduction", "softmax") and o.on_axis:
            causes.append(Cause(
                id="reduction_over_time",
                summary=f"{o.text} reduces over the time dim, future positions included",
                remedy="use a causal (cumulative) reduction or reduce over each position alone",
                evidence=evidence, where=at, support=MEASURED,
            ))  # fmt: skip
        else:
            causes.append(Cause(
                id="no_causal_mask",
                summary=f"{o.text} combines every position with every other, and no mask "
                "after it removes the future",
                remedy="mask the scores above the diagonal with -inf before the softmax",
                evidence=evidence, where=at, support=MEASURED if "attention" in s else CONSISTENT,
            ))  # fmt: skip
    elif "attention" in s:
        causes.append(Cause(
            id="no_causal_mask",
            summary=f"{w.label} attends to later positions: no causal mask reaches it",
            remedy=_NO_MASK.remedy, evidence=(first,), where=at, support=MEASURED,
        ))  # fmt: skip
    elif "bidirectional=True" in s or any(x.startswith("padding=") for x in s):
        causes.append(Cause(
            id="layer_looks_ahead",
            summary=f"{w.label} looks ahead ({', '.join(s)})",
            remedy="use a unidirectional RNN, or pad the convolution on the left only "
            "(F.pad(x, (k - 1, 0)) and padding=0)",
            evidence=(first,), where=at, support=MEASURED,
        ))  # fmt: skip
    else:
        causes.append(Cause(
            id="module_looks_ahead", summary=f"{w.label} sees the future",
            remedy="find what in it combines positions", evidence=(first,), where=at,
            support=CONSISTENT,
        ))  # fmt: skip
    return causes


def _explain(r: CausalResult) -> Explanation:
    assert r.leak_change is not None
    return Explanation(
        header=f"The output at position {r.first_leak} sees the future!",
        lines=[
            f"Change of outputs at <= {r.first_leak} when the inputs after position "
            f"{r.leak_after} change: "
            + up_to(f"{r.leak_change:.3g} of the output scale", f"{r.max_dependence:g}"),
            f"Checked t = {indices(r.positions)} along dim {r.dim}",
        ],
        where=r.where,
        relax="max_dependence= (larger); dim= names the sequence dimension if it is not 1.",
    )
