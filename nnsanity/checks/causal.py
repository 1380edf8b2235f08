"""Causality: in an autoregressive model the output at position t depends on no input after t.

Karpathy's recipe ("use backprop to chart dependencies") for the time axis: a model that looks
ahead trains beautifully and cheats, because the target it predicts is among its inputs. The
check changes the inputs after t and requires the outputs up to t to stay put, which works for
token and float inputs alike. Batch independence, the same question across the batch, is in
``nnsanity.checks.batch_independence``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from nnsanity._arguments import check_batch, tensors_in
from nnsanity._messages import failure
from nnsanity._perturbation import (
    RTOL,
    check_options,
    index_option,
    int_option,
    listing,
    outputs_along,
    perturbed,
    relative_change,
)
from nnsanity._state import isolated


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
    check_options(model, train_mode, rtol, seed)
    if not tensors_in(inputs):
        raise TypeError(
            f"inputs must be a tensor (or a container of tensors) of sequences, "
            f"got {type(inputs).__name__}."
        )
    inputs, _ = check_batch((inputs, None), model)
    first = tensors_in(inputs)[0]
    dim = int_option(dim, "dim")
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
    checked = index_option(positions, n, "positions", spread)
    if checked[-1] == n - 1:
        raise ValueError(
            f"positions holds {n - 1}, the last position: no input comes after it. "
            f"Pass positions in [0, {n - 2}]."
        )
    g = torch.Generator().manual_seed(seed)
    with isolated(model):
        model.train(train_mode)
        try:
            base = outputs_along(model, inputs, dim, n, seed)
        except (AttributeError, TypeError, ValueError) as e:
            if not isinstance(inputs, (tuple, list)):
                raise
            # Most likely the whole (inputs, targets) batch pair, which the model cannot take.
            detail = (str(e).splitlines() or [""])[0]
            raise TypeError(
                f"{type(model).__name__} failed on inputs that are a {type(inputs).__name__} "
                f"of {len(inputs)} ({type(e).__name__}: {detail}). assert_causal takes the "
                "inputs tensor alone, not an (inputs, targets) batch pair: pass batch[0]."
            ) from e

        def moved(t: int) -> torch.Tensor:  # change of the outputs at <= t, inputs > t changed
            changed = perturbed(inputs, dim, torch.arange(n) > t, g)
            return relative_change(base, outputs_along(model, changed, dim, n, seed), dim)[: t + 1]

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
        f"{listing(result.positions)} along dim {result.dim})",
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
