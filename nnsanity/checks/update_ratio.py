"""The update-to-weight ratio: how far one optimisation step moves each weight matrix.

CS231n (Karpathy, "Neural Networks Part 3: Learning and Evaluation", ratio of weights:updates):
track ||lr x update|| / ||W|| per layer; "a rough heuristic is that this ratio should be
somewhere around 1e-3. If this is lower than the learning rate might be too low. If it's higher
then the learning rate is likely too high." The check takes one step with the user's optimizer
(default Adam 3e-4) or the user's ``step(batch) -> loss`` and judges the largest ratio. Adam's
first step moves every weight with a non-zero gradient by exactly lr (its bias-corrected m / sqrt(v)
is the gradient's sign), so there the ratio is lr / RMS(W): the learning rate against the scale
the layer was initialised at.

Adadelta (Zeiler 2012) does the same: its step is lr x sqrt(E[dx^2] + eps) / sqrt(E[g^2] + eps)
x g, and at the first step E[dx^2] = 0 and E[g^2] = (1 - rho) g^2, so every weight whose
gradient is well above sqrt(eps / (1 - rho)) = 3.2e-3 moves by lr x sqrt(eps / (1 - rho)) =
3.2e-3 at lr 1.0 (rho 0.9, eps 1e-6), whatever the gradient's scale; E[dx^2] then grows with the
steps, so the size holds for tens of steps. On a 9216-input layer at PyTorch's default init (RMS
1 / sqrt(3 x 9216) = 0.006), pytorch/examples' MNIST recipe moves 17-20% of its norm per step,
and trains to 99%. One step's ratio cannot tell that from a learning rate 100x too high on a
small layer (0.29 on a 20-32-10 MLP), so a layer over the bound is judged by what the bound
stands for: ``RUN_STEPS`` steps must not move it farther than ``RUN_STEPS x max_ratio`` (its own
norm at the default): a first step that overshoots and is not followed by more in the same
direction is how sign-like optimizers start, not a learning rate too high.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
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
# Steps of the run that judges a layer over the one-step bound: the "about ten steps in the same
# direction" in which a step of max_ratio replaces the initialisation. The farthest fc1 of the
# MNIST example's CNN moved in 10 steps (6 seeds of 64 real digits): Adadelta lr 1.0 0.50-0.54,
# Adam/AdamW 1e-3 0.69-0.70, Adagrad 1e-3 0.32-0.34 (synthetic digits), SGD+Nesterov 0.01 never
# over the one-step bound (0.01). A learning rate 100x too high: Adam 3e-2 17.6-18.4, Adadelta
# lr 100 31-36, SGD+momentum lr 1.0 1.05-1.61 within 2-4 steps, and every layer over the bound
# in the healthy zoo at Adam 3e-2 passes 1.0 within 4 steps. Adagrad at its default 0.01 and
# RMSprop at 1e-3 (no bias correction: a first step of 10 x lr per weight) move fc1 by 1.7-1.9
# and send the loss up 2.6-5.9x in their first steps: caught, rightly.
RUN_STEPS = 10


@dataclass(frozen=True, kw_only=True)
class LayerUpdate:
    """One weight matrix's step."""

    name: str  # the parameter's name
    ratio: float  # ||W_after - W_before|| / ||W_before|| (Frobenius; an embedding: rows moved)
    weight_rms: float  # RMS of W before the step
    update_rms: float  # RMS of W_after - W_before
    run_ratio: float | None = None  # the largest ||W_k - W_0|| / ||W_0|| over the run (k <= 10)


@dataclass(frozen=True, kw_only=True)
class UpdateRatioResult(CheckResult):
    """The update-to-weight ratio of every judged weight matrix after one step."""

    max_ratio: float  # the bound on every layer's ratio
    run_steps: int = 0  # steps of the run that judged the layers over the bound (0: none was)
    loss: float  # the loss the step saw (before its update)
    layers: tuple[LayerUpdate, ...]  # every judged weight matrix, in the model's order
    near_zero: tuple[str, ...]  # matrices starting at or near zero: not judged
    forensics: StepForensics | None = None  # what the user's step did to the optimizer
    optimizer: str | None = None  # the optimizer's class (the default's, or the user's step's)

    @property
    def max_run_ratio(self) -> float:
        """The bound on a layer's displacement over the run: ``RUN_STEPS x max_ratio``."""
        return RUN_STEPS * self.max_ratio

    @property
    def too_large(self) -> tuple[LayerUpdate, ...]:
        """The layers whose first step exceeds the bound (or is not finite) and whose run moved
        them farther than ``max_run_ratio``, largest first."""
        over = [
            u
            for u in self.layers
            if not u.ratio <= self.max_ratio
            and not (u.run_ratio is not None and u.run_ratio <= self.max_run_ratio)
        ]
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


def _moved(w: torch.Tensor, w0: torch.Tensor, table: bool) -> tuple[float, float, int]:
    """(||W - W0||, ||W0||, elements judged); for an embedding table over the rows that moved
    only: the rows a batch looks up are the ones its step updates, so the whole table's ratio
    would depend on the vocabulary (a 50-token vocabulary moves all its rows, a 50,000-token
    one a few)."""
    delta = w.detach().double() - w0.double()
    rows = w0.double()
    if table and delta.dim() == 2:
        touched = (delta != 0).any(1)
        if bool(touched.any()):
            delta, rows = delta[touched], rows[touched]
    return float(delta.norm()), float(rows.norm()), rows.numel()


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
        run = h.stepper()
        loss = run()
        layers = []
        tables = {
            f"{m}.weight" if m else "weight"
            for m, mod in h.model.named_modules()
            if isinstance(mod, (torch.nn.Embedding, torch.nn.EmbeddingBag))
        }
        for n, w0 in before.items():
            change, norm, count = _moved(weights[n], w0, n in tables)
            layers.append(
                LayerUpdate(
                    name=n,
                    ratio=change / norm if math.isfinite(change) else math.inf,
                    weight_rms=norm / math.sqrt(count),
                    update_rms=change / math.sqrt(count),
                )
            )
        run_steps = 0
        over = {u.name: u for u in layers if math.isfinite(u.ratio) and u.ratio > max_ratio}
        farthest = {n: u.ratio for n, u in over.items()}
        # the run that judges a first step over the bound; it stops once every such layer has
        # left the run bound behind or a weight is no longer finite
        while over and run_steps < RUN_STEPS - 1:
            run()
            run_steps += 1
            for n in over:
                moved, norm, _ = _moved(weights[n], before[n], n in tables)
                farthest[n] = max(farthest[n], moved / norm)
            if any(not math.isfinite(v) for v in farthest.values()) or all(
                v > RUN_STEPS * max_ratio for v in farthest.values()
            ):
                break
        if over:
            run_steps += 1
            layers = [
                replace(
                    u, run_ratio=farthest[u.name] if math.isfinite(farthest[u.name]) else math.inf
                )
                if u.name in over
                else u
                for u in layers
            ]
        forensics = h.forensics()
    r = UpdateRatioResult(
        seed=h.seed, max_ratio=max_ratio, loss=loss, layers=tuple(layers), near_zero=near_zero,
        forensics=forensics, run_steps=run_steps,
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
    attention weights, position tables; not biases or norm gains) the ratio ||W_after -
    W_before|| / ||W_before|| must be at most ``max_ratio``. Matrices that start at or near zero
    (RMS below a hundredth of 1/sqrt(fan_in)) are listed in ``near_zero`` and not judged: their
    relative change is unbounded whatever the learning rate. An embedding table
    (``nn.Embedding``, ``nn.EmbeddingBag``) is judged on the rows the step moved: the whole
    table's ratio would shrink with the share of the vocabulary a batch looks up, and a 50-token
    vocabulary would be held to a stricter bound than a 50,000-token one. A matrix over the
    bound is then judged by what the bound stands for: the check takes up to ``RUN_STEPS`` (10)
    steps in all, and fails it only if it moved farther than ``10 x max_ratio`` (its own norm)
    from where it started. The first step of Adam, Adagrad, RMSprop and Adadelta is a sign step
    of one size for every weight (Adadelta's: lr x sqrt(eps / (1 - rho)) = 3.2e-3 at lr 1.0, as
    its accumulated update starts at zero), which on a wide layer at PyTorch's default init
    (pytorch/examples' MNIST CNN: 9216 inputs, RMS 0.006) is 15-20% of its norm at lr 1.0 for
    Adadelta and 1e-3 for Adam; those recipes then move it 0.50-0.70 of its norm in 10 steps and
    train to 99%, while a learning rate 100x too high passes 1.0 within 4 steps on every zoo
    model. A model whose first step stays under the bound takes one step only.

    The rule is CS231n's update-to-weight ratio of about 1e-3; the bound, 0.1, is 100 times it:
    a step that moves a layer by a tenth of its norm replaces its initialisation within about
    ten steps in the same direction (Adam's early steps mostly are). Calibrated on the healthy zoo
    (GPT-2, Llama, BERT, T5, ResNet-18, MobileNetV3, ViT-Tiny, LSTM, CNNs, MLPs): with Adam 3e-4
    the largest ratio is 0.031, with the learning rate 100x higher (3e-2) it is 0.29-3.1 on every
    model. Under Adam the first step's ratio is lr / RMS(W), so layers initialised small need a
    small learning rate or a warm-up: AdamW 1e-3 without warm-up gives GPT-2's residual
    projections (std 0.01 in the zoo's 2-layer config) a ratio of 0.10, at the bound.

    Proves: on this batch, the step's size is sane against every judged weight's scale, or the
    first steps do not carry a layer away from its initialisation. Does not
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
    run = (
        [
            f"Then moved {w.run_ratio:.3g} of its norm from where it started within "
            f"{r.run_steps} steps (up to {r.max_run_ratio:g} allowed)"
        ]
        if w.run_ratio is not None
        else []
    )
    return Explanation(
        header="One step moves the weights too far!",
        lines=[
            f"Update-to-weight ratio of '{w.name}': "
            + up_to(f"{w.ratio:.3g}", f"{r.max_ratio:g}")
            + f"; weight RMS {w.weight_rms:.3g}, update RMS {w.update_rms:.3g}",
            *run,
            f"Above the bound: {len(over)} of {len(r.layers)} weight matrices "
            f"({names([u.name for u in over], 3)}); median ratio {r.median:.3g} "
            f"(CS231n's rule of thumb: about {RULE_OF_THUMB:g})",
        ],
        relax="max_ratio= (larger).",
    )
