"""Whether an output the loss scores can read its own target from the inputs: the measurement
behind ``assert_no_target_leak``, shared with the checks whose verdict a leak would fake
(``assert_learns_signal``: a model that copies its target "generalises" to any holdout).

1. **Which target each output is scored against.** One backward of the loss to the logits: for
   a cross-entropy-like loss the gradient at an output is ``softmax - onehot(target)`` (label
   smoothing included), so its most negative entry is the target's class, and an output with a
   zero gradient is not scored. This reads the pairing the loss really makes, whether the user's
   ``loss_fn`` or the model's own loss does the shifting.
2. **Which input holds those targets.** An integer input (token ids, the labels passed to the
   model) equal to the scored targets at a fixed offset along the sequence (at least
   ``_AGREEMENT`` of the scored positions, far above chance), or an input feature column equal
   to a classifier's target for every sample.
3. **Whether the output can read it.** That input entry is changed (at up to ``_POSITIONS``
   positions, one forward each) and the scored output must not move: a correctly shifted causal
   LM reproduces it bit for bit, since the token it predicts comes after it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from nnsanity._harness import Harness
from nnsanity._outputs import class_dim
from nnsanity._perturbation import _different
from nnsanity._state import autograd
from nnsanity._structures import Path, describe, select_output
from nnsanity.seeding import seed_torch

# a leak copies the targets exactly (1.0); a denoising objective whose input differs from its
# targets at 5% or more of the positions is a copy task by design and stays out.
_AGREEMENT = 0.95
# ... and agree beyond chance: Cohen's kappa, (agreement - chance) / (1 - chance), with chance
# the agreement of independent draws with the same frequencies, at least _KAPPA (a balanced
# binary label copied at 95% gives 0.9), so that a batch of near-constant values proves nothing.
_KAPPA = 0.5
_MIN_SCORED = 4  # fewer scored targets than this cannot show a systematic pairing
_OFFSETS = range(-2, 3)  # where along the sequence an input may hold the target of position t
# A copy holds the targets at one offset only. Where the targets also repeat at another lag
# (periodic or constant sequences: the token at t - 2 equals the token at t), an output that
# reads the past legitimately would look like one that reads its target, so a source counts
# only when its agreement at every other lag up to _LAGS is below _REPEATS.
_LAGS, _REPEATS = 4, 0.5
_POSITIONS = 8  # positions changed, spread over the sequence: one forward each

Form = Literal["sequence", "features"]


def _binary(logits: torch.Tensor) -> bool:
    """One score per sample, (B,) or (B, 1): a binary classifier's logit (or a regression)."""
    return logits.dim() == 1 or (logits.dim() == 2 and logits.shape[1] == 1)


def scores(t: torch.Tensor, dim: int) -> torch.Tensor:
    """``t`` as float64 with its class dim last; a binary output as (B, 1)."""
    t = t.detach().double()
    return t.reshape(t.shape[0], 1) if _binary(t) else t.movedim(dim, -1)


def _binary_targets(grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int] | str:
    """A binary logit's gradient is sigmoid(z) - y (BCE, on logits or probabilities alike):
    negative exactly where the target is 1."""
    g = scores(grad, -1)[:, 0]
    scored = g != 0
    if int(scored.sum()) < _MIN_SCORED:
        return f"fewer than {_MIN_SCORED} outputs are scored"
    return (g < 0).long(), scored, -1


def _scored_targets(
    h: Harness, logits: torch.Tensor, loss: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, int] | str:
    """(the class each output is scored against, which outputs are scored, the class dim), from
    the loss's gradient with respect to the logits; or why that cannot be read."""
    if not logits.is_floating_point() or logits.dim() < 1 or not logits.requires_grad:
        return "the output it reads is not a floating-point tensor of class scores in the graph"
    (grad,) = torch.autograd.grad(loss, logits, allow_unused=True)
    if grad is None:
        return "the loss does not depend on the output the check reads (pass output=)"
    if _binary(logits):
        return _binary_targets(grad)
    found = class_dim(logits, None if h.self_loss else h.targets)
    dim = logits.dim() - 1 if found is None else found
    if logits.shape[dim] < 2:
        return "the output has a single score per position (a regression or binary output)"
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


def _determined(column: torch.Tensor, classes: torch.Tensor) -> float:
    """How far a feature column is a function of the class that tells the classes apart: the
    fraction of samples holding their class's most common value of the column, where those
    values differ between classes (else 0). The label itself, standardised or one-hot, gives 1;
    a continuous feature, whose values are all distinct, about (classes / samples)."""
    modes, held = [], 0
    for c in classes.unique():
        values, counts = column[classes == c].unique(return_counts=True)
        modes.append(float(values[counts.argmax()]))
        held += int(counts.max())
    return held / len(classes) if len(set(modes)) == len(modes) else 0.0


def _kappa(agreement: float, chance: float) -> float:
    return (agreement - chance) / (1 - chance)


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
            at: dict[int, tuple[float, float]] = {}
            for d in range(-_LAGS, _LAGS + 1):
                lo, hi = max(0, -d), min(n, n - d)
                mask = scored[:, lo:hi] if hi > lo else scored[:, :0]
                if int(mask.sum()) < _MIN_SCORED:
                    continue
                held, want = x[:, lo + d : hi + d][mask.to(x.device)], cls[:, lo:hi][mask]
                agree = float((held.cpu() == want).double().mean())
                at[d] = agree, _chance(held.cpu(), want)
            for d in _OFFSETS:
                others = [a for k, (a, _) in at.items() if k != d]
                if d in at and max(others, default=0.0) < _REPEATS:
                    found.append((path, x, is_label, d, *at[d]))
        elif cls.dim() == 1:
            want = cls[scored].to(x.device)
            if want.unique().numel() < 2:
                continue  # one class in the batch: any constant column would "hold" it
            want = want.cpu()
            shuffled = want[torch.randperm(len(want), generator=torch.Generator().manual_seed(0))]
            for j in range(x.shape[1]):
                held = x[:, j][scored.to(x.device)].detach().cpu().double()
                agree = _determined(held, want)
                found.append((path, x, is_label, j, agree, _determined(held, shuffled)))
    return sorted(
        (c for c in found if c[4] >= _AGREEMENT and c[5] < 1 and _kappa(c[4], c[5]) >= _KAPPA),
        key=lambda c: -c[4],
    )


def _changed(x: torch.Tensor, where: tuple[slice | int, ...], g: torch.Generator) -> torch.Tensor:
    """``x`` with the entries at ``where`` moved to other plausible values (``_different``:
    another token of the batch, or a float redrawn)."""
    out = x.clone()
    out[where] = _different(x, g, "the input holding the targets")[where]
    return out


def _spread(ok: list[int]) -> list[int]:
    picks = torch.linspace(0, len(ok) - 1, min(_POSITIONS, len(ok))).round().long()
    return sorted({ok[int(i)] for i in picks})


@dataclass(frozen=True, kw_only=True)
class Leak:
    """What ``measure_leak`` found; see ``TargetLeakResult`` for the fields."""

    applies: bool
    reason: str | None = None
    form: Form | None = None
    source: str | None = None
    source_is_label: bool = False
    offset: int | None = None
    agreement: float | None = None
    chance: float | None = None
    scored: int = 0
    scored_fraction: float = 0.0  # of the output positions (a masked LM scores ~15%)
    positions: tuple[int, ...] = ()
    changes: tuple[float, ...] = ()

    def found(self, bound: float) -> bool:
        return self.applies and max(self.changes, default=0.0) > bound


def measure_leak(h: Harness, bound: float) -> Leak:
    """Whether the outputs ``h``'s loss scores can read their own targets; the model runs in
    eval mode with its state and the RNGs restored afterwards."""
    g = torch.Generator().manual_seed(h.seed)
    with h.isolated(train=False):
        seed_torch(h.seed)
        with autograd():
            outputs = h.forward()
            if not h.has_loss(outputs):  # a detector: detections in eval mode, losses in train
                return Leak(
                    applies=False,
                    reason=f"{type(h.model).__name__} computes its loss only in train mode, "
                    "where it returns its losses alone (a torchvision-style detector): no output "
                    "scored by the loss to read",
                )
            logits = h.logits(outputs)
            read = _scored_targets(h, logits, h.loss(outputs))
        if isinstance(read, str):
            return Leak(applies=False, reason=read)
        cls, scored, dim = read
        cls, scored = cls.cpu(), scored.cpu()
        if cls.dim() not in (1, 2):
            shape = tuple(logits.shape)
            return Leak(
                applies=False, reason=f"outputs of shape {shape} are neither (B, C) nor (B, T, C)"
            )
        sources = [(p, t, False) for p, t in h.data_leaves()]
        sources += [
            ((k,), v, True) for k, v in h.call_labels.items() if isinstance(v, torch.Tensor)
        ]
        found = _candidates(sources, cls, scored)
        if not found:
            return Leak(
                applies=False,
                reason="no input holds the scored targets (tokens at a fixed offset along the "
                "sequence, or a feature column)",
            )
        base = scores(logits, dim)
        scale = float(base.abs().amax()) or 1.0

        def outputs_with(path: Path, is_label: bool, changed: torch.Tensor) -> torch.Tensor:
            seed_torch(h.seed)
            with torch.no_grad():
                if is_label:
                    out = h.forward(labels={**h.call_labels, path[0]: changed})
                else:
                    out = h.forward(h.map_data(lambda p, t: changed if p == path else t))
            return scores(select_output(out, h.output)[0], dim)

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
    return Leak(
        applies=True,
        form="sequence" if cls.dim() == 2 else "features",
        source=describe(path, "batch" if is_label else "inputs"),
        source_is_label=is_label,
        offset=d,
        agreement=agree,
        chance=chance,
        scored=int(scored.sum()),
        scored_fraction=float(scored.double().mean()),
        positions=positions,
        changes=moved_by,
    )
