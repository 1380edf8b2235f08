"""Loss masking: padded positions do not count in a token-level loss.

A tagger, a language model or a seq2seq decoder outputs one prediction per position, and the
padding added to make a batch rectangular must not be predicted: a loss averaged over it (a
cross-entropy without ``ignore_index``, labels copied from ``input_ids`` with the pad id left in)
trains the model to predict padding, dilutes the real tokens' loss by however much padding each
batch has, and inflates token accuracy. Training still runs and the loss still falls.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from nnsanity._arguments import LossFn, check_number
from nnsanity._diagnosis import CONSISTENT, GENERIC, MEASURED, Cause, cause
from nnsanity._harness import Harness
from nnsanity._messages import Explanation, Msg, fail, up_to
from nnsanity._padding import (
    IGNORE_INDEX,
    at_positions,
    check_padding,
    find_padding,
    position_dim,
    target_padding,
)
from nnsanity._perturbation import MAX_DEPENDENCE
from nnsanity._result import CheckResult, diagnosed
from nnsanity._state import autograd
from nnsanity._structures import LABEL_KEYS


@dataclass(frozen=True, kw_only=True)
class LossMaskingResult(CheckResult):
    """How much the loss depends on the outputs at padded positions.

    ``dependence`` is the largest gradient of the loss with respect to an output at a judged
    padded position, relative to the largest at a real position (0 when the loss ignores the
    padding). A padded position is judged when the position after it is padded too, or it is
    the last: the output there predicts padding even in a causal LM whose loss shifts the
    targets by one.
    """

    max_dependence: float  # the bound on ``dependence``
    dependence: float
    padding_share: float  # share of the loss's gradient (L1) on the judged padded positions
    judged: int  # padded positions judged
    padded: int  # padded positions in the batch
    positions: int  # all positions (batch x length)
    padded_targets: tuple[int, ...]  # the distinct targets at the judged positions (up to 5)
    source: str  # where the padding was found
    self_loss: bool  # the model computes its own loss (Hugging Face labels)
    loss: float

    @property
    def passed(self) -> bool:
        return self.dependence <= self.max_dependence


def _targets_at(h: Harness, judged: torch.Tensor) -> tuple[int, ...]:
    """The distinct integer targets at the judged positions, when targets are (B, T)."""
    targets = h.targets
    if isinstance(targets, Mapping):
        targets = next((targets[k] for k in LABEL_KEYS if k in targets), None)
    if not isinstance(targets, torch.Tensor) or targets.is_floating_point():
        return ()
    if tuple(targets.shape) != tuple(judged.shape):
        return ()
    values = torch.unique(targets[judged.to(targets.device)]).tolist()
    return tuple(int(v) for v in values[:5])


def measure_loss_masking(
    model: torch.nn.Module,
    batch: Any,
    loss_fn: LossFn | None = None,
    *,
    padding: Any = None,
    max_dependence: float = MAX_DEPENDENCE,
    output: Any = None,
    unpack: bool | None = None,
    seed: int = 0,
) -> LossMaskingResult:
    """Measure the gradient of the loss at the outputs of padded positions; see the assert."""
    bound = check_number(max_dependence, "max_dependence", low=0, what="a number >= 0")
    pad_arg = check_padding(padding)
    h = Harness(model, batch, loss_fn, seed=seed, output=output, unpack=unpack)
    with h.isolated(train=True):
        # nothing is changed at the padding; an encoder-decoder's is its targets'
        pad = target_padding(h, pad_arg) or find_padding(h, pad_arg, readers=False)
        b, t = pad.shape
        with autograd():
            outputs = h.forward()
            logits = h.logits(outputs)
            dim = position_dim(logits.shape, b, t)
            if dim is None:
                raise ValueError(
                    f"the output judged has shape {tuple(logits.shape)}, with no position dim of "
                    f"the padding's ({b}, {t}): loss masking concerns one prediction per position "
                    "(a tagger, a language model). For a decoder whose positions are not the "
                    "inputs', pass padding= (a bool mask of the output's padded positions, e.g. "
                    "labels == -100); output= picks another output."
                )
            loss = h.graph_loss(outputs)
            (grad,) = torch.autograd.grad(loss, [logits], allow_unused=True)
    if grad is None:
        raise ValueError(
            f"the loss does not depend on the output judged (shape {tuple(logits.shape)}); pass "
            "output= naming the output the loss is computed from."
        )
    size = at_positions(grad.detach().abs().double(), dim).nan_to_num(nan=float("inf"))
    per_position = size.amax(-1).cpu()  # (B, T)
    mask = pad.mask.cpu()
    after = torch.cat([mask[:, 1:], torch.ones(b, 1, dtype=torch.bool)], 1)
    judged = mask & after
    real_max = float(per_position[~mask].max())
    pad_max = float(per_position[judged].max()) if bool(judged.any()) else 0.0
    # A loss that reads no real position either: any gradient on padding is an infinite share.
    dependence = pad_max / real_max if real_max > 0 else float("inf") if pad_max > 0 else 0.0
    mass = size.sum(-1).cpu()
    total = float(mass.sum())
    r = LossMaskingResult(
        seed=h.seed,
        max_dependence=bound,
        dependence=dependence,
        padding_share=float(mass[judged].sum()) / total if total > 0 else 0.0,
        judged=int(judged.sum()),
        padded=int(mask.sum()),
        positions=mask.numel(),
        padded_targets=_targets_at(h, judged),
        source=pad.source,
        self_loss=h.self_loss,
        loss=float(loss.detach()),
    )
    return diagnosed(r, _diagnose)


def assert_loss_masks_padding(
    model: torch.nn.Module,
    batch: Any,
    loss_fn: LossFn | None = None,
    *,
    padding: Any = None,
    max_dependence: float = MAX_DEPENDENCE,
    output: Any = None,
    unpack: bool | None = None,
    seed: int = 0,
    msg: Msg = None,
) -> LossMaskingResult:
    """Assert that the loss does not count the predictions at padded positions.

    The padding is found as by ``assert_ignores_padding``: ``padding=`` (a bool ``(B, T)``
    mask, True at padded positions, or the pad token id), else an ``attention_mask`` among the
    inputs (0 = padding), else an ``nn.Embedding(padding_idx=p)`` (token id p); for an
    encoder-decoder (labels holding -100 on the output's positions, and no ``attention_mask``
    of those positions or a config saying ``is_encoder_decoder``), ``labels == -100``: the
    source's mask is not the targets'. In one train-mode
    forward, the gradient of the loss with respect to the judged output (the logits: ``(B, T,
    ...)``, or ``(B, C, T)`` as ``F.cross_entropy`` takes them) must be at most
    ``max_dependence`` times the largest gradient at a real position, at every padded position
    whose next position is padded too (or that is the last). That rule keeps a causal LM whose
    loss shifts the targets by one (Hugging Face's) from being judged on the last padded
    position of a left-padded row, whose output predicts the first real token.

    Why the gradient and not the loss under changed targets: the usual fix marks the padded
    targets as ignored (``ignore_index=PAD``, or ``-100`` in the labels), so a changed target
    there would be a real one and change the loss of a correct model. The outputs at padded
    positions can be changed freely; the gradient says at once whether the loss reads them.
    An ignored or masked position has an exactly zero gradient (cross-entropy's ignore_index,
    a multiplication by a 0 mask), so the bound 1e-5 (``_perturbation.MAX_DEPENDENCE``) leaves
    room only for rounding, while a counted position gets a gradient of the order of a real
    one's (0.0 measured on GPT-2 and Llama right- and left-padded, T5's decoder, the label-
    smoothing LM and a GRU tagger with their padding ignored; 0.93 to 1.0 on the tagger, GPT-2
    and Llama with the pad id left in the targets).

    Proves: on this batch, the loss gives the padded positions' predictions no weight. Does not
    prove: the loss is correct at real positions, nor that the outputs there ignore the padding
    (``assert_ignores_padding``). Needs an output with one prediction per position.

    Raises ``SanityError`` when the check fails, ``TypeError``/``ValueError`` on misuse (no
    padding found or none in the batch, no per-position output).
    """
    __tracebackhide__ = True
    r = measure_loss_masking(
        model, batch, loss_fn, padding=padding, max_dependence=max_dependence, output=output,
        unpack=unpack, seed=seed,
    )  # fmt: skip
    if not r.passed:
        fail(_explain(r), r, msg)
    return r


def _ignore_cause(r: LossMaskingResult) -> str:
    values = r.padded_targets
    if len(values) == 1 and values[0] != IGNORE_INDEX:
        return (
            f"a token loss without ignore_index: the targets at padded positions hold {values[0]}"
            f", which the loss counts (ignore_index defaults to {IGNORE_INDEX}). Pass "
            f"ignore_index={values[0]} to F.cross_entropy / nn.CrossEntropyLoss, or pad the "
            f"targets with {IGNORE_INDEX}"
        )
    return (
        "a token loss without ignore_index: pad the targets with -100 (the default "
        "ignore_index of F.cross_entropy) or pass ignore_index=<the pad id>"
    )


def _diagnose(r: LossMaskingResult) -> list[Cause]:
    values = r.padded_targets
    pad_value = len(values) == 1 and values[0] != IGNORE_INDEX
    ignore = cause(
        "no_ignore_index", _ignore_cause(r), MEASURED if pad_value else GENERIC,
        evidence=(f"the targets at padded positions hold {values[0]}",) if pad_value else (),
    )  # fmt: skip
    hf = cause(
        "hf_labels_not_masked",
        "labels at padded positions are not -100: a Hugging Face model's loss ignores only -100, "
        "never the attention mask. Set labels[attention_mask == 0] = -100 (as "
        "DataCollatorForLanguageModeling and DataCollatorForSeq2Seq do; a copy of input_ids keeps "
        "the pad id)", MEASURED if pad_value else CONSISTENT,
        evidence=ignore.evidence,
    )  # fmt: skip
    masked = cause(
        "wrong_loss_mask",
        "a masked loss that multiplies by the wrong mask (inverted, or the attention mask of "
        "other positions): (loss * m).sum() / m.sum() with m = 1 at real positions",
    )
    other = cause(
        "per_position_loss_unmasked",
        "a per-position loss without ignore_index (MSE, BCE): multiply it by the real-position "
        "mask before reducing",
    )
    return [hf, masked] if r.self_loss else [ignore, masked, other]


def _explain(r: LossMaskingResult) -> Explanation:
    size = "inf" if r.dependence == float("inf") else f"{r.dependence:.3g}"
    targets = ", ".join(str(v) for v in r.padded_targets) or "not read (no (B, T) targets)"
    return Explanation(
        header="The loss counts the padded positions!",
        lines=[
            "Gradient of the loss at a padded position's output: "
            + up_to(f"{size} of the largest at a real position", f"{r.max_dependence:g}"),
            f"Share of the loss's gradient on padding: {r.padding_share:.0%} "
            f"({r.judged} padded positions judged)",
            f"Targets at the padded positions: {targets}",
            f"Padding: {r.source}, {r.padded} of {r.positions} positions",
        ],
        relax="max_dependence= (larger); padding= says where the padding is, if it was found "
        "wrongly.",
    )
