"""assert_ignores_padding: what sits at padded positions never reaches a real output."""

from __future__ import annotations

import architectures as A
import padding_zoo as P
import pytest
import torch
import zoo
from state_oracle import assert_restores
from torch import nn

from nnsanity import assert_ignores_padding, measure_padding_invariance
from nnsanity.errors import SanityError

pytestmark = pytest.mark.usefixtures("one_thread")


def run(name, **kwargs):
    build, batch, _, padding = P.INVARIANT[name]
    if padding is not None:
        kwargs.setdefault("padding", padding())
    return assert_ignores_padding(build(), batch(), **kwargs)


@pytest.mark.parametrize("name", P.INVARIANT)
def test_passes_on_every_healthy_padded_model_with_defaults(name):
    r = run(name)
    assert r.dependence == 0.0 and r.nonfinite == 0 and 0 < r.padded < r.positions


def test_field_report_05_an_inverted_key_padding_mask_is_caught_with_the_polarity_first():
    """A sentence classifier passes True for its real tokens as key_padding_mask: each real
    token attends only to padding, and a sentence without padding to nothing (NaN in eval)."""
    model, batch = P.MaskedClassifier(inverted=True), P.sentences()
    with pytest.raises(
        SanityError,
        match=r"(?s)^Outputs at real positions depend on the padding!\n\n"
        r"Where: 'enc' \(TransformerEncoderLayer\)\n"
        r"Largest change .* padded tokens' embeddings change: [0-9.]+ of the output scale "
        r"\(up to 1e-05 allowed\)\n"
        r"Samples whose real outputs moved: 1, 2, 4, 5, 6, 7\n"
        r"NaN/Inf outputs at real positions in eval mode: 8 \(up to 0 allowed\), in samples "
        r"0, 3 \(exactly samples without padding\)\n"
        r"Padding: token id 0 \(padding_idx=0 of the embedding 'emb'\), 29 of 96 positions\n\n"
        r"Likely causes:\n  1\. the padding mask has the wrong polarity",
    ):
        assert_ignores_padding(model, batch)


def test_an_hf_attention_mask_passed_as_key_padding_mask_is_caught():
    """The attention mask (1 = real) handed to key_padding_mask (True = ignore) as is."""

    class Encoder(nn.Module):
        def __init__(self, inverted: bool):
            super().__init__()
            torch.manual_seed(0)
            self.inverted = inverted
            self.emb = nn.Embedding(A.VOCAB, 32)
            self.attn = nn.MultiheadAttention(32, 4, batch_first=True)

        def forward(self, input_ids, attention_mask):
            h = self.emb(input_ids)
            pad = attention_mask.bool() if self.inverted else attention_mask == 0
            return self.attn(h, h, h, key_padding_mask=pad)[0]

    batch = P.hf_batch()
    with pytest.raises(
        SanityError, match=r"(?s)Padding: inputs\['attention_mask'\] == 0.*1\. the "
    ):
        assert_ignores_padding(Encoder(inverted=True), batch)
    r = assert_ignores_padding(Encoder(inverted=False), batch)
    assert r.changed == "embeddings" and r.dependence == 0.0


class MeanPooled(nn.Module):
    """Embeddings averaged over all positions, padding included, unless ``masked``."""

    def __init__(self, masked: bool):
        super().__init__()
        torch.manual_seed(0)
        self.masked = masked
        self.emb, self.head = nn.Embedding(30, 16, padding_idx=P.PAD), nn.Linear(16, 4)

    def forward(self, ids):
        h = self.emb(ids)
        if not self.masked:
            return self.head(h.mean(1))
        real = (ids != P.PAD).unsqueeze(-1)
        return self.head((h * real).sum(1) / real.sum(1))


def test_pooling_over_the_padding_is_caught_with_pooling_first_and_its_fix_passes():
    with pytest.raises(SanityError, match=r"(?s)depend on the padding!.*1\. pooling over the"):
        assert_ignores_padding(MeanPooled(masked=False), P.sentences())
    assert assert_ignores_padding(MeanPooled(masked=True), P.sentences()).dependence == 0.0


class UnpackedTagger(P.PackedTagger):
    """The bidirectional GRU run over the padding: its backward direction reads it first."""

    def forward(self, ids):
        return self.out(self.rnn(self.emb(ids))[0])


def test_a_bidirectional_rnn_run_over_the_padding_is_caught_with_packing_first():
    with pytest.raises(SanityError, match=r"(?s)depend on the padding!.*1\. an RNN run over"):
        assert_ignores_padding(UnpackedTagger(), P.tagged())


def test_outputs_at_padded_positions_may_change_only_real_ones_are_judged():
    r = run("packed_tagger")  # its outputs at padded positions are computed from zero vectors
    assert r.changed == "embeddings" and r.unpadded_samples == (0, 3)


def test_explicit_padding_as_a_pad_id_or_a_mask_agrees_with_the_padding_found():
    ids, _ = P.sentences()
    found = run("masked_transformer_classifier")
    by_id = run("masked_transformer_classifier", padding=P.PAD)
    assert (by_id.padded, by_id.source) == (
        found.padded,
        "token id 0 (padding=0 of the embedding 'emb')",
    )
    model = MeanPooled(masked=False)
    by_mask = measure_padding_invariance(model, P.sentences(), padding=ids == P.PAD)
    assert by_mask.changed == "embeddings" and not by_mask.passed  # the mean reads the padding


def test_float_features_are_changed_in_the_inputs_where_no_embedding_reads_them():
    r = run("packed_lstm")  # (x, lengths) with padding= the mask of positions >= lengths
    assert r.changed == "inputs" and r.dependence == 0.0
    (x, lengths), y = A._sequences()
    model = A._packed_lstm()
    model.forward = lambda inputs: model.out(model.rnn(inputs[0])[0][:, -1])  # unpacked
    padding = torch.arange(x.shape[1]) >= lengths[:, None]
    with pytest.raises(SanityError, match=r"(?s)depend on the padding!.*1\. an RNN run over"):
        assert_ignores_padding(model, ((x, lengths), y), padding=padding)


class PoolsByIds(nn.Module):
    """Attention masked by the HF attention mask, pooling over the tokens that are not the pad
    id: it reads its ids besides the mask, and is right to."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(A.VOCAB, 32)
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)

    def forward(self, input_ids, attention_mask):
        h = self.emb(input_ids)
        h = self.attn(h, h, h, key_padding_mask=attention_mask == 0)[0]
        real = (input_ids != P.PAD).unsqueeze(-1)
        return (h * real).sum(1) / real.sum(1)


def test_the_token_ids_stay_as_they_are_for_a_model_that_also_reads_them():
    r = assert_ignores_padding(PoolsByIds(), P.hf_batch(left=True))
    assert r.changed == "embeddings" and r.source == "inputs['attention_mask'] == 0"


def test_not_applicable_without_padding_is_a_clear_error():
    arch = A.ZOO["gpt2"]  # a pre-training chunk: attention mask all ones
    with pytest.raises(
        ValueError, match=r"marked by inputs\['attention_mask'\] == 0, but this batch holds none"
    ):
        assert_ignores_padding(arch.build(), arch.batch())
    with pytest.raises(ValueError, match=r"no padding found.*Pass padding="):
        assert_ignores_padding(zoo.mlp(), zoo.classification_batch())
    ids = P.sentences()[0].clamp_min(1)
    with pytest.raises(ValueError, match=r"padding_idx=0, but this batch holds none"):
        assert_ignores_padding(P.MaskedClassifier(), (ids, None))


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"padding": torch.ones(8, 12, dtype=torch.long)}, TypeError, "must be a bool tensor"),
        ({"padding": torch.zeros(8, dtype=torch.bool)}, ValueError, r"\(batch, positions\) mask"),
        (
            {"padding": torch.zeros(3, 12, dtype=torch.bool)},
            ValueError,
            "3 rows but the batch has 8",
        ),
        ({"padding": torch.zeros(8, 12, dtype=torch.bool)}, ValueError, "holds none"),
        ({"padding": torch.ones(8, 12, dtype=torch.bool)}, ValueError, "every position"),
        ({"padding": True}, TypeError, "not a bool"),
        ({"padding": "pad"}, TypeError, "or the pad token id"),
        ({"padding": 99}, ValueError, "reads token id 99"),
        ({"max_dependence": -1}, ValueError, "max_dependence must be"),
    ],
)
def test_rejects_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        assert_ignores_padding(P.MaskedClassifier(), P.sentences(), **kwargs)


def test_leaves_model_and_global_state_unchanged_even_when_it_fails():
    model = P.MaskedClassifier(inverted=True)
    model.train()
    r = assert_restores(lambda: measure_padding_invariance(model, P.sentences()), model)
    assert not r.passed and r.nonfinite  # the eval path ran: its NaN is there
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    model = A._bert()
    assert_restores(lambda: assert_ignores_padding(model, A._bert_batch()), model)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_results_are_the_same_run_after_run():
    first = measure_padding_invariance(P.MaskedClassifier(inverted=True), P.sentences())
    again = measure_padding_invariance(P.MaskedClassifier(inverted=True), P.sentences())
    assert first.to_dict() == again.to_dict()


def test_an_inverted_hugging_face_attention_mask_names_the_polarity_first():
    from architectures import ZOO

    bert = ZOO["bert_classifier"]
    batch = bert.batch()  # right-padded rows; the first has no padding
    inverted = {**batch, "attention_mask": 1 - batch["attention_mask"]}
    with pytest.raises(SanityError) as e:
        assert_ignores_padding(bert.build(), inverted)
    r = e.value.result
    assert r.causes[0].id == "mask_polarity" and r.all_padded_samples == (0,)
    assert assert_ignores_padding(bert.build(), batch).passed
