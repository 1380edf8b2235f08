"""Order sensitivity: a sequence model's outputs change when the positions of its inputs do.

Self-attention and pooling are permutation-equivariant: without positional information a
Transformer sees a sequence as a bag of tokens, and "ascending" and "descending" look the same to
it. A positional encoding indexed wrongly (``pe[:, :1]`` in place of ``pe[:, :T]``: one row added
to every position) leaves the model order-blind while it trains, and it fits whatever the bag of
tokens predicts (issue 15: 51% on an ascending-vs-descending task, 97% once fixed). The check
permutes the positions of the inputs and requires the outputs to change beyond the permutation
itself (Vaswani et al. 2017, section 3.5: "since our model contains no recurrence and no
convolution, in order for the model to make use of the order of the sequence, we must inject
some information about the relative or absolute position").
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import torch

from nnsanity._arguments import check_int, check_number, first_line
from nnsanity._diagnosis import CONSISTENT, MEASURED, Cause
from nnsanity._harness import Harness
from nnsanity._messages import Explanation, Msg, at_least, fail
from nnsanity._perturbation import sequence_dim
from nnsanity._result import CheckResult, diagnosed
from nnsanity.seeding import seed_torch

# The default bound on the change, relative to how much the outputs differ between samples. An
# order-blind model changes only by float32 rounding of sums taken in another order: 1e-7-1e-6 of
# that spread on the order Transformer of tests/mnist_recipe.py with its encoding indexed wrongly;
# the fixed model changes by 0.16-0.29 of it at init (5 seeds). 1e-4 sits 100x above the
# rounding.
MIN_CHANGE = 1e-4
# Modules named as where positions enter: the names people give positional encodings.
POSITIONAL = re.compile(r"pos|position|rotary|rope|wpe", re.IGNORECASE)


@dataclass(frozen=True, kw_only=True)
class OrderSensitivityResult(CheckResult):
    """How much the outputs change when the inputs' positions are permuted."""

    dim: int  # the sequence dimension of the inputs
    length: int  # the sequence length
    permutation: tuple[int, ...]  # position t of the permuted inputs holds input position p[t]
    min_change: float  # the bound on ``change``
    change: float  # max |out(P x) - out(x)| (or - P out(x), whichever is smaller) / ``spread``
    spread: float  # max |out(x) - mean over samples of out(x)|: how much samples differ
    equivariant: bool  # per-position outputs that only moved with their inputs
    # modules named like a positional encoding whose output on the permuted inputs is their
    # output permuted (or unchanged): they add nothing that depends on position
    blind_positional: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return math.isfinite(self.change) and self.change >= self.min_change


def _first_tensor(out: Any) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        return next((t for t in map(_first_tensor, out) if t is not None), None)
    return None


def _max_change(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def _blind(
    seen: dict[str, list[torch.Tensor]],
    calls: dict[str, int],
    dim: int,
    perm: torch.Tensor,
    bound: float,
) -> tuple[str, ...]:
    """The recorded modules whose first output on the permuted inputs is their output on the
    inputs, permuted or unchanged: nothing in it depends on position. Their outputs may lack
    the batch dimension (a position table of shape (T, D)): the axis of length T nearest
    ``dim`` is the sequence."""
    n, blind = len(perm), []
    for name, outs in seen.items():
        k = calls[name]
        if k == 0 or len(outs) < 2 * k or outs[0].shape != outs[k].shape:
            continue
        a, b = outs[0], outs[k]
        axes = sorted((i for i in range(a.dim()) if a.shape[i] == n), key=lambda i: abs(i - dim))
        if not axes:
            continue
        own = max(float(a.double().abs().max()), 1e-30)
        permuted = _max_change(b, a.index_select(axes[0], perm.to(a.device)))
        if min(permuted, _max_change(b, a)) / own < bound:
            blind.append(name)
    return tuple(blind)


def measure_order_sensitivity(
    model: torch.nn.Module,
    inputs: Any,
    *,
    dim: int = 1,
    min_change: float = MIN_CHANGE,
    output: Any = None,
    unpack: bool | None = None,
    seed: int = 0,
) -> OrderSensitivityResult:
    """Permute the positions of ``inputs`` along ``dim`` and measure how much the outputs change.
    See :func:`assert_uses_order`. Never raises ``SanityError``."""
    dim = check_int(dim, "dim")
    min_change = check_number(min_change, "min_change", low=0, what="a number >= 0")
    h = Harness(
        model, inputs, seed=seed, output=output, unpack=unpack, needs_loss=False,
        inputs_only=True,
    )  # fmt: skip
    dim, n = sequence_dim(h, dim, "order")
    g = torch.Generator().manual_seed(h.seed)
    perm = torch.randperm(n, generator=g)
    while n > 1 and bool((perm == torch.arange(n)).all()):
        perm = torch.randperm(n, generator=g)

    def shuffle(_: Any, t: torch.Tensor) -> torch.Tensor:
        fits = t.dim() > dim and t.shape[dim] == n
        return t.index_select(dim, perm.to(t.device)) if fits else t

    moved_inputs = h.map_data(shuffle)
    named = {
        m: name
        for name, m in h.model.named_modules()
        if name and (POSITIONAL.search(name) or POSITIONAL.search(type(m).__name__))
    }
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in named.values()}

    def hook(module: torch.nn.Module, args: Any, out: Any) -> None:
        t = _first_tensor(out)
        if t is not None:
            seen[named[module]].append(t.detach())

    handles = [m.register_forward_hook(hook) for m in named]
    try:
        with h.isolated(train=False), torch.no_grad():
            try:
                seed_torch(h.seed)
                base = h.logits(h.forward()).detach()
            except ValueError as e:
                if not isinstance(inputs, (tuple, list)) or len(inputs) != 2:
                    raise
                raise TypeError(
                    f"{type(model).__name__} failed on inputs that are a "
                    f"{type(inputs).__name__} of 2 ({first_line(e)}). assert_uses_order takes "
                    "the inputs alone, not an (inputs, targets) batch pair: pass batch[0]."
                ) from e
            calls = {k: len(v) for k, v in seen.items()}
            seed_torch(h.seed)
            moved = h.logits(h.forward(moved_inputs)).detach()
    finally:
        for handle in handles:
            handle.remove()
    spread = _max_change(base, base.double().mean(0, keepdim=True)) if base.dim() else 0.0
    plain = _max_change(moved, base)
    per_position = base.dim() > dim and base.shape[dim] == n and moved.shape == base.shape
    equiv = (
        _max_change(moved, base.index_select(dim, perm.to(base.device)))
        if per_position
        else math.inf
    )
    scale = spread if spread > 0 else math.nan
    change = min(plain, equiv) / scale
    r = OrderSensitivityResult(
        seed=h.seed,
        dim=dim,
        length=n,
        permutation=tuple(int(p) for p in perm),
        min_change=min_change,
        change=change,
        spread=spread,
        equivariant=per_position and equiv <= plain,
        blind_positional=_blind(seen, calls, dim, perm, min_change),
    )
    return diagnosed(r, _diagnose)


def assert_uses_order(
    model: torch.nn.Module,
    inputs: Any,
    *,
    dim: int = 1,
    min_change: float = MIN_CHANGE,
    output: Any = None,
    unpack: bool | None = None,
    seed: int = 0,
    msg: Msg = None,
) -> OrderSensitivityResult:
    """Assert that permuting the positions of a sequence input changes the model's outputs.

    ``inputs`` (the inputs alone, not an ``(inputs, targets)`` pair) are run in eval mode, then
    again with every data tensor of their sequence length permuted along ``dim`` (1: ``(B, T,
    ...)``; 0 for time-first inputs) by one fixed random permutation. For pooled outputs
    ``(B, C)`` the change is max |out(P x) - out(x)|; for per-position outputs ``(B, T, ...)``
    the smaller of that and max |out(P x) - P out(x)|, so outputs that merely move with their
    inputs (an order-blind encoder is permutation-equivariant) count as unchanged. The change,
    in units of how much the outputs differ between samples (max |out - mean over the batch|),
    must be at least ``min_change`` (1e-4: float32 rounding of sums taken in another order is
    1e-7-1e-6 of it; a Transformer with a working positional encoding changes by 0.16-0.29 at
    init). On failure, modules named like a positional encoding (``pos``, ``position``,
    ``rotary``, ``wpe`` in the module's name or class) whose output did not change beyond the
    permutation are named: they add the same thing at every position (``pe[:, :1]`` in place of
    ``pe[:, :x.size(1)]``, position ids all zero).

    Applies to sequence models that should use the order of their inputs: Transformers with
    positional encodings (sinusoidal, learned, rotary), RNNs, convolutions over time, causal
    models. It does NOT apply to models meant to be order-invariant: bag-of-words classifiers,
    set and point-cloud models (Deep Sets), graph models over node order, or attention pooling
    with no positions by design; for those the check fails by construction. It proves the
    outputs depend on the order of the inputs at init; it does not prove the model uses the
    order well, nor that the positions it sees are the right ones.

    Raises ``SanityError`` when the check fails, ``TypeError``/``ValueError`` on misuse (no data
    tensor, a ``dim`` the inputs lack, a sequence of length 1, a batch pair).
    """
    __tracebackhide__ = True
    r = measure_order_sensitivity(
        model, inputs, dim=dim, min_change=min_change, output=output, unpack=unpack, seed=seed
    )
    if not r.passed:
        fail(_explain(r), r, msg)
    return r


def _diagnose(r: OrderSensitivityResult) -> list[Cause]:
    if not r.spread > 0:
        return [
            Cause(id="identical_outputs", summary="the model gives the same output for every "
                  "sample, so no change can be read", remedy="run nnsanity.assert_uses_inputs",
                  support=MEASURED),
        ]  # fmt: skip
    causes = [
        Cause(id="positional_encoding_constant", summary="the positional encoding adds the same "
              "vector at every position (indexed wrongly: pe[:, :1], or position ids all zero)",
              remedy="add pe[:, :x.size(1)] (one row per position)",
              where=r.blind_positional[0] if r.blind_positional else None,
              evidence=tuple(f"'{m}' output unchanged beyond the permutation"
                             for m in r.blind_positional),
              support=MEASURED if r.blind_positional else CONSISTENT),
        Cause(id="no_positional_encoding", summary="no positional information reaches the "
              "model (a Transformer encoder without a positional encoding, or one never added)",
              remedy="add a positional encoding to the embeddings", support=CONSISTENT),
        Cause(id="wrong_sequence_dim", summary=f"dim={r.dim} is not the sequence dimension",
              remedy="pass dim= (0 for time-first inputs)"),
        Cause(id="order_invariant_by_design", summary="the model is meant to ignore order (bag "
              "of words, a set model): the check does not apply", remedy="do not use it here"),
    ]  # fmt: skip
    return causes


def _explain(r: OrderSensitivityResult) -> Explanation:
    if not r.spread > 0:
        return Explanation(
            header="The model ignores the order of its inputs!",
            lines=["Outputs identical for every sample: the change cannot be measured"],
        )
    kind = "beyond moving with their inputs" if r.equivariant else "at all"
    lines = [
        f"Change of the outputs when the {r.length} positions along dim {r.dim} are permuted "
        f"({kind}): " + at_least(f"{r.change:.3g}", f"{r.min_change:g}") + " of the spread "
        f"between samples ({r.spread:.3g})",
    ]
    if r.blind_positional:
        lines.append(
            "Positional modules that add nothing position-dependent: "
            + ", ".join(f"'{m}'" for m in r.blind_positional)
        )
    return Explanation(
        header="The model ignores the order of its inputs!", lines=lines, relax="min_change="
    )
