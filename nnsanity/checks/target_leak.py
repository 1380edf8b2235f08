"""Target leak: the output scored against a target must not be able to read that target.

Karpathy's recipe warns that a network "fails silently": a causal LM whose loss compares the
logits at t with the token at t (no shift by one), or a decoder fed its labels unshifted as
``decoder_input_ids``, learns to copy. Its training and validation losses fall towards 0, every
causality check passes (the model *is* causal), and it cannot generate. What is wrong is the
pairing of outputs, targets and inputs, so the check measures exactly that, at init, without
training:

1. **Which target each output is scored against.** One backward of the loss to the logits: for
   a cross-entropy-like loss the gradient at an output is ``softmax - onehot(target)`` (label
   smoothing included), so its most negative entry is the target's class, and an output with a
   zero gradient is not scored. This reads the pairing the loss really makes, whether the user's
   ``loss_fn`` or the model's own loss does the shifting.
2. **Which input holds those targets.** An integer input (token ids, the labels passed to the
   model) that equals the scored targets at a fixed offset along the sequence (at least
   ``_AGREEMENT`` of the scored positions, far above chance), or an input feature column equal
   to a classifier's target for every sample.
3. **Whether the output can read it.** That input entry is changed (at up to 8 positions, one
   forward each) and the scored output must not move: a correctly shifted causal LM reproduces
   it bit for bit, since the token it predicts comes after it.

Proves: no scored output depends on an input entry holding its own target, for this batch, at
the checked positions. Does NOT prove: that nothing else leaks the answer (a feature computed
from the label, a test sample in the training set), nor anything for losses that are not a
classification over classes or tokens (it then reports ``applies=False`` and passes).
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from typing import Any, Literal

import torch

from nnsanity._arguments import LossFn, check_number
from nnsanity._diagnosis import CONSISTENT, GENERIC, MEASURED, Cause
from nnsanity._harness import Harness
from nnsanity._messages import Explanation, Msg, fail, indices, up_to
from nnsanity._outputs import class_dim
from nnsanity._perturbation import MAX_DEPENDENCE
from nnsanity._result import CheckResult, diagnosed
from nnsanity._state import autograd
from nnsanity._structures import Path, describe, select_output
from nnsanity.seeding import seed_torch

# An input "holds the targets" when it equals them at this fraction of the scored positions:
# a leak copies the targets exactly (1.0); a denoising objective whose input differs from its
# targets at 5% or more of the positions is a copy task by design and stays out.
_AGREEMENT = 0.95
# ... and the agreement must exceed chance (two random tokens with these frequencies being
# equal) by this much, so that a batch of near-constant tokens proves nothing.
_ABOVE_CHANCE = 0.5
_MIN_SCORED = 4  # fewer scored targets than this cannot show a systematic pairing
_OFFSETS = range(-2, 3)  # where along the sequence an input may hold the target of position t
_POSITIONS = 8  # positions changed, spread over the sequence: one forward each

Form = Literal["sequence", "features"]


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


def _scored_targets(
    h: Harness, logits: torch.Tensor, loss: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, int] | str:
    """(the class each output is scored against, which outputs are scored, the class dim), from
    the loss's gradient with respect to the logits; or why that cannot be read."""
    if not logits.is_floating_point() or logits.dim() < 2 or not logits.requires_grad:
        return "the output it reads is not a floating-point tensor of class scores in the graph"
    (grad,) = torch.autograd.grad(loss, logits, allow_unused=True)
    if grad is None:
        return "the loss does not depend on the output the check reads (pass output=)"
    found = class_dim(logits, None if h.self_loss else h.targets)
    dim = logits.dim() - 1 if found is None else found
    if logits.shape[dim] < 2:
        return "the output has a single class score per position (a regression or binary output)"
    g = grad.detach().movedim(dim, -1).double()
    scored = g.abs().amax(-1) > 0
    low, cls = g.min(-1)
    # Cross-entropy's gradient is negative at the target's class alone (softmax - onehot); a
    # loss whose gradient is not of that form is not a classification against one class.
    scored &= low < 0
    if int(scored.sum()) < _MIN_SCORED:
        return f"fewer than {_MIN_SCORED} outputs are scored against a class"
    return cls, scored, dim


def _chance(a: torch.Tensor, b: torch.Tensor) -> float:
    """P(a == b) for independent draws with the empirical frequencies of ``a`` and ``b``."""
    values = torch.cat([a, b]).unique()
    pa = (a.unsqueeze(1) == values).double().mean(0)
    pb = (b.unsqueeze(1) == values).double().mean(0)
    return float((pa * pb).sum())


# (path, tensor, is a label passed to the model, offset or column, agreement, chance)
Candidate = tuple[Path, torch.Tensor, bool, int, float, float]


def _candidates(
    sources: list[tuple[Path, torch.Tensor, bool]], cls: torch.Tensor, scored: torch.Tensor
) -> list[Candidate]:
    """The inputs holding the scored targets: (path, tensor, is a label, offset, agreement,
    chance), best agreement first."""
    found = []
    for path, x, is_label in sources:
        if x.is_complex() or x.dtype == torch.bool or x.dim() != 2 or x.shape[0] != cls.shape[0]:
            continue
        if cls.dim() == 2 and not x.is_floating_point() and x.shape[1] == cls.shape[1]:
            n = cls.shape[1]
            for d in _OFFSETS:
                lo, hi = max(0, -d), min(n, n - d)
                if hi <= lo:
                    continue
                mask = scored[:, lo:hi]
                if int(mask.sum()) < _MIN_SCORED:
                    continue
                held, want = x[:, lo + d : hi + d][mask], cls[:, lo:hi][mask].to(x.device)
                agree = float((held == want).double().mean())
                found.append((path, x, is_label, d, agree, _chance(held.cpu(), want.cpu())))
        elif cls.dim() == 1:
            want = cls[scored].to(x.device)
            if want.unique().numel() < 2:
                continue  # one class in the batch: any constant column would "hold" it
            for j in range(x.shape[1]):
                held = x[:, j][scored.to(x.device)]
                agree = float((held.double() == want.double()).double().mean())
                found.append(
                    (path, x, is_label, j, agree, _chance(held.cpu().double(), want.cpu().double()))
                )
    return sorted(
        (c for c in found if c[4] >= _AGREEMENT and c[4] - c[5] >= _ABOVE_CHANCE),
        key=lambda c: -c[4],
    )


def _changed(x: torch.Tensor, where: tuple[slice | int, ...], g: torch.Generator) -> torch.Tensor:
    """``x`` with the entries at ``where`` moved to another value (another token of the batch,
    or a float shifted by a few standard deviations)."""
    out = x.clone()
    part = out[where]
    if x.is_floating_point():
        std = float(x.double().std()) or 1.0
        out[where] = part + 3 * std * (1 + torch.rand(part.shape, generator=g)).to(x)
        return out
    values = torch.unique(x)
    shift = torch.randint(1, values.numel(), part.shape, generator=g).to(x.device)
    out[where] = values[(torch.searchsorted(values, part.contiguous()) + shift) % values.numel()]
    return out


def _source_line(fn: Any) -> str | None:
    target = getattr(fn, "forward", fn) if isinstance(fn, torch.nn.Module) else fn
    try:
        path, line = inspect.getsourcefile(target), inspect.getsourcelines(target)[1]
    except (OSError, TypeError):
        return None
    return f"{os.path.basename(path)}:{line}" if path else None


def _spread(ok: list[int]) -> list[int]:
    picks = torch.linspace(0, len(ok) - 1, min(_POSITIONS, len(ok))).round().long()
    return sorted({ok[int(i)] for i in picks})


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
    g = torch.Generator().manual_seed(h.seed)
    with h.isolated(train=False):
        seed_torch(h.seed)
        with autograd():
            outputs = h.forward()
            logits = h.logits(outputs)
            read = _scored_targets(h, logits, h.loss(outputs))
        if isinstance(read, str):
            return TargetLeakResult(applies=False, reason=read, **common)
        cls, scored, dim = read
        cls, scored = cls.cpu(), scored.cpu()
        if cls.dim() not in (1, 2):
            shape = tuple(logits.shape)
            return TargetLeakResult(
                applies=False, reason=f"outputs of shape {shape} are neither (B, C) nor (B, T, C)",
                **common,
            )  # fmt: skip
        sources = [(p, t, False) for p, t in h.data_leaves()]
        sources += [
            ((k,), v, True) for k, v in h.call_labels.items() if isinstance(v, torch.Tensor)
        ]
        found = _candidates(sources, cls, scored)
        if not found:
            return TargetLeakResult(
                applies=False,
                reason="no input holds the scored targets (tokens at a fixed offset along the "
                "sequence, or a feature column)",
                **common,
            )
        base = logits.detach().movedim(dim, -1).double()
        scale = float(base.abs().amax()) or 1.0

        def outputs_with(path: Path, is_label: bool, changed: torch.Tensor) -> torch.Tensor:
            seed_torch(h.seed)
            with torch.no_grad():
                if is_label:
                    out = h.forward(labels={**h.call_labels, path[0]: changed})
                else:
                    out = h.forward(h.map_data(lambda p, t: changed if p == path else t))
            return select_output(out, h.output)[0].detach().movedim(dim, -1).double()

        best: tuple[Candidate, tuple[int, ...], tuple[float, ...]] | None = None
        for cand in found:
            path, x, is_label, d = cand[:4]
            changes = []
            if cls.dim() == 2:  # change the source at s + d, read the outputs scored at s
                ok = [
                    s for s in range(cls.shape[1]) if 0 <= s + d < x.shape[1] and scored[:, s].any()
                ]
                positions = tuple(_spread(ok))
                for s in positions:
                    new = outputs_with(path, is_label, _changed(x, (slice(None), s + d), g))
                    moved = (new[:, s] - base[:, s]).abs().amax(-1)[scored[:, s]]
                    changes.append(float(moved.amax()) / scale)
            else:  # change the feature column, read every scored output
                positions = (d,)
                new = outputs_with(path, is_label, _changed(x, (slice(None), d), g))
                changes.append(float((new - base).abs().amax(-1)[scored].amax()) / scale)
            if best is None or max(changes) > max(best[2]):
                best = (cand, positions, tuple(changes))
            if max(changes) > bound:
                break
    assert best is not None
    (path, _, is_label, d, agree, chance), positions, moved_by = best
    r = TargetLeakResult(
        applies=True,
        form="sequence" if cls.dim() == 2 else "features",
        source=describe(path, "batch" if is_label else "inputs"),
        source_is_label=is_label,
        offset=d,
        agreement=agree,
        chance=chance,
        scored=int(scored.sum()),
        positions=positions,
        changes=moved_by,
        **common,
    )
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
            evidence=evidence, where=at, support=CONSISTENT if decoder else MEASURED,
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
