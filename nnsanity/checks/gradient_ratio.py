"""Vanishing and exploding gradients: a depth trend of the error signal across repeated layers.

Nielsen (ch. 5) measures a layer's "speed of learning" by the error signal δ = ∂C/∂z at its
output (the gradient of its bias); in a deep sigmoid net δ shrinks by a factor of four or more
per layer toward the input (σ' ≤ 1/4), so early layers learn ~100 times slower (vanishing), and
large weights make the per-layer factors above one (exploding). Comparing layers of different
kinds says nothing about depth (an embedding behind a norm, a stem conv shared over many
positions, query/key projections at a 0.02 init, a squeeze-excitation gate all differ for reasons
of their own), so the check compares like with like: layers of the same type, weight shape and
role (the same name up to block numbers), in the order the forward pass runs them.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch

from nnsanity._arguments import LossFn, check_number
from nnsanity._depth import owns_weight, repeated, trend, worst
from nnsanity._diagnosis import CONSISTENT, Cause, cause
from nnsanity._harness import Harness
from nnsanity._messages import Explanation, Msg, fail, up_to
from nnsanity._result import CheckResult, diagnosed

# A depth trend counts only when it compounds by at least this factor per layer: the healthy
# zoo's repeated transformer blocks compound by 1.02-1.18 per block toward the input (GPT-2,
# BERT, Llama and ViT with 12 blocks), so a 40-block stack of them stays within the bounds, while
# sigmoid layers with N(0, 1) weights shrink 1.56x per layer, Nielsen's [784, 30, 30, 30, 30, 10]
# 4.8-6.6x, a ReLU net at 3x He scale grows 3x per layer and tanh at 4x 1.48x.
MIN_RATE = 1.3
# The default bounds on a group's total change (calibrated in assert_gradient_ratio's docstring:
# healthy growth up to 11x, decay up to 1.16x; planted bugs 23-43x decay, 1,100-6,600x growth).
MAX_GROWTH, MAX_DECAY = 100.0, 10.0


@dataclass(frozen=True, kw_only=True)
class LayerTrend:
    """The error signal along one group of repeated layers, in forward order."""

    pattern: str  # the layers' names with block numbers as '*', e.g. 'blocks.*.attn.qkv'
    layers: tuple[str, ...]
    error_rms: tuple[float, ...]  # RMS of ∂loss/∂(layer output), per layer
    trend: float  # exp(|slope| x (n - 1)) of log error_rms on position: the total change
    rate: float  # exp(|slope|): the change per layer
    toward_input: Literal["grows", "shrinks"]


@dataclass(frozen=True, kw_only=True)
class GradientRatioResult(CheckResult):
    """The depth trends of the error signal in every group of repeated layers."""

    max_growth: float  # bound on a trend that grows toward the input (exploding)
    max_decay: float  # bound on a trend that shrinks toward the input (vanishing)
    groups: tuple[LayerTrend, ...]  # groups of at least two repeated layers, worst first
    silent: tuple[str, ...]  # layers whose error signal is exactly zero (left out; see
    # assert_params_update: a zero-initialised branch, or a cut graph)
    loss: float

    @property
    def worst(self) -> LayerTrend | None:
        """The group whose trend exceeds its bound by the largest factor, if any does."""
        return worst(
            self.groups, grows=lambda g: g.toward_input == "grows", max_growth=self.max_growth,
            max_decay=self.max_decay, min_rate=MIN_RATE,
        )  # fmt: skip

    @property
    def passed(self) -> bool:
        return self.worst is None


@contextlib.contextmanager
def _error_signals(model: torch.nn.Module) -> Iterator[dict[str, list[Any]]]:
    """Record, per module owning a weight of dim >= 2, the forward order of its first call and
    the sum of squares and count of ∂loss/∂output over all its calls."""
    found: dict[str, list[Any]] = {}  # name -> [order, sum of squares, count, output shape]

    def hook(name: str) -> Any:
        def on_output(_: torch.nn.Module, args: Any, out: Any) -> None:
            t = out if isinstance(out, torch.Tensor) else None
            if t is None or not t.requires_grad or not t.is_floating_point():
                return
            entry = found.setdefault(name, [len(found), 0.0, 0, tuple(t.shape[1:])])

            def on_grad(g: torch.Tensor) -> None:
                entry[1] += float(g.detach().double().square().sum())
                entry[2] += g.numel()

            t.register_hook(on_grad)

        return on_output

    handles = [
        m.register_forward_hook(hook(n))
        for n, m in model.named_modules()
        if owns_weight(m) and any(p.requires_grad for p in m.parameters(recurse=False))
    ]
    try:
        yield found
    finally:
        for h in handles:
            h.remove()


def measure_gradient_ratio(
    model: torch.nn.Module,
    batch: Any,
    loss_fn: LossFn | None = None,
    *,
    max_growth: float = MAX_GROWTH,
    max_decay: float = MAX_DECAY,
    unpack: bool | None = None,
    seed: int = 0,
) -> GradientRatioResult:
    """Measure the depth trend of the error signal in every group of repeated layers."""
    max_growth = check_number(max_growth, "max_growth", low=1, what="a number >= 1")
    max_decay = check_number(max_decay, "max_decay", low=1, what="a number >= 1")
    h = Harness(model, batch, loss_fn, seed=seed, unpack=unpack)
    with h.isolated(), _error_signals(h.model) as found:
        loss = h.backward()
    values, silent = [], []
    for name, (_, sq, count, shape) in sorted(found.items(), key=lambda kv: kv[1][0]):
        if count == 0:
            continue  # its output never reached the loss
        if sq == 0:
            silent.append(name)
            continue
        values.append((name, shape, math.sqrt(sq / count)))
    trends = []
    for pattern, members in repeated(values, dict(h.model.named_modules())):
        rms = [v for _, v in members]
        total, slope = trend(rms)
        trends.append(
            LayerTrend(
                pattern=pattern,
                layers=tuple(n for n, _ in members),
                error_rms=tuple(rms),
                trend=total,
                rate=math.exp(abs(slope)),
                toward_input="shrinks" if slope > 0 else "grows",
            )
        )
    trends.sort(key=lambda g: g.trend, reverse=True)
    r = GradientRatioResult(
        seed=h.seed,
        max_growth=max_growth,
        max_decay=max_decay,
        groups=tuple(trends),
        silent=tuple(silent),
        loss=loss,
    )
    return diagnosed(r, _diagnose)


def assert_gradient_ratio(
    model: torch.nn.Module,
    batch: Any,
    loss_fn: LossFn | None = None,
    *,
    max_growth: float = MAX_GROWTH,
    max_decay: float = MAX_DECAY,
    unpack: bool | None = None,
    seed: int = 0,
    msg: Msg = None,
) -> GradientRatioResult:
    """Check that the error signal neither vanishes nor explodes with depth.

    One forward and backward in train mode records, for every module that owns a weight matrix
    (Linear, Conv, Embedding, attention projections), the RMS of the gradient of the loss with
    respect to its output: Nielsen's δ, the error signal the layer learns from. Layers are then
    grouped with like: the same type, weight shape, output shape and name up to block numbers
    (``blocks.3.attn.qkv`` with ``blocks.4.attn.qkv``), in forward order. Along each group of
    two or more, the least-squares trend of log δ gives a total change and a change per layer.
    Fails when a trend compounding by at least 1.3x per layer shrinks toward the input by more
    than ``max_decay`` (vanishing) or grows toward it by more than ``max_growth`` (exploding).

    The bounds are asymmetric because residual networks legitimately accumulate gradient toward
    the input: on the healthy zoo the largest growth is 11x within a ResNet-50 stage and 5-6x over
    12 transformer blocks (ViT, Llama), the largest decay 1.16x (VGG-11). Planted bugs: a 10-layer
    sigmoid net with N(0, 1) weights decays 34x, Nielsen's four hidden layers 23-43x (seeds 0-4),
    a ReLU net at 3x He scale grows 6,600x, a 20-layer tanh net at 4x scale 1,100x.

    Proves: at the current weights, on this batch, no group of repeated layers passes its error
    signal on with a compounding loss or gain. Does not prove: the trend stays healthy during
    training (use ``GradientMonitor``), nor anything about a network without repeated layers
    (``groups`` is then empty); layers whose error signal is exactly zero are left out and listed
    in ``silent`` (:func:`nnsanity.assert_params_update` judges those).

    Raises ``SanityError`` when the check fails, ``TypeError``/``ValueError`` on misuse.
    """
    __tracebackhide__ = True
    r = measure_gradient_ratio(
        model, batch, loss_fn, max_growth=max_growth, max_decay=max_decay, unpack=unpack,
        seed=seed,
    )  # fmt: skip
    if not r.passed:
        fail(_explain(r), r, msg)
    return r


def _diagnose(r: GradientRatioResult) -> list[Cause]:
    g = r.worst
    assert g is not None
    evidence = (f"{g.rate:.3g}x per layer along '{g.pattern}'",)
    if g.toward_input == "shrinks":
        return [
            cause("saturating_activations", "saturating activations (sigmoid, tanh) stacked "
                  "deep: use ReLU-family activations with He (kaiming) init", CONSISTENT,
                  evidence=evidence, where=g.layers[0]),
            cause("init_too_small", "weights initialised too small: use 1/sqrt(fan_in) scaling "
                  "(He or Glorot)"),
            cause("deep_plain_stack", "a deep plain stack: add normalisation (BatchNorm, "
                  "LayerNorm) or residual connections"),
        ]  # fmt: skip
    return [
        cause("init_too_large", "weights initialised too large: check the init scale "
              "(1/sqrt(fan_in), He or Glorot); the activations grow layer by layer too",
              CONSISTENT, evidence=evidence, where=g.layers[0]),
        cause("deep_plain_stack", "a deep plain stack: add normalisation or residual connections"),
        cause("lr_too_high", "once training, a learning rate too high: lower it or clip "
              "gradients (torch.nn.utils.clip_grad_norm_)"),
    ]  # fmt: skip


def _explain(r: GradientRatioResult) -> Explanation:
    g = r.worst
    assert g is not None
    vanishing = g.toward_input == "shrinks"
    bound = r.max_decay if vanishing else r.max_growth
    first, last = g.layers[0], g.layers[-1]
    lines = [
        f"Error signal {g.toward_input} toward the input along '{g.pattern}' ({len(g.layers)} "
        f"layers): " + up_to(f"{g.trend:.3g}x", f"{bound:g}x"),
        f"Per layer: {g.rate:.3g}x; from '{first}' (RMS {g.error_rms[0]:.3g}, nearest the input) "
        f"to '{last}' (RMS {g.error_rms[-1]:.3g})",
    ]
    if vanishing:
        return Explanation(
            header="Gradients vanish toward the input!",
            lines=lines,
            relax="max_decay= (larger).",
        )
    return Explanation(
        header="Gradients explode toward the input!",
        lines=lines,
        relax="max_growth= (larger).",
    )
