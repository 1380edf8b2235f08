"""Exploding and vanishing forward signals: a depth trend of the activations across repeated layers.

A healthy initialisation keeps the scale of the forward signal about constant with depth: He
et al. (2015, sec. 2.2) choose Var(w) = 2 / fan_in so that each ReLU layer passes on the second
moment of its input unchanged, Glorot & Bengio (2010) 1 / fan_in for tanh. Weights c times too
large multiply the signal by about c per layer (a ReLU net at 3x He scale grows 2.9x per
layer, 4,500x over 9 repeated layers); an exponential activation compounds faster still, until
it overflows. The same factor below one shrinks it toward zero. The forward counterpart of
``gradient_ratio``: the RMS of each weight layer's output, compared like with like along
repeated layers (see ``nnsanity._depth``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch

from nnsanity._arguments import check_number
from nnsanity._depth import owns_weight, repeated, trend, worst
from nnsanity._diagnosis import CONSISTENT, Cause, cause
from nnsanity._harness import Harness
from nnsanity._messages import Explanation, Msg, fail, up_to
from nnsanity._result import CheckResult, diagnosed

# A trend counts only when it compounds by at least this factor per layer: on the healthy zoo
# the repeated layers' outputs change by 1.00-1.4x per layer (MobileNetV3's two-layer groups
# 1.4x, GPT-2, Llama, BERT, T5 and ViT-Tiny blocks 1.00-1.23x, ResNet stages up to 1.2x), and a
# deep ReLU MLP at PyTorch's default init shrinks 1.02-1.1x per layer until its biases hold the
# scale, while a 3x-He ReLU net grows 2.9x and a 1/3-He one shrinks 3.1x per layer.
MIN_RATE = 1.5


@dataclass(frozen=True, kw_only=True)
class ActivationTrend:
    """The forward signal along one group of repeated layers, in forward order."""

    pattern: str  # the layers' names with block numbers as '*', e.g. 'blocks.*.mlp.fc1'
    layers: tuple[str, ...]
    rms: tuple[float, ...]  # RMS of each layer's output over the batch
    trend: float  # exp(|slope| x (n - 1)) of log rms on position: the total change
    rate: float  # exp(|slope|): the change per layer
    direction: Literal["grows", "shrinks"]  # with depth, away from the input


@dataclass(frozen=True, kw_only=True)
class ActivationGrowthResult(CheckResult):
    """The depth trends of the forward signal in every group of repeated layers."""

    max_growth: float  # bound on a trend that grows with depth (exploding)
    max_decay: float  # bound on a trend that shrinks with depth (vanishing)
    groups: tuple[ActivationTrend, ...]  # groups of at least two repeated layers, worst first
    overflow: str | None  # the first weight layer (in forward order) whose output held NaN/Inf
    last_finite: tuple[tuple[str, float], ...]  # the RMS of the layers that ran before it

    @property
    def worst(self) -> ActivationTrend | None:
        """The group whose trend exceeds its bound by the largest factor, if any does."""
        return worst(
            self.groups, grows=lambda g: g.direction == "grows", max_growth=self.max_growth,
            max_decay=self.max_decay, min_rate=MIN_RATE,
        )  # fmt: skip

    @property
    def passed(self) -> bool:
        return self.overflow is None and self.worst is None


@contextlib.contextmanager
def _outputs(model: torch.nn.Module) -> Iterator[dict[str, list[Any]]]:
    """Record, per module owning a weight of dim >= 2, the forward order of its first call, the
    sum of squares, count and non-finite count of its outputs over all calls, and their shape."""
    found: dict[str, list[Any]] = {}  # name -> [order, sum of squares, count, bad, shape]

    def hook(name: str) -> Any:
        def on_output(_: torch.nn.Module, args: Any, out: Any) -> None:
            if not isinstance(out, torch.Tensor) or not out.is_floating_point():
                return
            entry = found.setdefault(name, [len(found), 0.0, 0, 0, tuple(out.shape[1:])])
            t = out.detach().double()
            entry[1] += float(t.square().sum())
            entry[2] += t.numel()
            entry[3] += int((~torch.isfinite(t)).sum())

        return on_output

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if owns_weight(m)]
    try:
        yield found
    finally:
        for h in handles:
            h.remove()


def measure_activation_growth(
    model: torch.nn.Module,
    batch: Any,
    *,
    max_growth: float = 10.0,
    max_decay: float = 10.0,
    unpack: bool | None = None,
    seed: int = 0,
) -> ActivationGrowthResult:
    """Measure the depth trend of the forward signal in every group of repeated layers."""
    max_growth = check_number(max_growth, "max_growth", low=1, what="a number >= 1")
    max_decay = check_number(max_decay, "max_decay", low=1, what="a number >= 1")
    h = Harness(model, batch, seed=seed, unpack=unpack, needs_loss=False)
    with h.isolated(), _outputs(h.model) as found, torch.no_grad():
        h.forward()
    ordered = sorted(found.items(), key=lambda kv: kv[1][0])
    overflow = next((name for name, e in ordered if e[3]), None)
    values = [(name, e[4], math.sqrt(e[1] / e[2])) for name, e in ordered if e[2]]
    modules = dict(h.model.named_modules())
    trends = []
    for pattern, members in repeated(values, modules):
        rms = [v for _, v in members]
        if not all(math.isfinite(v) and v > 0 for v in rms):
            continue  # an overflow (reported as such) or a layer whose output is all zeros
        total, slope = trend(rms)
        trends.append(
            ActivationTrend(
                pattern=pattern,
                layers=tuple(n for n, _ in members),
                rms=tuple(rms),
                trend=total,
                rate=math.exp(abs(slope)),
                direction="grows" if slope > 0 else "shrinks",
            )
        )
    trends.sort(key=lambda g: g.trend, reverse=True)
    last: tuple[tuple[str, float], ...] = ()
    if overflow is not None:
        i = [n for n, _, _ in values].index(overflow)
        last = tuple((n, v) for n, _, v in values[max(0, i - 3) : i])
    r = ActivationGrowthResult(
        seed=h.seed,
        max_growth=max_growth,
        max_decay=max_decay,
        groups=tuple(trends),
        overflow=overflow,
        last_finite=last,
    )
    return diagnosed(r, _diagnose)


def assert_activation_growth(
    model: torch.nn.Module,
    batch: Any,
    *,
    max_growth: float = 10.0,
    max_decay: float = 10.0,
    unpack: bool | None = None,
    seed: int = 0,
    msg: Msg = None,
) -> ActivationGrowthResult:
    """Check that the forward signal neither explodes nor vanishes with depth.

    One forward pass in train mode (no gradients) records, for every module that owns a weight
    matrix (Linear, Conv, attention projections), the RMS of its output over the batch. Layers are
    grouped like with like: the same type, weight shape, output shape and name up to block
    numbers, in forward order (``nnsanity._depth``, the rule of ``assert_gradient_ratio``). Along
    each group of two or more the least-squares trend of log RMS gives a total change and a change
    per layer. Fails when a trend compounding by at least 1.5x per layer grows with depth by more
    than ``max_growth`` (exploding) or shrinks by more than ``max_decay`` (vanishing), and when a
    layer's output holds NaN/Inf (the signal overflowed, as under an exponential activation).

    Source: He et al. 2015 ("Delving deep into rectifiers", sec. 2.2) and Glorot & Bengio 2010: an
    initialisation keeps the signal's second moment constant through depth; a scale c off that
    gives a factor of about c per layer. The bounds: an order of magnitude over a group, which a
    healthy stack does not approach (on the healthy zoo the largest total change is 1.73x, a
    ResNet-18 stage; GPT-2, Llama, BERT, T5, ViT-Tiny, MobileNetV3 stay within 1.4x), while a
    10-layer ReLU net at 3x He scale grows 4,500x and one at 1/3 He scale shrinks 9,600x. A
    group of 2-3 layers grows less than 10x even at 3x He scale, so short stacks pass.

    Proves: at the current weights, on this batch, no group of repeated layers compounds the
    forward signal up or down. Does not prove: the trend stays healthy during training, anything
    about a network without repeated layers (``groups`` is then empty), or that the residual
    stream (which no weight layer outputs) is healthy.

    Raises ``SanityError`` when the check fails, ``TypeError``/``ValueError`` on misuse.
    """
    __tracebackhide__ = True
    r = measure_activation_growth(
        model, batch, max_growth=max_growth, max_decay=max_decay, unpack=unpack, seed=seed
    )
    if not r.passed:
        fail(_explain(r), r, msg)
    return r


_TOO_LARGE = (
    "weights initialised too large: scale them by 1/sqrt(fan_in) (He for ReLU, Glorot for "
    "tanh); a constant std such as N(0, 1) grows the signal by sqrt(fan_in) x per layer"
)
_EXP = (
    "an unbounded activation that compounds (exp, x**2, softplus of large inputs): use a ReLU-"
    "family or bounded activation, or normalise (LayerNorm/BatchNorm) before it"
)


def _diagnose(r: ActivationGrowthResult) -> list[Cause]:
    if r.overflow is not None:
        return [
            cause("unbounded_activation", _EXP, where=r.overflow),
            cause("init_too_large", _TOO_LARGE, where=r.overflow),
            cause("input_scale", "inputs far from unit scale: run nnsanity.assert_input_scale"),
            cause("nonfinite_parameter", "a NaN/Inf parameter: run nnsanity.assert_finite"),
        ]
    g = r.worst
    assert g is not None
    evidence = (f"{g.rate:.3g}x per layer along '{g.pattern}'",)
    if g.direction == "grows":
        return [
            cause("init_too_large", _TOO_LARGE, CONSISTENT, evidence=evidence, where=g.layers[0]),
            cause("unbounded_activation", _EXP),
            cause("deep_plain_stack", "a deep plain stack: add normalisation (LayerNorm, "
                  "BatchNorm) or residual connections with a scaled-down branch"),
        ]  # fmt: skip
    return [
        cause("init_too_small", "weights initialised too small: use He init (kaiming_normal_) "
              "for ReLU layers and Glorot (xavier_normal_) for tanh, not a small constant std",
              CONSISTENT, evidence=evidence, where=g.layers[0]),
        cause("saturating_activations", "saturating or contracting activations stacked deep: "
              "use ReLU-family activations"),
        cause("deep_plain_stack", "a deep plain stack: add normalisation or residual "
              "connections"),
    ]  # fmt: skip


def _explain(r: ActivationGrowthResult) -> Explanation:
    if r.overflow is not None:
        ran = ", ".join(f"'{n}' {v:.3g}" for n, v in r.last_finite) or "none"
        return Explanation(
            header="Activations overflow!",
            lines=[
                f"First layer whose output holds NaN/Inf: '{r.overflow}'",
                f"RMS of the layers before it: {ran}",
            ],
        )
    g = r.worst
    assert g is not None
    growing = g.direction == "grows"
    bound = r.max_growth if growing else r.max_decay
    lines = [
        f"Activations {g.direction[:-1]} with depth along '{g.pattern}' ({len(g.layers)} layers): "
        + up_to(f"{g.trend:.3g}x", f"{bound:g}x"),
        f"Per layer: {g.rate:.3g}x; from '{g.layers[0]}' (RMS {g.rms[0]:.3g}, nearest the input) "
        f"to '{g.layers[-1]}' (RMS {g.rms[-1]:.3g})",
    ]
    if growing:
        return Explanation(
            header="Activations explode with depth!",
            lines=lines,
            relax="max_growth= (larger).",
        )
    return Explanation(
        header="Activations vanish with depth!",
        lines=lines,
        relax="max_decay= (larger).",
    )
