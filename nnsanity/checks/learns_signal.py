"""Learnable signal: what training on one batch learns predicts another batch's own labels.

One batch can be memorised whatever its labels (Zhang et al. 2017, "Understanding deep learning
requires rethinking generalization": networks fit random labels), so no check on one batch can
tell labels that belong to their inputs from labels shuffled separately, taken from the wrong
column, or off by one. Two batches can: train on ``batch``, and the loss on ``holdout`` with its
own labels must fall by more than it does with the holdout's labels permuted among its samples,
the label-permutation baseline of Ojala & Garriga (2010, "Permutation tests for studying
classifier performance", JMLR 11). A permutation keeps the label frequencies, so learning them
alone lowers both losses alike; only an input-to-label relation shared by the two batches makes
the real labels gain more.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch

from nnsanity._arguments import (
    FIT_LR,
    LossFn,
    OptimizerFactory,
    Step,
    StepFactory,
    check_int,
    check_number,
    resolve_step,
)
from nnsanity._diagnosis import CONSISTENT, MEASURED, Cause
from nnsanity._forensics import StepForensics
from nnsanity._harness import Harness
from nnsanity._leak import Leak, measure_leak
from nnsanity._messages import Explanation, Msg, at_least, fail, unpaired_explanation
from nnsanity._outputs import Outputs, unpaired_causes
from nnsanity._perturbation import MAX_DEPENDENCE
from nnsanity._result import CheckResult, diagnosed
from nnsanity._state import preserved_module
from nnsanity._structures import LABEL_KEYS, leaves, map_tensors
from nnsanity._training import excerpt
from nnsanity._units import deterministic_mode
from nnsanity.seeding import seed_torch

# The default bound: the holdout's own labels must gain MIN_Z standard deviations of the
# permutation distribution more than the permuted labels' mean. When the labels carry nothing the
# inputs predict, the holdout's own labels are one more random labelling and z is about standard
# normal: |z| <= 2.4 over the synthetic label-shuffled zoo (18 models from MLPs to ResNet-18,
# ViT-Tiny, GPT-2 and T5, labels moved by 1 and by 3 samples, after each of 5 steps); 3 is a
# one-sided p of about 0.001 under a normal approximation. With a real relation z reaches
# 3.2-19 within one to three steps on the same models (``tests/learnable.py``).
MIN_Z = 3.0
PERMUTATIONS = 20
# The default budget. Training stops at the first step where both z >= MIN_Z and the holdout
# loss with its own labels is below its untrained value. A large first step (Adadelta at lr 1.0)
# or a training batch whose class balance differs from the holdout's often shows z >= 3 while
# the holdout loss is still above its start; it comes down a few steps later. Both held by step
# 1-4 on pytorch/examples' MNIST CNN (64 real training and 64 holdout digits, 6 seeds, Adadelta
# lr 1.0 and Adam 1e-3) and by step 1-9 on an order-reading Transformer (128 + 128 sequences, 5
# seeds); 20 leaves twice that. Under label shuffling the longer run costs nothing measurable:
# max |z| 2.2 over the 240 evaluations of 40 label-shuffled runs (the toy zoo at shifts 1 and 3,
# ResNet-18, ViT-Tiny, GPT-2, T5).
STEPS = 20


@dataclass(frozen=True, kw_only=True)
class LearnsSignalResult(CheckResult):
    """What ``measure_learns_signal`` measured; losses in the loss's own unit (e.g. nats)."""

    steps: int  # the budget of optimisation steps on ``batch``; ``len(trace)`` were taken
    min_z: float  # the bound on ``z``
    permutations: int  # permutations of the holdout's labels in the baseline
    initial_loss: float  # the holdout's loss with its own labels before training
    gain: float  # how much training lowered it (at the last step taken; < 0: it rose)
    permuted_gain: float  # the mean drop of the holdout's loss with permuted labels
    spread: float  # the standard deviation of those drops
    z: float  # (gain - permuted_gain) / spread
    trace: tuple[float, ...]  # the training loss each step saw
    z_trace: tuple[float, ...]  # z after each step
    gain_trace: tuple[float, ...] = ()  # gain after each step
    constant_labels: bool  # every permutation left the holdout's labels unchanged
    label_blind: bool = False  # every permutation gave the same loss: identical predictions
    unpaired: str | None = None  # how the loss fails to pair outputs with their own targets
    forensics: StepForensics | None = None  # what the user's step did to the optimizer
    # where the outputs can read their own targets (a copy "generalises" to any holdout), as
    # nnsanity.assert_no_target_leak measures it on ``batch`` at init; None: no leak
    target_leak: str | None = None

    @property
    def passed(self) -> bool:
        return (
            not self.constant_labels
            and self.target_leak is None
            and self.unpaired is None
            and math.isfinite(self.z)
            and self.z >= self.min_z
            and self.gain > 0  # better than permuted, yet worse than untrained: no signal
        )

    @property
    def z_reached(self) -> bool:
        """Some step had z >= min_z, but at none of them was the holdout loss below its start."""
        return any(z >= self.min_z for z in self.z_trace)


def _permuted(
    batch: Any,
    perm: torch.Tensor,
    n: int,
    d: int = 0,
    lead: tuple[int, ...] = (),
    *,
    per_sample: bool = False,
) -> Any:
    """The user's ``batch`` with every label tensor's batch dimension ``d`` (of size ``n``)
    permuted; labels flattened from the inputs' leading dims ``lead`` (word_language_model's
    (T * B,) targets of (T, B) inputs) are permuted as (T, B). ``per_sample``: the targets are
    a list of one entry per sample (a detector's boxes and labels per image), reordered."""
    if per_sample:
        return (batch[0], [batch[1][i] for i in perm.tolist()])

    def shuffle(t: torch.Tensor) -> torch.Tensor:
        if t.dim() > d and t.shape[d] == n:
            return t.index_select(d, perm.to(t.device))
        if _flattened(t, d, lead):
            return t.view(lead).index_select(d, perm.to(t.device)).reshape(-1)
        return t

    if isinstance(batch, Mapping):
        return {k: map_tensors(shuffle, v) if k in LABEL_KEYS else v for k, v in batch.items()}
    return (batch[0], map_tensors(shuffle, batch[1]))


def _flattened(t: torch.Tensor, d: int, lead: tuple[int, ...]) -> bool:
    return d > 0 and t.dim() == 1 and t.numel() == math.prod(lead)


def _same(a: Any, b: Any) -> bool:
    pairs = list(zip(leaves(a), leaves(b), strict=False))
    return all(torch.equal(x, y) for (_, x), (_, y) in pairs)


def _losses(hb: Harness, permuted: list[Harness]) -> list[float]:
    """The holdout's loss with its own labels, then with each permutation's: dropout and
    stochastic depth off (a memorising model's train-mode holdout loss rises under dropout even
    while its predictions improve), BatchNorm normalising by the holdout's own statistics (its
    running ones have seen a few steps only) and its running statistics kept."""
    with preserved_module(hb.model), deterministic_mode(hb.model), torch.no_grad():
        if hb.self_loss:  # the labels travel in the call: one forward pass each
            values = []
            for hx in [hb, *permuted]:
                seed_torch(hb.seed)
                values.append(float(hx.loss(hx.loss_forward())))
            return values
        seed_torch(hb.seed)
        outputs = hb.forward()
        return [float(hx.loss(outputs)) for hx in [hb, *permuted]]


def _unpaired(hb: Harness) -> str | None:
    if hb.self_loss:
        return None
    with preserved_module(hb.model), torch.no_grad():
        seed_torch(hb.seed)
        out = Outputs(hb, hb.forward())
        return out.unpaired() if out.logits.is_floating_point() else None


def measure_learns_signal(
    model: torch.nn.Module,
    batch: Any,
    loss_fn: LossFn | None = None,
    *,
    holdout: Any,
    optimizer: OptimizerFactory | None = None,
    step: Step | None = None,
    step_factory: StepFactory | None = None,
    steps: int = STEPS,
    min_z: float = MIN_Z,
    permutations: int = PERMUTATIONS,
    unpack: bool | None = None,
    batch_dim: int | None = None,
    seed: int = 0,
) -> LearnsSignalResult:
    """Train on ``batch`` and compare the holdout's loss with its own and permuted labels. See
    :func:`assert_learns_signal`. Never raises ``SanityError``."""
    steps = check_int(steps, "steps", minimum=1)
    min_z = check_number(min_z, "min_z", low=0, what="a number >= 0")
    permutations = check_int(permutations, "permutations", minimum=2)
    step = resolve_step(model, optimizer, step, step_factory)
    h = Harness(
        model, batch, loss_fn, seed=seed, optimizer=optimizer, step=step, unpack=unpack,
        default_lr=FIT_LR,
    )  # fmt: skip
    hb = Harness(model, holdout, loss_fn, seed=seed, unpack=unpack)
    if hb.per_sample:  # a list of images and one of their targets: the list is permuted
        d, n = 0, hb.batch_size
        lead: tuple[int, ...] = (n,)
    else:
        d = hb.batch_dim(batch_dim)
        first = next(t for _, t in hb.data_leaves() if t.dim() > d)
        n, lead = int(first.shape[d]), tuple(int(k) for k in first.shape[: d + 1])
    if n < 2:
        raise ValueError(f"holdout= needs at least 2 samples to permute its labels, got {n}.")
    if not hb.per_sample and not any(
        (t.dim() > d and t.shape[d] == n) or _flattened(t, d, lead) for _, t in leaves(hb.targets)
    ):
        shapes = ", ".join(str(tuple(t.shape)) for _, t in leaves(hb.targets)) or "none"
        raise ValueError(
            f"the holdout's labels (shapes {shapes}) have no "
            f"{'first dimension' if d == 0 else f'dimension {d}'} of the batch size {n} to "
            "permute among samples; pass labels with the batch dimension first (or batch_dim= "
            "for time-first batches)."
        )
    g = torch.Generator().manual_seed(h.seed)
    shuffles = [
        Harness(model, _permuted(holdout, torch.randperm(n, generator=g), n, d, lead,
                                 per_sample=hb.per_sample), loss_fn,
                seed=seed,
                unpack=unpack)
        for _ in range(permutations)
    ]  # fmt: skip
    constant = all(_same(hb.targets, hx.targets) for hx in shuffles)
    trace: list[float] = []
    z_trace: list[float] = []
    gain_trace: list[float] = []
    gain = permuted_gain = spread = z = math.nan
    blind = False
    with h.isolated():
        unpaired = _unpaired(hb)
        leak = measure_leak(h, MAX_DEPENDENCE)
        start = _losses(hb, shuffles)
        run = h.stepper()
        for _ in range(0 if constant or unpaired else steps):
            trace.append(run())
            now = _losses(hb, shuffles)
            gain = start[0] - now[0]
            drops = [a - b for a, b in zip(start[1:], now[1:], strict=True)]
            permuted_gain, spread = statistics.fmean(drops), statistics.stdev(drops)
            # a rounding floor: identical predictions for every sample give a spread of 0
            floor = 1e-6 * max(abs(start[0]), 1e-12)
            z = (gain - permuted_gain) / max(spread, floor)
            z_trace.append(z)
            gain_trace.append(gain)
            blind = all(abs(v - now[0]) <= floor for v in now[1:])
            # both at one step: beating the permutations while the holdout loss is above its
            # start (a first step's overconfidence, or a training prior the holdout lacks) is
            # not yet a signal, so training goes on until it is or the budget ends
            if not math.isfinite(trace[-1]) or not math.isfinite(z) or (z >= min_z and gain > 0):
                break
        forensics = h.forensics()
    r = LearnsSignalResult(
        seed=h.seed,
        steps=steps,
        min_z=min_z,
        permutations=permutations,
        initial_loss=start[0],
        gain=gain,
        permuted_gain=permuted_gain,
        spread=spread,
        z=z,
        trace=tuple(trace),
        z_trace=tuple(z_trace),
        gain_trace=tuple(gain_trace),
        constant_labels=constant,
        label_blind=blind,
        unpaired=unpaired,
        forensics=forensics,
        target_leak=_leak_place(leak) if leak.found(MAX_DEPENDENCE) else None,
    )
    return diagnosed(r, _diagnose)


def _leak_place(leak: Leak) -> str:
    if leak.form == "features":
        return f"column {leak.offset} of {leak.source} is the target"
    at = f"t{leak.offset:+d}" if leak.offset else "t"
    return f"the output at t reads {leak.source} at {at}, which holds its target"


def assert_learns_signal(
    model: torch.nn.Module,
    batch: Any,
    loss_fn: LossFn | None = None,
    *,
    holdout: Any,
    optimizer: OptimizerFactory | None = None,
    step: Step | None = None,
    step_factory: StepFactory | None = None,
    steps: int = STEPS,
    min_z: float = MIN_Z,
    permutations: int = PERMUTATIONS,
    unpack: bool | None = None,
    batch_dim: int | None = None,
    seed: int = 0,
    msg: Msg = None,
) -> LearnsSignalResult:
    """Assert that training on ``batch`` predicts the labels of another batch, ``holdout``,
    better than the same labels shuffled among the holdout's samples.

    Up to ``steps`` (20) steps of ``optimizer`` (default Adam 1e-3, as for the other fitting
    checks) or of your ``step(batch) -> loss`` on ``batch``; before training and after each step
    the holdout's loss is computed with its own labels and with ``permutations`` (20) fixed
    random permutations of them (dropout and stochastic depth off, BatchNorm normalising by the
    holdout's own statistics, its running statistics untouched). Training lowers the loss with
    the own labels by ``gain`` and with the permuted ones by ``permuted_gain`` on average, with
    standard deviation ``spread``, and z = (gain - permuted_gain) / spread. The decision rule:
    the check passes at the first step where both z >= ``min_z`` (3) and gain > 0 (the holdout
    predicted better than before training, not only less badly than shuffled); it trains on
    while either is missing and fails when the budget ends, so ``steps=`` extends the search. A
    first step that overshoots (Adadelta at lr 1.0 moves a layer by a fifth of its norm) or a
    training batch whose class balance differs from the holdout's raises the holdout loss first,
    with z already high; a few steps later the loss is below its start. Pass two batches of the
    same data (two batches of a loader: the same split and label encoding). The model and global
    state are restored afterwards; the optimizer inside your ``step`` is not (nnsanity never
    sees it), so give ``step`` a fresh one.

    The permuted labels keep the label frequencies, so a model that learns only them gains the
    same on both; a relation from inputs to labels that holds in both batches makes the own
    labels gain more. When the labels carry nothing the inputs predict (shuffled separately from
    the inputs, the wrong column, off by one), z is about standard normal: |z| <= 2.4 on the
    synthetic label-shuffled zoo (18 models, 180 evaluations at 5 steps; 2.2 over 240 at the
    20-step budget). With a real relation z reaches 3.2-19 within one to three steps on the same
    models (ResNet-18 and ViT-Tiny trained on 8 images with a 32-image holdout, GPT-2 on 4 rows
    with a 16-row holdout, T5, BERT, CNNs, MLPs, an LSTM). The signal must be learnable within
    ``steps`` steps and the holdout large enough to show it: about a hundred samples for a small
    model. A 8-16-3 MLP learning the argmax of 3 of 8 features fails 3 of 20 seeds with
    32-sample batch and holdout (z 1.1-1.9 after 5 steps, and still under 3 after 300 steps) and
    passes all 20 with 128 (z >= 4.1); GPT-2 with a 4-row holdout reaches only z = 2.2, and a
    dropout-0.5 CNN needs 64 training images.

    It proves the labels are aligned with the inputs in a way training picks up from one batch
    and that carries to another. It does NOT prove the relation is the intended one (a feature
    computed from the label passes), that the model generalises well, or anything about data
    the two batches do not represent. It also fails when the outputs can read their own
    targets from the inputs (a causal LM scored without the shift by one copies its input, and
    the copy "generalises" to any holdout): the measurement of ``assert_no_target_leak``, run on
    ``batch`` at init before training.

    ``step_factory(model) -> step`` builds your step afresh for this check (with its own
    optimizer: no state carried over from another check); pass it or ``step``, not both.

    The samples are indexed by ``batch_dim`` of the inputs (and of the labels, or the labels
    flattened from the inputs' ``(T, B)``, as word_language_model's ``(T * B,)``): by default
    1 where the inputs say so unambiguously (``(T, B)`` tokens beside an LSTM state of shape
    ``(layers, B, H)``), else 0; a lone time-first ``(T, B)`` tensor needs ``batch_dim=1``.

    Raises ``SanityError`` when the check fails, ``TypeError``/``ValueError`` on misuse.
    """
    __tracebackhide__ = True
    r = measure_learns_signal(
        model, batch, loss_fn, holdout=holdout, optimizer=optimizer, step=step,
        step_factory=step_factory, steps=steps,
        min_z=min_z, permutations=permutations, unpack=unpack, batch_dim=batch_dim, seed=seed,
    )  # fmt: skip
    if not r.passed:
        fail(_explain(r), r, msg)
    return r


def _diagnose(r: LearnsSignalResult) -> list[Cause]:
    if r.target_leak is not None:
        return [
            Cause(id="target_leak", summary="the outputs can read their own targets from the "
                  "inputs, so what training learns is a copy, not the relation",
                  remedy="shift the targets by one (logits[:, :-1] vs targets[:, 1:]) or drop "
                  "the label from the inputs; nnsanity.assert_no_target_leak names the cause",
                  evidence=(r.target_leak,), support=MEASURED),
        ]  # fmt: skip
    if r.unpaired is not None:
        return unpaired_causes(r.unpaired)
    if r.constant_labels:
        return [
            Cause(id="constant_label_column", summary="the wrong column or key as the label (a "
                  "constant field)", remedy="take the label column", support=CONSISTENT,
                  evidence=(f"labels unchanged by all {r.permutations} permutations",)),
            Cause(id="single_class_batch", summary="a batch drawn from one class only (data "
                  "sorted by label, no shuffling)", remedy="shuffle the loader",
                  support=CONSISTENT),
        ]  # fmt: skip
    ignores = Cause(id="ignores_inputs", summary="the model ignores its inputs",
                    remedy="run nnsanity.assert_uses_inputs")  # fmt: skip
    causes = [
        Cause(id="labels_misaligned", summary="labels not aligned with the inputs: shuffled "
              "separately from them, off by one, or the wrong column taken as the label",
              remedy="shuffle indices, not the two arrays"),
        Cause(id="label_encoding_differs", summary="the two batches disagree on what a label "
              "means (classes encoded separately per split)", remedy="encode labels once"),
        Cause(id="signal_needs_more", summary=f"the relation needs more than {r.steps} steps, or "
              "larger batches, to show", remedy="raise steps= or pass a holdout of a few dozen "
              "samples"),
        ignores,
    ]  # fmt: skip
    if r.label_blind:  # the same prediction for every sample: no labels can be told apart
        causes.insert(
            0,
            replace(
                ignores,
                support=MEASURED,
                evidence=(
                    "the holdout loss is unchanged by every permutation: the same prediction "
                    "for all",
                ),
            ),
        )
    if r.z_reached:  # beats the permutations only by losing less
        rose = (
            f"z reached {max(r.z_trace):.3g} but the holdout loss with its own labels was "
            f"above its start at every such step",
        )
        causes[0:0] = [
            Cause(id="training_labels_uninformative", summary="the training batch's labels "
                  "carry no information about the inputs (one class only, or a constant column "
                  "taken as the label): the model learns a prior the holdout does not share",
                  remedy="check the training labels", evidence=rose, support=MEASURED),
            Cause(id="memorises_batch", summary="the step memorises the training batch faster "
                  "than it learns the relation (overconfident on the holdout)",
                  remedy="a larger training batch, or a lower learning rate",
                  evidence=rose, support=CONSISTENT),
        ]  # fmt: skip
    if r.trace and not math.isfinite(r.trace[-1]):
        causes.insert(
            0,
            Cause(
                id="diverged",
                summary="training diverged (NaN/Inf loss)",
                remedy="lower the learning rate",
                support=MEASURED,
            ),
        )
    return causes


def _explain(r: LearnsSignalResult) -> Explanation:
    if r.target_leak is not None:
        return Explanation(
            header="The signal comes from a target leak!",
            lines=[
                f"Target leak in the training batch at init: {r.target_leak}",
                f"Gain over the permuted labels after {len(r.trace)} steps: z = {r.z:.3g}",
            ],
            relax="nothing: a model that copies its target learns nothing it can use",
        )
    if r.unpaired is not None:
        return unpaired_explanation(r.unpaired)
    if r.constant_labels:
        return Explanation(
            header="Every sample of the holdout has the same label!",
            lines=[f"Labels unchanged by all {r.permutations} permutations of the holdout"],
        )
    lines = [
        f"Gain over the permuted labels after {len(r.trace)} steps: z = "
        + at_least(f"{r.z:.3g}", f"{r.min_z:g}"),
        f"Holdout loss drop: {r.gain:.4g} with its own labels, {r.permuted_gain:.4g} +- "
        f"{r.spread:.2g} with them permuted ({r.permutations} permutations); holdout loss "
        f"{r.initial_loss:.4g} before training",
        f"Training loss: {excerpt(r.trace)}",
    ]
    if r.label_blind:
        lines.insert(1, "Holdout loss unchanged by every permutation: the same prediction for all")
    if r.z_reached:
        lines.insert(
            1,
            f"z reached {max(r.z_trace):.3g} >= {r.min_z:g}, but at every such step the holdout "
            "loss with its own labels was above its start: training made it worse",
        )
    return Explanation(
        header="Training on the batch does not predict the holdout's labels!",
        lines=lines,
        relax="steps= (more) or min_z= (smaller).",
    )
