"""Localisation: each dependency check names the first module, and the line inside it, where its
property breaks; the healthy twin of every planted bug passes.

Each buggy line below carries a ``# bug: <name>`` comment; the tests find its line number from
this file's own source, so the place named must be that very line.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import pytest
import torch
import torchvision
from causes import cause_ids
from torch import nn
from torch.nn import functional as F

import nnsanity as ns

pytestmark = pytest.mark.usefixtures("one_thread")
HERE = Path(__file__)


def line_of(marker: str) -> str:
    """``test_localisation.py:N``, the line holding ``# bug: marker``."""
    lines = HERE.read_text().splitlines()
    (n,) = [i + 1 for i, text in enumerate(lines) if text.rstrip().endswith(f"# bug: {marker}")]
    return f"{HERE.name}:{n}"


def batch(n: int = 8, d: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, d, generator=g), torch.randint(0, 4, (n,), generator=g)


# -- batch independence ------------------------------------------------------------------------


class LastStep(nn.Module):
    def __init__(self, batch_first: bool) -> None:
        super().__init__()
        self.rnn = nn.LSTM(6, 16, batch_first=batch_first)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0][:, -1])


def test_an_lstm_without_batch_first_is_named_as_the_module_that_mixes_the_batch():
    torch.manual_seed(0)
    x = (torch.randn(6, 5, 6, generator=torch.Generator().manual_seed(1)), torch.zeros(6))
    r = ns.measure_batch_independence(LastStep(batch_first=False), x)
    assert not r.passed
    assert r.where is not None and r.where.module == "rnn" and r.where.module_type == "LSTM"
    assert cause_ids(r)[0] == "rnn_across_batch"
    assert ns.measure_batch_independence(LastStep(batch_first=True), x).passed


class Head(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.proj = nn.Linear(32, 4)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.proj(h), dim=self.dim)  # bug: log_softmax


class Classifier(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(12, 32), nn.ReLU())
        self.head = Head(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def test_log_softmax_over_the_batch_in_a_custom_head_is_named_by_its_line():
    torch.manual_seed(0)
    r = ns.measure_batch_independence(Classifier(dim=0), batch())
    assert r.where is not None and r.where.module == "head"
    assert r.where.op == "log_softmax(dim=0)" and r.where.line == line_of("log_softmax")
    assert r.where.after == "head.proj"  # the last submodule whose output still held
    assert cause_ids(r)[0] == "softmax_over_batch"
    assert ns.measure_batch_independence(Classifier(dim=-1), batch()).passed


def test_batchnorm_without_running_statistics_is_named_from_the_model():
    torch.manual_seed(0)
    images = (torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)), None)
    norm = functools.partial(nn.BatchNorm2d, track_running_stats=False)
    r = ns.measure_batch_independence(torchvision.models.resnet18(num_classes=10, norm_layer=norm),
                                      images)  # fmt: skip
    assert r.where is not None and r.where.module == "bn1"
    assert "track_running_stats=False" in r.where_settings
    assert cause_ids(r)[0] == "batchnorm_batch_statistics"
    torch.manual_seed(0)
    assert ns.measure_batch_independence(torchvision.models.resnet18(num_classes=10), images).passed


class FlattenCNN(nn.Module):
    def __init__(self, permuted: bool) -> None:
        super().__init__()
        self.permuted = permuted
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        if self.permuted:  # noqa: SIM108 (the bug line is read by the localisation)
            h = h.permute(1, 0, 2, 3).reshape(x.shape[0], -1)  # bug: flatten
        else:
            h = h.flatten(1)
        return self.fc(h)


def test_a_permuted_flatten_is_named_by_its_line_between_the_two_layers():
    torch.manual_seed(0)
    images = (torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(1)), None)
    r = ns.measure_batch_independence(FlattenCNN(permuted=True), images)
    assert r.where is not None and r.where.module == "" and r.where.line == line_of("flatten")
    assert (r.where.after, r.where.before) == ("conv", "fc")
    assert r.where.operation is not None and r.where.operation.kind == "reshape"
    assert cause_ids(r)[0] == "reshape_across_batch"
    assert ns.measure_batch_independence(FlattenCNN(permuted=False), images).passed


# -- causality ---------------------------------------------------------------------------------

V, T, D, HEADS = 20, 10, 16, 4


def tokens() -> torch.Tensor:
    return torch.randint(0, V, (3, T), generator=torch.Generator().manual_seed(2))


class SingleHeadAttention(nn.Module):
    """Scores (B, Tq, Tk), masked above the diagonal, normalised over ``softmax_dim``."""

    def __init__(self, softmax_dim: int) -> None:
        super().__init__()
        self.softmax_dim = softmax_dim
        self.qkv = nn.Linear(D, 3 * D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).split(D, -1)
        scores = q @ k.transpose(1, 2) / math.sqrt(D)
        future = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool, device=x.device).triu(1)
        weights = scores.masked_fill(future, float("-inf")).softmax(self.softmax_dim)  # bug: q
        return weights @ v


class MultiHeadAttention(nn.Module):
    def __init__(self, merge: str = "transpose", fill: float = float("-inf")) -> None:
        super().__init__()
        self.merge, self.fill = merge, fill
        self.qkv, self.out = nn.Linear(D, 3 * D), nn.Linear(D, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = (
            z.view(b, t, HEADS, D // HEADS).transpose(1, 2) for z in self.qkv(x).split(D, -1)
        )
        scores = q @ k.transpose(-2, -1) / math.sqrt(D // HEADS)
        future = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
        y = scores.masked_fill(future, self.fill).softmax(-1) @ v  # bug: fill
        if self.merge == "transpose":  # noqa: SIM108
            y = y.transpose(1, 2).reshape(b, t, D)
        else:
            y = y.reshape(b, t, D)  # bug: merge
        return self.out(y)


class LM(nn.Module):
    def __init__(self, attention: nn.Module) -> None:
        super().__init__()
        self.emb, self.attn, self.head = nn.Embedding(V, D), attention, nn.Linear(D, V)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.attn(self.emb(ids)))


def test_attention_normalised_over_the_queries_is_named_by_its_softmax():
    torch.manual_seed(0)
    r = ns.measure_causal(LM(SingleHeadAttention(softmax_dim=1)), tokens())
    assert r.where is not None and r.where.module == "attn"
    assert r.where.op == "softmax(dim=1)" and r.where.line == line_of("q")
    assert cause_ids(r)[0] == "softmax_wrong_dim"
    torch.manual_seed(0)
    assert ns.measure_causal(LM(SingleHeadAttention(softmax_dim=-1)), tokens()).passed


def test_heads_merged_without_the_transpose_are_named_by_the_reshape():
    torch.manual_seed(0)
    r = ns.measure_causal(LM(MultiHeadAttention(merge="reshape")), tokens())
    assert r.where is not None and r.where.module == "attn" and r.where.line == line_of("merge")
    assert cause_ids(r)[0] == "reshape_mixes_positions"
    torch.manual_seed(0)
    assert ns.measure_causal(LM(MultiHeadAttention()), tokens()).passed


def test_a_causal_mask_filled_with_a_tiny_number_is_named_by_the_masked_fill():
    torch.manual_seed(0)
    r = ns.measure_causal(LM(MultiHeadAttention(fill=-1e-9)), tokens())
    assert r.where is not None and r.where.line == line_of("fill")
    assert r.where.operation is not None and r.where.operation.name == "masked_fill"
    assert cause_ids(r)[0] == "mask_fill_not_inf"


class TwoLayers(nn.Module):
    def __init__(self, mask_both: bool) -> None:
        super().__init__()
        self.mask_both = mask_both
        self.emb, self.head = nn.Embedding(V, D), nn.Linear(D, V)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(D, 4, 32, dropout=0.0, batch_first=True) for _ in range(2)
        )

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = nn.Transformer.generate_square_subsequent_mask(ids.shape[1])
        h = self.layers[0](self.emb(ids), src_mask=mask)
        h = self.layers[1](h, src_mask=mask if self.mask_both else None)
        return self.head(h)


def test_a_causal_mask_missing_in_the_second_of_two_layers_names_that_layer():
    torch.manual_seed(0)
    r = ns.measure_causal(TwoLayers(mask_both=False), tokens())
    assert r.where is not None and r.where.module == "layers.1"
    assert cause_ids(r)[0] == "no_causal_mask"
    torch.manual_seed(0)
    assert ns.measure_causal(TwoLayers(mask_both=True), tokens()).passed


# -- padding invariance ------------------------------------------------------------------------


class PaddedAttention(nn.Module):
    """Attention over token ids with a key-padding mask filled with ``fill``; mean-pooled over
    the real positions."""

    def __init__(self, fill: float) -> None:
        super().__init__()
        self.fill = fill
        self.emb = nn.Embedding(V, D, padding_idx=0)
        self.qkv = nn.Linear(D, 3 * D)
        self.head = nn.Linear(D, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pad = ids == 0  # (B, T), True at the padding
        q, k, v = self.qkv(self.emb(ids)).split(D, -1)
        scores = (q @ k.transpose(1, 2)).masked_fill(pad[:, None, :], self.fill)  # bug: pad
        h = scores.softmax(-1) @ v
        real = (~pad).unsqueeze(-1).to(h.dtype)
        return self.head((h * real).sum(1) / real.sum(1))


def padded_tokens() -> torch.Tensor:
    ids = torch.randint(1, V, (4, 8), generator=torch.Generator().manual_seed(3))
    for i, n in enumerate([8, 5, 6, 3]):
        ids[i, n:] = 0
    return ids


def test_a_key_padding_mask_filled_with_a_small_negative_number_is_named_by_its_line():
    torch.manual_seed(0)
    r = ns.measure_padding_invariance(PaddedAttention(fill=-1.0), (padded_tokens(), None))
    assert r.where is not None and r.where.module == "" and r.where.line == line_of("pad")
    assert cause_ids(r)[0] == "mask_fill_not_inf"
    torch.manual_seed(0)
    healthy = PaddedAttention(fill=float("-inf"))
    assert ns.measure_padding_invariance(healthy, (padded_tokens(), None)).passed


# -- eval-mode determinism and finiteness -------------------------------------------------------


class DropsInEval(nn.Module):
    def __init__(self, training_flag: bool) -> None:
        super().__init__()
        self.flag = training_flag
        self.a, self.b = nn.Linear(12, 12), nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.flag:
            return self.b(F.dropout(self.a(x), 0.3, training=self.training))
        return self.b(F.dropout(self.a(x), 0.3))  # bug: dropout


def test_functional_dropout_left_on_in_eval_mode_is_named_by_its_line():
    torch.manual_seed(0)
    r = ns.measure_eval_mode(DropsInEval(training_flag=False), batch())
    assert r.where is not None and r.where.line == line_of("dropout")
    assert cause_ids(r)[0] == "functional_dropout"
    assert ns.measure_eval_mode(DropsInEval(training_flag=True), batch()).passed


class NaNBetween(nn.Module):
    """A NaN made by the parent's own forward, between two of its submodules."""

    def __init__(self, guarded: bool) -> None:
        super().__init__()
        self.guarded = guarded
        self.a, self.b = nn.Linear(12, 12), nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        h = torch.log(h.clamp_min(1e-6)) if self.guarded else torch.log(h)  # bug: log
        return self.b(h)


def test_a_nan_made_between_two_submodules_names_the_parents_forward_and_both_neighbours():
    torch.manual_seed(0)
    r = ns.measure_finite(NaNBetween(guarded=False), batch(), F.cross_entropy)
    assert r.where is not None and r.where.module == "" and r.where.module_type == "NaNBetween"
    assert (r.where.after, r.where.before) == ("a", "b")
    assert r.where.op == "log" and r.where.line == line_of("log")
    assert cause_ids(r)[0] == "log_of_zero"
    torch.manual_seed(0)
    assert ns.measure_finite(NaNBetween(guarded=True), batch(), F.cross_entropy).passed


def test_the_place_is_in_the_message_and_in_the_result_as_data():
    torch.manual_seed(0)
    with pytest.raises(ns.SanityError) as e:
        ns.assert_batch_independence(Classifier(dim=0), batch())
    text = str(e.value).splitlines()
    assert text[2].startswith(
        "Where: 'head' (Head): log_softmax(dim=0) at " + line_of("log_softmax")
    )
    assert e.value.result.to_dict()["where"]["module"] == "head"


def test_localising_leaves_the_model_and_the_global_state_as_they_were():
    from state_oracle import assert_restores

    torch.manual_seed(0)
    model = Classifier(dim=0)
    r = assert_restores(lambda: ns.measure_batch_independence(model, batch()), model)
    assert r.where is not None
