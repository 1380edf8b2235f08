"""assert_loss_masks_padding: the predictions at padded positions get no weight in the loss."""

from __future__ import annotations

import architectures as A
import padding_zoo as P
import pytest
import torch
import zoo
from state_oracle import assert_restores
from torch.nn import functional as F

from nnsanity import assert_loss_masks_padding, measure_loss_masking
from nnsanity.errors import SanityError

pytestmark = pytest.mark.usefixtures("one_thread")


def run(name, loss_fn=None, **kwargs):
    build, batch, default_loss, padding = P.MASKED_LOSS[name]
    if padding is not None:
        kwargs.setdefault("padding", padding())
    return assert_loss_masks_padding(build(), batch(), loss_fn or default_loss, **kwargs)


@pytest.mark.parametrize("name", P.MASKED_LOSS)
def test_passes_on_every_healthy_padded_model_with_defaults(name):
    r = run(name)
    assert r.dependence == 0.0 and r.padding_share == 0.0 and r.judged > 0


def no_ignore_index(logits, tags):
    return F.cross_entropy(logits.transpose(1, 2), tags)  # the pad tag 0 counts


def test_field_report_06_a_token_loss_without_ignore_index_is_caught_naming_the_pad_target():
    """A tagger's cross-entropy averaged over the padding: the targets there hold the pad id 0,
    and the default ignore_index is -100."""
    with pytest.raises(
        SanityError,
        match=r"(?s)^The loss counts the padded positions!\n\n"
        r"Gradient of the loss at a padded position's output: [0-9.]+ of the largest at a real "
        r"position \(up to 1e-05 allowed\)\n"
        r"Share of the loss's gradient on padding: \d+% \(29 padded positions judged\)\n"
        r"Targets at the padded positions: 0\n"
        r"Padding: token id 0 \(padding_idx=0 of the embedding 'emb'\), 29 of 96 positions\n\n"
        r"Likely causes:\n  1\. a token loss without ignore_index: the targets at padded "
        r"positions hold 0, .* Pass ignore_index=0",
    ):
        run("packed_tagger", no_ignore_index)


def test_the_share_of_the_gradient_on_padding_is_the_share_of_padded_targets_at_init():
    r = measure_loss_masking(P.PackedTagger(), P.tagged(), no_ignore_index)
    # at init every position's cross-entropy gradient is of similar size: ~29/96 of the mass
    assert r.padding_share == pytest.approx(29 / 96, abs=0.1) and r.dependence > 0.1


def test_padding_the_targets_with_minus_100_is_a_fix_as_good_as_ignore_index():
    ids, tags = P.tagged()
    tags = tags.masked_fill(ids == P.PAD, -100)

    def default_loss(logits, y):
        return F.cross_entropy(logits.transpose(1, 2), y)

    r = assert_loss_masks_padding(P.PackedTagger(), (ids, tags), default_loss)
    assert r.padded_targets == (-100,)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("left", [False, True], ids=["right", "left"])
def test_hf_labels_copied_from_input_ids_are_caught_with_the_labels_cause_first(arch, left):
    model = {"gpt2": A._gpt2, "llama": A._llama}[arch]()
    with pytest.raises(
        SanityError,
        match=r"(?s)counts the padded positions!.*Targets at the padded positions: 0\n"
        r".*1\. labels at padded positions are not -100",
    ):
        assert_loss_masks_padding(model, P.hf_batch(left=left, pad_labels=True))
    assert assert_loss_masks_padding(model, P.hf_batch(left=left)).passed


def test_a_masked_loss_with_the_inverted_mask_is_caught_and_the_right_mask_passes():
    ids, tags = P.tagged()

    def masked(invert):
        def loss(logits, y):
            per_token = F.cross_entropy(logits.transpose(1, 2), y, reduction="none")
            m = ((ids == P.PAD) if invert else (ids != P.PAD)).float()
            return (per_token * m).sum() / m.sum()

        return loss

    with pytest.raises(SanityError, match="counts the padded positions"):
        assert_loss_masks_padding(P.PackedTagger(), (ids, tags), masked(True))
    assert_loss_masks_padding(P.PackedTagger(), (ids, tags), masked(False))


def test_a_causal_lm_on_left_padding_is_not_judged_where_it_predicts_the_first_real_token():
    r = run("llama_left_padded")
    assert r.padded - r.judged == 8  # the last padded position of each of the 8 rows


def test_outputs_given_as_batch_classes_positions_are_read_along_their_position_dim():
    class ClassesFirst(P.PackedTagger):
        def forward(self, ids):
            return super().forward(ids).transpose(1, 2)  # (B, C, T), as F.cross_entropy takes

    with pytest.raises(SanityError, match="counts the padded positions"):
        assert_loss_masks_padding(ClassesFirst(), P.tagged(), F.cross_entropy)
    assert_loss_masks_padding(
        ClassesFirst(), P.tagged(), lambda z, y: F.cross_entropy(z, y, ignore_index=P.PAD)
    )


def test_not_applicable_to_per_sequence_outputs_or_unpadded_batches_is_a_clear_error():
    with pytest.raises(ValueError, match=r"shape \(8, 4\), with no position dim"):
        assert_loss_masks_padding(P.MaskedClassifier(), P.sentences(), F.cross_entropy)
    t5 = A.ZOO["t5"]  # its logits are on the decoder's positions, its mask the encoder's
    with pytest.raises(ValueError, match=r"pass padding= \(a bool mask of the output's padded"):
        assert_loss_masks_padding(t5.build(), t5.batch())
    gpt2 = A.ZOO["gpt2"]
    with pytest.raises(ValueError, match="but this batch holds none"):
        assert_loss_masks_padding(gpt2.build(), gpt2.batch())
    with pytest.raises(ValueError, match="no padding found"):
        assert_loss_masks_padding(zoo.mlp(), zoo.classification_batch(), F.cross_entropy)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"padding": torch.ones(8, 12)}, TypeError, "must be a bool tensor"),
        ({"padding": 1.5}, TypeError, "or the pad token id"),
        ({"max_dependence": "small"}, TypeError, "max_dependence must be"),
        ({"loss_fn": 3}, TypeError, "loss_fn must be callable"),
        ({"output": "logits"}, ValueError, "names no tensor"),
    ],
)
def test_rejects_bad_arguments(kwargs, error, message):
    loss_fn = kwargs.pop("loss_fn", P.tag_loss)
    with pytest.raises(error, match=message):
        assert_loss_masks_padding(P.PackedTagger(), P.tagged(), loss_fn, **kwargs)


def test_leaves_model_and_global_state_unchanged_even_when_it_fails():
    model = P.PackedTagger()
    model.eval()
    model.out.weight.grad = torch.ones_like(model.out.weight)
    r = assert_restores(lambda: measure_loss_masking(model, P.tagged(), no_ignore_index), model)
    assert not r.passed
    model = A._gpt2()
    assert_restores(lambda: assert_loss_masks_padding(model, P.hf_batch()), model)


def test_results_are_the_same_run_after_run():
    first = measure_loss_masking(P.PackedTagger(), P.tagged(), no_ignore_index)
    assert measure_loss_masking(P.PackedTagger(), P.tagged(), no_ignore_index) == first


def _bart_with_decoder_inputs():
    batch = A._seq2seq_batch()
    labels = batch["labels"]
    start = torch.full((labels.shape[0], 1), 2)  # BART's decoder_start_token_id
    decoder_ids = torch.cat([start, labels[:, :-1].clamp(min=0)], 1)  # -100 -> pad 0
    return {**batch, "decoder_input_ids": decoder_ids}


def _seq2seq_loss(out, labels):
    return F.cross_entropy(out.logits.flatten(0, 1), labels.flatten())


def _pads_counted(out, labels):
    """Planted bug: the -100s turned into the pad id 0 before the loss, which counts them."""
    return F.cross_entropy(out.logits.flatten(0, 1), labels.clamp(min=0).flatten())


def test_an_encoder_decoders_target_padding_is_found_from_labels_of_minus_100():
    model, batch = A._bart(), _bart_with_decoder_inputs()
    r = assert_loss_masks_padding(model, batch, _seq2seq_loss)
    assert r.source.startswith("labels == -100") and r.judged > 0
    with pytest.raises(SanityError, match="counts the padded positions"):
        assert_loss_masks_padding(model, batch, _pads_counted)
