"""The update-to-weight ratio: how far one optimisation step moves each weight matrix.

CS231n (Karpathy, "Neural Networks Part 3: Learning and Evaluation", ratio of weights:updates):
track ||lr x update|| / ||W|| per layer; "a rough heuristic is that this ratio should be
somewhere around 1e-3. If this is lower than the learning rate might be too low. If it's higher
then the learning rate is likely too high." The check takes one step with the user's optimizer
(default Adam 3e-4) or the user's ``step(batch) -> loss`` and judges the largest ratio. Adam's
first step moves every weight with a non-zero gradient by exactly lr (its bias-corrected m / sqrt(v)
is the gradient's sign), so there the ratio is lr / RMS(W): the learning rate against the scale
the layer was initialised at.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from nnsanity._arguments import (
    SAFE_LR,
    LossFn,
    OptimizerFactory,
    Step,
    StepFactory,
    check_number,
    resolve_step,
)
from nnsanity._diagnosis import CONSISTENT, GENERIC, Cause
from nnsanity._forensics import StepForensics
from nnsanity._harness import Harness
from nnsanity._messages import Explanation, Msg, fail, names, up_to
from nnsanity._result import CheckResult, diagnosed

# CS231n's rule of thumb for a healthy ratio.
RULE_OF_THUMB = 1e-3
# The default bound is 100 times the rule of thumb. With Adam 3e-4 the healthy zoo's largest
# ratio is 0.031 (GPT-2's residual projections at std 0.02 / sqrt(2 n_layer), MobileNetV3's
# classifier at std 0.01), its median 0-0.015; at 100x that learning rate (3e-2) the largest
# ratio of every zoo model is 0.29-3.1. 0.1 sits in between with a factor of ~3 on each side.
MAX_RATIO = 0.1
# A weight matrix whose RMS starts below NEAR_ZERO / sqrt(fan_in), a hundredth of the
# 1/sqrt(fan_in) scale of LeCun/Glorot/He inits, grows from (near) zero like a bias: its relative
# change says nothing about the learning rate (a zero-initialised LoRA B, a token at std 1e-6).
# Small inits in use stay above it: GPT-2's residual projections at 0.02 / sqrt(2 n_layer) are
# 0.08-0.23 / sqrt(fan_in), MobileNetV3's classifier at 0.01 is 0.32 / sqrt(fan_in). (fan_in is
# numel / shape[0], PyTorch's layout; for a transposed layout it is the fan-out.)
NEAR_ZERO = 0.01


@dataclass(frozen=True, kw_only=True)
class LayerUpdate:
    """One weight matrix's step."""

    name: str  # the parameter's name
    ratio: float  # ||W_after - W_before|| / ||W_before|| (Frobenius norms)
    weight_rms: float  # RMS of W before the step
    update_rms: float  # RMS of W_after - W_before


@dataclass(frozen=True, kw_only=True)
class UpdateRatioResult(CheckResult):
    """The update-to-weight ratio of every judged weight matrix after one step."""

    max_ratio: float  # the bound on every layer's ratio
    loss: float  # the loss the step saw (before its update)
    layers: tuple[LayerUpdate, ...]  # every judged weight matrix, in the model's order
    near_zero: tuple[str, ...]  # matrices starting at or near zero: not judged
    forensics: StepForensics | None = None  # what the user's step did to the optimizer
    optimizer: str | None = None  # the optimizer's class (the default's, or the user's step's)

    @property
    def too_large(self) -> tuple[LayerUpdate, ...]:
        """The layers whose ratio exceeds the bound (or is not finite), largest first."""
        over = [u for u in self.layers if not u.ratio <= self.max_ratio]
        return tuple(sorted(over, key=lambda u: -u.ratio if math.isfinite(u.ratio) else -math.inf))

    @property
    def median(self) -> float:
        """The median ratio over the judged layers (NaN without any)."""
        ratios = sorted(u.ratio for u in self.layers)
        return ratios[len(ratios) // 2] if ratios else math.nan

    @property
    def median_weight_rms(self) -> float:
        """The median weight RMS over the judged layers (NaN without any)."""
        values = sorted(u.weight_rms for u in self.layers)
        return values[len(values) // 2] if values else math.nan

    @property
    def passed(self) -> bool:
        return not self.too_large


def _judged(p: torch.nn.Parameter) -> bool:
    """A weight matrix: trainable, of dim >= 2 (biases and norm gains are vectors)."""
    return p.requires_grad and p.dim() >= 2


def _near_zero(w: torch.Tensor) -> bool:
    fan_in = w.numel() // w.shape[0]
    rms = float(w.double().square().mean().sqrt())
    return rms < NEAR_ZERO / math.sqrt(fan_in)


def measure_update_ratio(
    model: torch.nn.Module,
    batch: Any,
    loss_fn: LossFn | None = None,
    *,
    optimizer: OptimizerFactory | None = None,
    step: Step | None = None,
    step_factory: StepFactory | None = None,
    max_ratio: float = MAX_RATIO,
    unpack: bool | None = None,
    seed: int = 0,
) -> UpdateRatioResult:
    """Take one optimisation step and measure each weight matrix's update-to-weight ratio."""
    max_ratio = check_number(max_ratio, "max_ratio", low=0, low_open=True, what="a number > 0")
    step = resolve_step(model, optimizer, step, step_factory)
    h = Harness(
        model, batch, loss_fn, seed=seed, optimizer=optimizer, step=step, unpack=unpack,
        default_lr=SAFE_LR,
    )  # fmt: skip
    with h.isolated():
        weights = {n: p for n, p in h.model.named_parameters() if _judged(p)}
        near_zero = tuple(n for n, p in weights.items() if _near_zero(p.detach()))
        before = {n: p.detach().clone() for n, p in weights.items() if n not in near_zero}
        loss = h.stepper()()
        layers = []
        for n, w0 in before.items():
            w0 = w0.double()
            delta = weights[n].detach().double() - w0
            norm = float(w0.norm())
            change = float(delta.norm())
            layers.append(
                LayerUpdate(
                    name=n,
                    ratio=change / norm if math.isfinite(change) else math.inf,
                    weight_rms=norm / math.sqrt(w0.numel()),
                    update_rms=change / math.sqrt(w0.numel()),
                )
            )
        forensics = h.forensics()
    r = UpdateRatioResult(
        seed=h.seed, max_ratio=max_ratio, loss=loss, layers=tuple(layers), near_zero=near_zero,
        forensics=forensics,
        optimizer=forensics.optimizers[0] if forensics and forensics.optimizers else
        None if step is not None else type(h.last_optimizer).__name__ if h.last_optimizer else None,
    )  # fmt: skip
    return diagnosed(r, _diagnose)


def assert_update_ratio(
    model: torch.nn.Module,
    batch: Any,
    loss_fn: LossFn | None = None,
    *,
    optimizer: OptimizerFactory | None = None,
    step: Step | None = None,
    step_factory: StepFactory | None = None,
    max_ratio: float = MAX_RATIO,
    unpack: bool | None = None,
    seed: int = 0,
    msg: Msg = None,
) -> UpdateRatioResult:
    """Check that one optimisation step moves no weight matrix by more than ``max_ratio`` of
    its norm.

    One step of ``optimizer`` (default Adam 3e-4) or of your ``step(batch) -> loss`` on the
    batch; for every trainable weight matrix (dim >= 2: Linear, Conv, Embedding, LSTM and
    attention weights, position tables; not biases or norm gains) the
    ratio ||W_after - W_before|| / ||W_before|| must be at most ``max_ratio``. Matrices that start
    at or near zero (RMS below a hundredth of 1/sqrt(fan_in)) are listed in ``near_zero`` and not
    judged: their relative change is unbounded whatever the learning rate.

    The rule is CS231n's update-to-weight ratio of about 1e-3; the bound, 0.1, is 100 times it:
    a step that moves a layer by a tenth of its norm replaces its initialisation within about
    ten steps in the same direction (Adam's early steps mostly are). Calibrated on the healthy zoo
    (GPT-2, Llama, BERT, T5, ResNet-18, MobileNetV3, ViT-Tiny, LSTM, CNNs, MLPs): with Adam 3e-4
    the largest ratio is 0.031, with the learning rate 100x higher (3e-2) it is 0.29-3.1 on every
    model. Under Adam the first step's ratio is lr / RMS(W), so layers initialised small need a
    small learning rate or a warm-up: AdamW 1e-3 without warm-up gives GPT-2's residual
    projections (std 0.01 in the zoo's 2-layer config) a ratio of 0.10, at the bound.

    Proves: on this batch, the step's size is sane against every judged weight's scale. Does not
    prove: later steps stay sane (a momentum optimizer's steps grow over the first ~1/(1 - beta)
    steps; SGD's first step is lr x gradient), nor that the learning rate is not too low (see
    :func:`nnsanity.assert_loss_decreases`).

    ``step_factory(model) -> step`` builds your step afresh for this check (with its own
    optimizer: no state carried over from another check); pass it or ``step``, not both.

    Raises ``SanityError`` when the check fails, ``TypeError``/``ValueError`` on misuse.
    """
    __tracebackhide__ = True
    r = measure_update_ratio(
        model, batch, loss_fn, optimizer=optimizer, step=step,
        step_factory=step_factory, max_ratio=max_ratio,
        unpack=unpack, seed=seed,
    )  # fmt: skip
    if not r.passed:
        fail(_explain(r), r, msg)
    return r


def _diagnose(r: UpdateRatioResult) -> list[Cause]:
    over = r.too_large
    w = over[0]
    if not math.isfinite(w.ratio):
        return [
            Cause(id="lr_far_too_high", summary="a learning rate far too high",
                  remedy="lower it 10x or more", where=w.name, support=CONSISTENT),
            Cause(id="nonfinite_gradients", summary="NaN/Inf gradients",
                  remedy="run nnsanity.assert_finite"),
        ]  # fmt: skip
    lower = w.ratio / r.max_ratio
    adam = r.optimizer is None or "Adam" in r.optimizer
    small = w.weight_rms < 0.1 * r.median_weight_rms if r.median_weight_rms else False
    return [
        Cause(id="lr_too_high", summary="the learning rate is too high",
              remedy=f"lower it at least {lower:.2g}x, or warm it up from a small value over "
              "the first hundreds of steps", where=w.name,
              evidence=(f"{len(over)} of {len(r.layers)} weight matrices above the bound",),
              support=CONSISTENT if len(over) > 1 else GENERIC),
        Cause(id="small_init_under_adam", summary="Adam/AdamW moves every weight by about lr in "
              f"its first steps whatever the gradient: a layer initialised small (RMS "
              f"{w.weight_rms:.2g} here)", remedy=f"lr well below {r.max_ratio:g} x its RMS, a "
              "warm-up, or a smaller lr of its own (a param group)", where=w.name,
              support=CONSISTENT if adam and small else GENERIC),
        Cause(id="gradient_too_large", summary="(SGD) gradients too large: a loss summed over "
              "the batch (reduction='sum') instead of averaged, or no clipping",
              remedy="average the loss, or clip (torch.nn.utils.clip_grad_norm_)", where=w.name,
              support=GENERIC if adam else CONSISTENT),
    ]  # fmt: skip


def _explain(r: UpdateRatioResult) -> Explanation:
    over = r.too_large
    w = over[0]
    if not math.isfinite(w.ratio):
        return Explanation(
            header="The step made weights NaN/Inf!",
            lines=[f"Weights not finite after one step: {names([u.name for u in over])}"],
        )
    return Explanation(
        header="One step moves the weights too far!",
        lines=[
            f"Update-to-weight ratio of '{w.name}': "
            + up_to(f"{w.ratio:.3g}", f"{r.max_ratio:g}")
            + f"; weight RMS {w.weight_rms:.3g}, update RMS {w.update_rms:.3g}",
            f"Above the bound: {len(over)} of {len(r.layers)} weight matrices "
            f"({names([u.name for u in over], 3)}); median ratio {r.median:.3g} "
            f"(CS231n's rule of thumb: about {RULE_OF_THUMB:g})",
        ],
        relax="max_ratio= (larger).",
    )
