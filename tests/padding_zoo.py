"""Healthy padded batches: the models that must pass the padding checks, as people pad them.

The real-architecture zoo's batches are mostly unpadded (a pre-training chunk has none), so the
padding checks get these: the same architectures fed sequences of unequal lengths, padded on the
right or the left with their labels set to -100 at the padding (what Hugging Face's collators
do), a packed LSTM told its padding by a mask, and a masked transformer classifier and a packed
tagger written as a user would. Each entry: ``(build, batch, loss_fn or None, padding=)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import architectures as A
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

PAD = 0
LENGTHS = (12, 9, 7, 12, 5, 10, 4, 8)  # two sequences without padding


def token_batch(vocab: int, t: int = 12, left: bool = False, seed: int = 1):
    """Random ids padded with PAD (right, or left), and the mask of real positions."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (len(LENGTHS), t), generator=g)
    lengths = torch.tensor(LENGTHS)
    real = torch.arange(t) < lengths[:, None]
    if left:
        real = real.flip(1)
    ids[~real] = PAD
    return ids, real


def hf_batch(left: bool = False, pad_labels: bool = False) -> dict[str, torch.Tensor]:
    """A tokenizer-style batch for the zoo's HF models; labels -100 at the padding unless
    ``pad_labels`` (the bug: labels copied from input_ids, pad id left in)."""
    ids, real = token_batch(A.VOCAB, A.T, left)
    labels = ids.clone()
    if not pad_labels:
        labels[~real] = -100
    return {"input_ids": ids, "attention_mask": real.long(), "labels": labels}


class MaskedClassifier(nn.Module):
    """A transformer sentence classifier that masks its padding: key_padding_mask True at PAD,
    mean pooling over the real tokens only."""

    def __init__(self, vocab: int = 30, d: int = 32, classes: int = 4, inverted: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.inverted = inverted
        self.emb = nn.Embedding(vocab, d, padding_idx=PAD)
        self.pos = nn.Parameter(torch.randn(12, d) * 0.02)
        self.enc = nn.TransformerEncoderLayer(d, 4, 64, dropout=0.1, batch_first=True)
        self.head = nn.Linear(d, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        real = ids != PAD
        h = self.emb(ids) + self.pos[: ids.shape[1]]
        h = self.enc(h, src_key_padding_mask=real if self.inverted else ~real)
        pooled = (h * real.unsqueeze(-1)).sum(1) / real.sum(1, keepdim=True)
        return self.head(pooled)


def sentences() -> tuple[torch.Tensor, torch.Tensor]:
    ids, _ = token_batch(30)
    return ids, torch.randint(0, 4, (len(LENGTHS),), generator=torch.Generator().manual_seed(2))


class PackedTagger(nn.Module):
    """A bidirectional GRU tagger that packs its padded batch, one tag per token."""

    def __init__(self, vocab: int = 30, tags: int = 6, d: int = 32):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(vocab, d, padding_idx=PAD)
        self.rnn = nn.GRU(d, d, batch_first=True, bidirectional=True)
        self.out = nn.Linear(2 * d, tags)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        lengths = (ids != PAD).sum(1).cpu()
        packed = pack_padded_sequence(
            self.emb(ids), lengths, batch_first=True, enforce_sorted=False
        )
        h, _ = pad_packed_sequence(self.rnn(packed)[0], batch_first=True, total_length=ids.shape[1])
        return self.out(h)  # (B, T, tags)


def tagged() -> tuple[torch.Tensor, torch.Tensor]:
    ids, real = token_batch(30)
    tags = torch.randint(1, 6, ids.shape, generator=torch.Generator().manual_seed(2))
    return ids, tags.masked_fill(~real, PAD)


def tag_loss(logits: torch.Tensor, tags: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.transpose(1, 2), tags, ignore_index=PAD)


def _smoothed_padded() -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    ids, real = token_batch(40)
    labels = torch.cat([ids[:, 1:], torch.full((len(LENGTHS), 1), -100)], 1)
    labels[~real] = -100
    return {"input_ids": ids, "attention_mask": real.long()}, labels


def _lstm_padding() -> torch.Tensor:
    (x, lengths), _ = A._sequences()
    return torch.arange(x.shape[1]) >= lengths[:, None]


Case = tuple[Callable[[], nn.Module], Callable[[], Any], Any, Callable[[], Any] | None]

# name -> (build, batch, loss_fn (None: the model's own), padding= or None)
INVARIANT: dict[str, Case] = {
    "bert_classifier": (A._bert, A._bert_batch, None, None),
    "t5": (A._t5, A._t5_batch, None, None),
    "bart": (A._bart, A._seq2seq_batch, None, None),
    "gpt2_right_padded": (A._gpt2, hf_batch, None, None),
    "llama_left_padded": (A._llama, lambda: hf_batch(left=True), None, None),
    "label_smoothing_lm_padded": (A._smoothed_lm, _smoothed_padded, A._smoothed_loss, None),
    "packed_lstm": (A._packed_lstm, A._sequences, F.mse_loss, _lstm_padding),
    "masked_transformer_classifier": (MaskedClassifier, sentences, F.cross_entropy, None),
    "packed_tagger": (PackedTagger, tagged, tag_loss, None),
}
# The cases with one prediction per position, for the loss-masking check.
MASKED_LOSS = {
    k: INVARIANT[k]
    for k in (
        "gpt2_right_padded",
        "llama_left_padded",
        "label_smoothing_lm_padded",
        "packed_tagger",
    )
}
# encoder-decoders with their targets padded with -100: the padding found from the labels
for _name, _build, _batch in (
    ("t5_targets_padded", A._t5, lambda: {**A._t5_batch(), "labels": _t5_padded_labels()}),
    ("bart", A._bart, A._seq2seq_batch),
    ("whisper", A._whisper, A._whisper_batch),
):
    MASKED_LOSS[_name] = (_build, _batch, None, None)
MASKED_LOSS["t5_decoder_padding"] = (
    A._t5,
    lambda: {**A._t5_batch(), "labels": _t5_padded_labels()},
    None,
    lambda: _t5_padded_labels() == -100,
)


def _t5_padded_labels() -> torch.Tensor:
    labels = A._t5_batch()["labels"].clone()
    labels[1:, 5:] = -100
    return labels
