"""Vanishing and exploding gradients: the spread of per-layer gradient sizes at one step.

Nielsen (ch. 5) measures a layer's "speed of learning" as the norm of its gradient; deep
sigmoid nets show early layers learning ~100 times slower than late ones (vanishing gradients),
and large weights make the product of per-layer factors blow up (exploding gradients).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch

from nnsanity._arguments import LossFn, check_number
from nnsanity._harness import Harness
from nnsanity._messages import Explanation, Msg, fail, up_to
from nnsanity._result import CheckResult
from nnsanity.gradient_norms import gradient_stats


@dataclass(frozen=True, kw_only=True)
class GradientRatioResult(CheckResult):
    """RMS of the weight gradient of each weight-matrix layer, and their spread."""

    max_ratio: float  # the bound on ``ratio``
    layers: tuple[str, ...]  # registration order: the first is nearest the input, usually
    rms: tuple[float, ...]
    ratio: float  # largest / smallest (inf if a layer's gradient is exactly zero)
    first_last_ratio: float  # first / last: > 1 when gradients grow toward the input
    largest: str
    smallest: str
    loss: float

    @property
    def passed(self) -> bool:
        return self.ratio <= self.max_ratio

    @property
    def direction(self) -> Literal["vanishing", "exploding"]:
        """Vanishing when the smallest gradient sits before the largest in the network."""
        small, large = self.layers.index(self.smallest), self.layers.index(self.largest)
        return "vanishing" if small < large else "exploding"


def measure_gradient_ratio(
    model: torch.nn.Module,
    batch: Any,
    loss_fn: LossFn | None = None,
    *,
    max_ratio: float = 100.0,
    unpack: bool | None = None,
    seed: int = 0,
) -> GradientRatioResult:
    """Measure the spread of per-layer gradient RMS at the current weights (see the assert)."""
    max_ratio = check_number(max_ratio, "max_ratio", low=1, what="a number >= 1")
    h = Harness(model, batch, loss_fn, seed=seed, unpack=unpack)
    with h.isolated():
        loss = h.backward()
        stats = gradient_stats(h.model)
    layers = [(n, s.matrix_rms) for n, s in stats.items() if s.matrix_rms is not None]
    if not layers:
        raise ValueError(
            f"{type(model).__name__} has no trainable weight matrix (a parameter of "
            "dim >= 2, as in Linear, Conv or Embedding) to compare."
        )
    names = [n for n, _ in layers]
    rms = [float(v) for _, v in layers]
    largest, smallest = names[rms.index(max(rms))], names[rms.index(min(rms))]

    def ratio(a: float, b: float) -> float:
        return a / b if b > 0 else math.inf  # all-zero gradients fail too

    return GradientRatioResult(
        seed=h.seed,
        max_ratio=max_ratio,
        layers=tuple(names),
        rms=tuple(rms),
        ratio=ratio(max(rms), min(rms)),
        first_last_ratio=ratio(rms[0], rms[-1]),
        largest=largest,
        smallest=smallest,
        loss=loss,
    )


def assert_gradient_ratio(
    model: torch.nn.Module,
    batch: Any,
    loss_fn: LossFn | None = None,
    *,
    max_ratio: float = 100.0,
    unpack: bool | None = None,
    seed: int = 0,
    msg: Msg = None,
) -> GradientRatioResult:
    """Check that no layer's gradient is over ``max_ratio`` times smaller than another's.

    Compares the RMS of the weight gradient of every layer owning a weight of dim >= 2 (Linear,
    Conv, Embedding over the rows in the batch, attention projections, RNN matrices). Norm
    layers' gains are left out: their gradient scale is set by the normalisation, not by depth.
    Weights rather than biases (Nielsen's measure, in ``layer_gradient_norms``), because every
    such layer has one, while a conv bias before BatchNorm gets exactly zero gradient.

    The default of 100 is Nielsen's "about 100 times slower". Measured over 10 seeds, the test
    zoo's healthy models spread 1.4-2.8 (MLP, CNN), 7-11 (Nielsen's [784, 30, 10]) and 16-19 (a
    transformer LM, whose head dominates); 10 sigmoid layers with N(0, 1) weights 216-838,
    Nielsen's four hidden layers 890-2250, 20 tanh layers with 4x too large weights 1400-5400.

    Proves: one backward pass at the current weights has no vanishing or exploding spread.
    Does not prove: the spread stays healthy during training (use ``GradientMonitor``), or that
    all layers are not off by one common factor. In ReLU or linear nets a bad init scale shows
    in the activations more than here: error signals shrink toward the input as activations
    grow toward the output, and their product, the weight gradient, stays level.

    Raises ``SanityError`` when the check fails, ``TypeError``/``ValueError`` on misuse.
    """
    __tracebackhide__ = True
    r = measure_gradient_ratio(model, batch, loss_fn, max_ratio=max_ratio, unpack=unpack, seed=seed)
    if not r.passed:
        fail(_explain(r), r, seed=r.seed, msg=msg)
    return r


def _explain(r: GradientRatioResult) -> Explanation:
    rms = dict(zip(r.layers, r.rms, strict=True))
    small, large = r.smallest, r.largest
    lines = [
        "Largest / smallest gradient RMS: " + up_to(f"{r.ratio:.3g}", f"{r.max_ratio:g}"),
        f"Smallest: layer '{small}' {rms[small]:.3g}; largest: layer '{large}' {rms[large]:.3g}",
        f"First / last layer: {r.first_last_ratio:.3g}",
    ]
    relax = f"max_ratio= above {r.ratio:.3g}."
    if rms[small] == 0:
        return Explanation(
            header=f"Layer '{small}' gets an exactly zero gradient"
            + (" (so does every layer)!" if rms[large] == 0 else "!"),
            lines=lines,
            causes=[
                "it is cut from the loss (.detach(), no_grad, unused) or its units are dead: "
                "run nnsanity.assert_params_update to find which parameters",
                "a zero-initialised layer downstream blocks the gradient: initialise it randomly",
            ],
            relax=relax,
        )
    if r.direction == "vanishing":
        return Explanation(
            header="Gradients vanish toward the input!",
            lines=lines,
            causes=[
                "saturating activations (sigmoid, tanh) stacked deep: use ReLU-family activations "
                "with He (kaiming) init",
                "weights initialised too small: use 1/sqrt(fan_in) scaling",
                "a deep plain stack: add normalisation (BatchNorm, LayerNorm) or residual "
                "connections",
            ],
            relax=relax,
        )
    return Explanation(
        header="Gradients explode toward the input!",
        lines=lines,
        causes=[
            "weights initialised too large: check the init scale (1/sqrt(fan_in), He or Glorot)",
            "once training, a learning rate too high: lower it or clip gradients "
            "(torch.nn.utils.clip_grad_norm_)",
            "a deep plain stack: add normalisation or residual connections",
        ],
        relax=relax,
    )
