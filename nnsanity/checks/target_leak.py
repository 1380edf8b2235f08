"""Target leak: the output scored against a target must not be able to read that target.

Karpathy's recipe warns that a network "fails silently": a causal LM whose loss compares the
logits at t with the token at t (no shift by one), or a decoder fed its labels unshifted as
``decoder_input_ids``, learns to copy. Its training and validation losses fall towards 0, every
causality check passes (the model *is* causal), and it cannot generate. What is wrong is the
pairing of outputs, targets and inputs, so the check measures exactly that, at init, without
training:
the target each output is scored against, read from the loss's gradient; the input that holds
it; and whether the output moves when that entry changes (``nnsanity._leak``).

Proves: no scored output depends on an input entry holding its own target, for this batch, at
the checked positions. Does NOT prove: that nothing else leaks the answer (a feature computed
from the label, a test sample in the training set), nor anything for losses that are not a
classification over classes or tokens (it then reports ``applies=False`` and passes).
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, fields
from typing import Any

import torch

from nnsanity._arguments import LossFn, check_number
from nnsanity._diagnosis import CONSISTENT, GENERIC, MEASURED, Cause
from nnsanity._harness import Harness
from nnsanity._leak import Form, measure_leak
from nnsanity._messages import Explanation, Msg, fail, indices, up_to
from nnsanity._perturbation import MAX_DEPENDENCE
from nnsanity._result import CheckResult, diagnosed


@dataclass(frozen=True, kw_only=True)
class TargetLeakResult(CheckResult):
    """Whether a scored output can read its own target from the inputs.

    ``applies`` is False (and ``reason`` says why) when the loss is not a classification whose
    targets an input could hold; the check then passes. Otherwise ``source`` is the input that
    holds the scored targets (``inputs['input_ids']``), ``offset`` where (the target of output
    position t sits at position t + offset of the source; for ``form="features"``, the column),
    ``agreement`` the fraction of the ``scored`` targets the source holds there, and
    ``changes[k]`` how far the scored outputs at ``positions[k]`` moved, relative to the largest
    output, when the source's entry holding their target changed. ``max_dependence`` bounds
    every change.
    """

    max_dependence: float
    applies: bool
    reason: str | None = None
    form: Form | None = None
    source: str | None = None
    source_is_label: bool = False  # the source is a label passed to the model (labels=)
    offset: int | None = None
    agreement: float | None = None
    chance: float | None = None  # agreement of two independent draws with the same frequencies
    scored: int = 0  # outputs the loss scores (non-zero gradient)
    scored_fraction: float = 0.0  # of all output positions
    positions: tuple[int, ...] = ()
    changes: tuple[float, ...] = ()
    loss_is_model_own: bool = False  # the model computes its loss (loss_fn=None)
    loss_at: str | None = None  # file:line of the function that pairs outputs with targets

    @property
    def leak_change(self) -> float:
        return max(self.changes, default=0.0)

    @property
    def passed(self) -> bool:
        return not self.applies or self.leak_change <= self.max_dependence


def _source_line(fn: Any) -> str | None:
    target = getattr(fn, "forward", fn) if isinstance(fn, torch.nn.Module) else fn
    try:
        path, line = inspect.getsourcefile(target), inspect.getsourcelines(target)[1]
    except (OSError, TypeError):
        return None
    return f"{os.path.basename(path)}:{line}" if path else None


def measure_target_leak(
    model: torch.nn.Module,
    batch: Any,
    loss_fn: LossFn | None = None,
    *,
    max_dependence: float = MAX_DEPENDENCE,
    output: Any = None,
    unpack: bool | None = None,
    seed: int = 0,
) -> TargetLeakResult:
    """Measure whether the outputs the loss scores can read their own targets from the inputs.

    ``batch`` and ``loss_fn`` as for the other loss checks (``(inputs, targets)`` with a
    ``loss_fn(outputs, targets)``, or a mapping whose labels the model's own loss reads). The
    model runs in eval mode. Shapes: outputs ``(B, T, C)`` (or ``(B, C, T)``) scored against
    ``(B, T)`` tokens, or ``(B, C)`` against ``(B,)`` classes with ``(B, F)`` feature inputs.
    """
    bound = check_number(max_dependence, "max_dependence", low=0, what="a number >= 0")
    h = Harness(model, batch, loss_fn, seed=seed, output=output, unpack=unpack)
    common: dict[str, Any] = dict(
        seed=h.seed,
        max_dependence=bound,
        loss_is_model_own=h.self_loss,
        loss_at=_source_line(model if loss_fn is None else loss_fn),
    )
    leak = measure_leak(h, bound)
    r = TargetLeakResult(**{f.name: getattr(leak, f.name) for f in fields(leak)}, **common)
    return diagnosed(r, _diagnose)


def assert_no_target_leak(
    model: torch.nn.Module,
    batch: Any,
    loss_fn: LossFn | None = None,
    *,
    max_dependence: float = MAX_DEPENDENCE,
    output: Any = None,
    unpack: bool | None = None,
    seed: int = 0,
    msg: Msg = None,
) -> TargetLeakResult:
    """Assert that no output the loss scores can read its own target from the inputs.

    For a causal LM this is the shift by one: the logits at t must be scored against token
    t + 1, which the model has not read yet. The check finds the target each output is scored
    against from the loss's gradient (so it reads the pairing the loss really makes, the
    user's ``loss_fn`` or the model's own), finds an input that holds those targets (the token
    ids, ``decoder_input_ids``, the labels passed to the model, or a feature column), changes it
    where it holds each target and requires the scored output to stay put (within
    ``max_dependence`` of the output scale; a healthy model reproduces it exactly). The model
    runs in eval mode, once backward and at most 8 more times forward per input that holds the
    targets; it is not trained.

    Applies to losses that score class or token outputs (cross-entropy, NLL, with or without
    label smoothing); for others, or when no input holds the targets, it passes with
    ``applies=False`` and the reason. An autoencoder, whose target is its input by design, is
    not a leak: do not run the check on it.

    Proves: no scored output depends on an input entry holding its target, for this batch.
    Does NOT prove: that nothing else carries the answer (a feature derived from the label,
    duplicates across splits).

    Source: Karpathy, "A Recipe for Training Neural Networks" (the network fails silently);
    the field reports of BartForCausalLM's unshifted loss (macrocosm-os/pretraining#64) and
    TransfoXL (huggingface/transformers#3711).

    Raises ``SanityError`` when the check fails, ``TypeError``/``ValueError`` on misuse.
    """
    __tracebackhide__ = True
    r = measure_target_leak(
        model, batch, loss_fn, max_dependence=max_dependence, output=output, unpack=unpack,
        seed=seed,
    )  # fmt: skip
    if not r.passed:
        fail(_explain(r), r, msg)
    return r


def _diagnose(r: TargetLeakResult) -> list[Cause]:
    d, src, at = r.offset, r.source or "the inputs", r.loss_at
    owner = "the model's own loss" if r.loss_is_model_own else "loss_fn"
    evidence = (
        f"{src} holds the target of {r.agreement:.0%} of the {r.scored} scored outputs "
        + (f"at column {d}" if r.form == "features" else f"at position t{d:+d}" if d else "at t")
        + f" (chance {r.chance:.0%})",
        f"changing it there moves the scored output by {r.leak_change:.3g} of the output scale",
    )
    causes = []
    if r.form == "features":
        causes.append(Cause(
            id="target_in_features",
            summary=f"column {d} of {src} is the target itself, so the model can read its answer",
            remedy="drop the label column from the features (or anything computed from it)",
            evidence=evidence, where=src, support=MEASURED,
        ))  # fmt: skip
        return causes
    decoder = "decoder" in src.lower()
    # a loss that scores a minority of the positions at the very positions that hold their
    # targets is a masked LM's: the inputs there should be masked, not the targets shifted
    masked_lm = d == 0 and r.scored_fraction < 0.5
    if masked_lm:
        causes.append(Cause(
            id="target_not_masked",
            summary=f"the loss scores {r.scored_fraction:.0%} of the positions, and {src} still "
            "holds the token to predict at each of them: the masked positions were not masked "
            "in the inputs",
            remedy="replace the inputs where labels != -100 by the mask token (as transformers' "
            "DataCollatorForLanguageModeling does: 80% [MASK], 10% random, 10% unchanged)",
            evidence=evidence, where=src, support=MEASURED,
        ))  # fmt: skip
    if decoder and d == 0:
        causes.append(Cause(
            id="decoder_inputs_not_shifted",
            summary=f"{src} are the labels unshifted: the decoder reads at t the token it must "
            "predict at t",
            remedy="shift them right by one with a start token first (transformers' "
            "shift_tokens_right(labels, pad_token_id, decoder_start_token_id)), or pass labels= "
            "alone and let the model build them",
            evidence=evidence, where=src, support=MEASURED,
        ))  # fmt: skip
    if d is not None and d <= 0:
        shift = "without the shift by one" if d == 0 else f"shifted the wrong way (by {d})"
        causes.append(Cause(
            id="loss_not_shifted",
            summary=f"{owner} scores the output at t against the token at t{d:+d}"
            if d else f"{owner} scores the output at t against the token at t, which the model "
            f"reads at t ({shift}): it learns to copy",
            remedy="score the logits at t against token t + 1: "
            "loss(logits[:, :-1], targets[:, 1:])",
            evidence=evidence, where=at,
            support=CONSISTENT if decoder or masked_lm else MEASURED,
        ))  # fmt: skip
    else:
        causes.append(Cause(
            id="model_sees_target",
            summary=f"the output at t reads {src} at t{d:+d}, which holds its target: the model "
            "looks ahead",
            remedy="mask attention to later positions (assert_causal localises it)",
            evidence=evidence, support=MEASURED,
        ))  # fmt: skip
    causes.append(Cause(
        id="labels_are_inputs",
        summary="the batch's labels are its inputs (Hugging Face's convention for causal LMs), "
        "so only the loss's shift keeps each target unseen",
        remedy="shift in one place only: either the loss or the data",
        support=GENERIC,
    ))  # fmt: skip
    return causes


def _explain(r: TargetLeakResult) -> Explanation:
    where = (
        f"column {r.offset} of {r.source}"
        if r.form == "features"
        else f"outputs at t scored against {r.source} at t{r.offset:+d}"
        if r.offset
        else f"outputs at t scored against {r.source} at t"
    )
    return Explanation(
        header="The outputs can read their own targets (a target leak)!",
        lines=[
            f"Scored outputs whose target {r.source} holds: {r.agreement:.0%} of {r.scored} "
            f"(chance {r.chance:.0%})",
            "Change of the scored output when that entry changes: "
            + up_to(f"{r.leak_change:.3g} of the output scale", f"{r.max_dependence:g}"),
            f"Checked {'columns' if r.form == 'features' else 't'} = {indices(r.positions)}",
        ],
        where=where + (f"; the loss pairs them in {r.loss_at}" if r.loss_at else ""),
        relax="max_dependence= (larger); or do not run it on a model whose task is to copy "
        "its input (an autoencoder)",
    )
