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
# A layer over the bound after ``steps`` steps is followed for up to RUN_FACTOR x ``steps`` steps
# in all, read again every ``steps`` steps, and counts only the units dead at every read: a
# dying ReLU never fires again, while a large first step (Adadelta lr 1.0, Adam/AdamW 1e-3,
# Adagrad on the MNIST example's 9216-input fc1) silences a third to a half of a layer on a
# batch of 8-16 digits, some of which the next steps bring back. Measured on that CNN (fc1, 6
# seeds of 16 real digits): after 3 steps Adadelta 37-48%, Adam/AdamW 1e-3 35-44%, Adagrad 0.01
# 34-45%, SGD+Nesterov 0.01 20-30%; of those, dead at every read through step 30 (4 seeds):
# 31-43%, 30-42%, 27-39%, 13-25%. A learning rate too high: SGD lr 1.0 78-94% after 3 steps,
# SGD+momentum lr 1.0 86-98%, Adam 3e-2 92-100%, each run unstable by step 6 (so that read
# stands).
RUN_FACTOR = 10
# A run revives nothing once it is unstable: a loss NaN/Inf, or risen above its best so far by
# more than this fraction of the initial loss (assert_loss_stable's default rule): a learning
# rate too high churns units in and out of life as the loss climbs (SGD lr 10 on a ReLU MLP:
# 69% of a layer dead after 3 steps, 45% at step 9 with the loss at 1e11).
UNSTABLE_RISE = 0.5


@dataclass(frozen=True, kw_only=True)
class LayerDeaths:
    """One layer's units before and after the steps."""

    name: str
    units: int
    alive_before: int  # units with a non-zero gradient at initialisation
    died: int  # of those, units with exactly zero gradient after the steps (at every read)
    died_first: int | None = None  # of those, units dead after ``steps`` (when a run followed)

    @property
    def fraction(self) -> float:
        return self.died / self.alive_before


@dataclass(frozen=True, kw_only=True)
class DyingUnitsResult(CheckResult):
    """Units that died during the steps, per Linear/Conv layer."""

    steps: int  # optimisation steps before the first read
    run_steps: int = 0  # steps taken in all when a layer over the bound was followed (0: none)
    run_diverged: bool = False  # that run turned unstable: the read after ``steps`` stands
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
        first, run_diverged = dict(after), False
        # follow the layers over the bound: a unit counts as died only if dead at every read
        over = _over(before, after, output, max_dying_fraction)
        while over and len(trace) < RUN_FACTOR * steps:
            trace.extend(run() for _ in range(steps))
            if _unstable(trace) or not all(
                bool(torch.isfinite(p).all()) for p in h.model.parameters()
            ):
                # units a diverging run shakes back to life are no sign of health: the
                # first read stands
                run_diverged, after = True, first
                break
            now = probe(h)[0]
            after = {n: after[n] & now[n] if n in now else after[n] for n in after}
            over = _over(before, after, output, max_dying_fraction)
        run_steps = len(trace) if len(trace) > steps else 0
        forensics = h.forensics()
    layers = []
    for name, dead in before.items():
        alive = ~dead
        if name == output or name not in after or not alive.any():
            continue
        died = int((after[name] & alive).sum())
        died_first = int((first[name] & alive).sum()) if run_steps else None
        layers.append(
            LayerDeaths(
                name=name, units=dead.numel(), alive_before=int(alive.sum()), died=died,
                died_first=died_first,
            )
        )  # fmt: skip
    r = DyingUnitsResult(
        seed=h.seed,
        steps=min(len(trace), steps),
        run_steps=run_steps,
        run_diverged=run_diverged,
        max_dying_fraction=max_dying_fraction,
        layers=tuple(layers),
        output_layer=output,
        trace=tuple(trace),
        diverged_at=diverged,
        forensics=forensics,
    )
    return diagnosed(r, _diagnose)


def _unstable(trace: list[float]) -> bool:
    best = math.inf
    for v in trace:
        if not math.isfinite(v) or v - best > UNSTABLE_RISE * abs(trace[0]):
            return True
        best = min(best, v)
    return False


def _over(
    before: dict[str, torch.Tensor],
    after: dict[str, torch.Tensor],
    output: str | None,
    bound: float,
) -> bool:
    """Some judged layer lost more than ``bound`` of its live units."""
    for name, dead in before.items():
        alive = ~dead
        judged = name != output and name in after and alive.any()
        if judged and int((after[name] & alive).sum()) > bound * int(alive.sum()):
            return True
    return False


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
    dead after the steps, or when training produced NaN/Inf. A layer over the bound is followed
    for up to ``10 x steps`` steps, read every ``steps`` steps, and only the units dead at every
    read count as died (``died``; ``died_first`` the count after ``steps``): a killed ReLU
    stays dead, while units silenced by a large first step (Adadelta at lr 1.0 moves every
    weight by 3.2e-3 in its first step, a fifth of a 9216-input layer's norm) may come back. A
    run that turns unstable (NaN/Inf, or a rise above its best loss by half the initial loss, as
    :func:`nnsanity.assert_loss_stable` judges) revives nothing: the read after ``steps``
    stands.
    The output layer (the last Linear/
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
                        f"{r.steps} steps{_stayed(r)}",)),
        Cause(id="relu_without_margin", summary="ReLUs without a safety margin",
              remedy="use LeakyReLU/GELU, or BatchNorm/LayerNorm before the activation",
              where=worst.name),
        Cause(id="gradient_spike", summary="gradients spiking in one step",
              remedy="clip them (torch.nn.utils.clip_grad_norm_)"),
    ]  # fmt: skip


def _stayed(r: DyingUnitsResult) -> str:
    if r.run_diverged:
        return (
            f" (the run that followed was unstable by step {r.run_steps}: none counts as revived)"
        )
    return f" and stayed dead through step {r.run_steps}" if r.run_steps else ""


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
            f"Live units that died in {r.steps} steps{_stayed(r)} in '{worst.name}': "
            + up_to(f"{worst.fraction:.0%}", f"{r.max_dying_fraction:.0%}")
            + f" ({worst.died} of {worst.alive_before} alive at init)",
            f"Layers over the bound: {shown}",
            f"Trace: {excerpt(r.trace)}",
        ],
        relax="max_dying_fraction= (larger).",
    )
