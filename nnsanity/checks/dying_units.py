"""Dying units: ReLU units alive at initialisation that a few steps at the learning rate kill.

CS231n (Karpathy, "Neural Networks Part 1", on ReLU): "a large gradient flowing through a ReLU
neuron could cause the weights to update in such a way that the neuron will never activate on
any datapoint again ... if the learning rate is set too high ... as much as 40% of your network
can be dead". The check reads which units of every Linear/Conv layer get a non-zero gradient on
the batch (``nnsanity._units``) before and after a few steps of the user's optimizer (default
Adam 3e-4) or ``step(batch) -> loss``, and counts the units that were alive and are now dead.
Units already dead at initialisation are ``assert_params_update``'s business, not this check's.
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
    check_int,
    check_number,
    resolve_step,
)
from nnsanity._diagnosis import CONSISTENT, Cause
from nnsanity._forensics import StepForensics
from nnsanity._harness import Harness
from nnsanity._messages import Explanation, Msg, fail, up_to
from nnsanity._result import CheckResult, diagnosed
from nnsanity._training import excerpt
from nnsanity._units import probe

# The bound on the fraction of a layer's live units that may die during the steps. In 3 steps of
# the default Adam 3e-4 the healthy zoo loses 0-4% of a layer (units active on one or two
# examples of the batch that flip: T5's ReLU feed-forward, MobileNetV3's squeeze-excitation, a
# 30-unit MLP layer), except a dropout CNN's first classifier layer: 16% (34% at Adam 1e-3), a
# 1024-input layer fed non-negative features, where Adam's sign-like first steps move every
# unit's pre-activation by lr x ||x||_1 at once. The classic failure kills more than half a layer:
# SGD at lr 10 on ReLU MLPs 53-69%, Adam 0.1 on a 256-wide ReLU MLP 87%, SGD 1 on the PyTorch
# MNIST example's CNN 73%.
MAX_DYING_FRACTION = 0.5


@dataclass(frozen=True, kw_only=True)
class LayerDeaths:
    """One layer's units before and after the steps."""

    name: str
    units: int
    alive_before: int  # units with a non-zero gradient at initialisation
    died: int  # of those, units with exactly zero gradient after the steps

    @property
    def fraction(self) -> float:
        return self.died / self.alive_before


@dataclass(frozen=True, kw_only=True)
class DyingUnitsResult(CheckResult):
    """Units that died during the steps, per Linear/Conv layer."""

    steps: int  # optimisation steps taken
    max_dying_fraction: float  # the bound on each layer's ``fraction``
    layers: tuple[LayerDeaths, ...]  # every judged layer with live units, in the model's order
    output_layer: str | None  # the last Linear/Conv to run: not judged
    trace: tuple[float, ...]  # the loss each step saw
    diverged_at: int | None  # first step with a NaN/Inf loss (steps: NaN/Inf weights after)
    forensics: StepForensics | None = None  # what the user's step did to the optimizer

    @property
    def dying(self) -> tuple[LayerDeaths, ...]:
        """The layers that lost more than the bound, worst first."""
        over = [d for d in self.layers if d.fraction > self.max_dying_fraction]
        return tuple(sorted(over, key=lambda d: -d.fraction))

    @property
    def passed(self) -> bool:
        return self.diverged_at is None and not self.dying


def measure_dying_units(
    model: torch.nn.Module,
    batch: Any,
    loss_fn: LossFn | None = None,
    *,
    optimizer: OptimizerFactory | None = None,
    step: Step | None = None,
    step_factory: StepFactory | None = None,
    steps: int = 3,
    max_dying_fraction: float = MAX_DYING_FRACTION,
    unpack: bool | None = None,
    seed: int = 0,
) -> DyingUnitsResult:
    """Read the live units, take ``steps`` steps, read them again; see the assert."""
    steps = check_int(steps, "steps", minimum=1)
    max_dying_fraction = check_number(
        max_dying_fraction, "max_dying_fraction", low=0, high=1, what="a fraction"
    )
    step = resolve_step(model, optimizer, step, step_factory)
    h = Harness(
        model, batch, loss_fn, seed=seed, optimizer=optimizer, step=step, unpack=unpack,
        default_lr=SAFE_LR,
    )  # fmt: skip
    with h.isolated():
        before, output = probe(h)
        h.model.train()
        run, trace = h.stepper(), []
        for _ in range(steps):
            trace.append(run())
            if not math.isfinite(trace[-1]):
                break
        finite = all(bool(torch.isfinite(p).all()) for p in h.model.parameters())
        diverged = next((k for k, v in enumerate(trace) if not math.isfinite(v)), None)
        if diverged is None and not finite:
            diverged = len(trace)
        after = probe(h)[0] if diverged is None else {}
        forensics = h.forensics()
    layers = []
    for name, dead in before.items():
        alive = ~dead
        if name == output or name not in after or not alive.any():
            continue
        died = int((after[name] & alive).sum())
        layers.append(
            LayerDeaths(name=name, units=dead.numel(), alive_before=int(alive.sum()), died=died)
        )
    r = DyingUnitsResult(
        seed=h.seed,
        steps=len(trace),
        max_dying_fraction=max_dying_fraction,
        layers=tuple(layers),
        output_layer=output,
        trace=tuple(trace),
        diverged_at=diverged,
        forensics=forensics,
    )
    return diagnosed(r, _diagnose)


def assert_no_dying_units(
    model: torch.nn.Module,
    batch: Any,
    loss_fn: LossFn | None = None,
    *,
    optimizer: OptimizerFactory | None = None,
    step: Step | None = None,
    step_factory: StepFactory | None = None,
    steps: int = 3,
    max_dying_fraction: float = MAX_DYING_FRACTION,
    unpack: bool | None = None,
    seed: int = 0,
    msg: Msg = None,
) -> DyingUnitsResult:
    """Check that a few steps at your learning rate do not kill the units that were alive.

    A unit of a Linear/Conv layer is alive on the batch when its weight row or bias gets a
    non-zero gradient; it is read once at initialisation and once after ``steps`` (3) steps of
    ``optimizer`` (default Adam 3e-4) or of your ``step(batch) -> loss``, both times with dropout
    and other train-only randomness off (BatchNorm keeps its batch statistics). Fails when, in
    any layer, more than ``max_dying_fraction`` (50%) of the units alive at initialisation are
    dead after the steps, or when training produced NaN/Inf. The output layer (the last Linear/
    Conv to run) is not judged: its units go quiet when the loss saturates, not when they die.

    Source: CS231n's dying-ReLU warning (up to 40% of a network dead at too high a learning rate).
    Calibration: with Adam 3e-4 the healthy zoo (GPT-2, Llama, BERT, T5, ResNet-18, MobileNetV3,
    ViT-Tiny, LSTM, CNNs, MLPs) loses 0-4% of a layer's live units in 3 steps, and 16% in a
    dropout CNN's 1024-input classifier layer (34% at Adam 1e-3): on a batch of a few examples
    many units are marginal. SGD at a learning rate of 10 on ReLU MLPs kills 53-69% of a layer,
    Adam 0.1 on a 256-wide one 87%, SGD 1 on the PyTorch MNIST example's CNN 73%.

    Proves: on this batch, the first steps at this learning rate keep the live units alive. Does
    not prove: they survive later (a spike at step 1,000), nor that a unit dead on this batch is
    dead on all data (a dead unit on one batch may fire on another); units dead at initialisation
    are judged by :func:`nnsanity.assert_params_update`.

    ``step_factory(model) -> step`` builds your step afresh for this check (with its own
    optimizer: no state carried over from another check); pass it or ``step``, not both.

    Raises ``SanityError`` when the check fails, ``TypeError``/``ValueError`` on misuse.
    """
    __tracebackhide__ = True
    r = measure_dying_units(
        model, batch, loss_fn, optimizer=optimizer, step=step,
        step_factory=step_factory, steps=steps,
        max_dying_fraction=max_dying_fraction, unpack=unpack, seed=seed,
    )  # fmt: skip
    if not r.passed:
        fail(_explain(r), r, msg)
    return r


def _diagnose(r: DyingUnitsResult) -> list[Cause]:
    if r.diverged_at is not None:
        return [
            Cause(id="lr_far_too_high", summary="the learning rate is far too high",
                  remedy="lower it 10x or more", support=CONSISTENT,
                  evidence=(f"NaN/Inf after step {r.diverged_at}",)),
            Cause(id="missing_epsilon", summary="log/exp/division without an epsilon",
                  remedy="run nnsanity.assert_finite"),
        ]  # fmt: skip
    worst = r.dying[0]
    return [
        Cause(id="lr_too_high", summary="the learning rate is too high: one large update "
              "pushed the units' pre-activations below zero for every example (dying ReLU)",
              remedy="lower it 3-10x or warm it up", where=worst.name, support=CONSISTENT,
              evidence=(f"{worst.died} of {worst.alive_before} units alive at init died in "
                        f"{r.steps} steps",)),
        Cause(id="relu_without_margin", summary="ReLUs without a safety margin",
              remedy="use LeakyReLU/GELU, or BatchNorm/LayerNorm before the activation",
              where=worst.name),
        Cause(id="gradient_spike", summary="gradients spiking in one step",
              remedy="clip them (torch.nn.utils.clip_grad_norm_)"),
    ]  # fmt: skip


def _explain(r: DyingUnitsResult) -> Explanation:
    if r.diverged_at is not None:
        where = (
            f"the loss at step {r.diverged_at}"
            if r.diverged_at < len(r.trace)
            else f"the weights after {r.steps} steps"
        )
        return Explanation(
            header="Training diverged before the units could be counted!",
            lines=[f"NaN/Inf in {where}", f"Trace: {excerpt(r.trace)}"],
        )
    worst = r.dying[0]
    shown = "; ".join(
        f"'{d.name}' {d.died} of {d.alive_before} ({d.fraction:.0%})" for d in r.dying[:4]
    )
    return Explanation(
        header="Units died during training!",
        lines=[
            f"Live units that died in {r.steps} steps in '{worst.name}': "
            + up_to(f"{worst.fraction:.0%}", f"{r.max_dying_fraction:.0%}")
            + f" ({worst.died} of {worst.alive_before} alive at init)",
            f"Layers over the bound: {shown}",
            f"Trace: {excerpt(r.trace)}",
        ],
        relax="max_dying_fraction= (larger).",
    )
