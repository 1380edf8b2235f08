"""Target leak: an output scored against a target it can read from the inputs fails; every
correctly paired twin (the shift in the loss, in the data, or inside the model) passes."""

from __future__ import annotations

import pytest
import torch
import zoo
from architectures import ZOO, _gpt2, _lm_batch, _t5, _t5_batch, run_check
from causes import cause_ids, first_cause
from state_oracle import assert_restores
from torch import nn
from torch.nn import functional as F

from nnsanity import (
    SanityError,
    assert_learns_signal,
    assert_no_target_leak,
    measure_learns_signal,
    measure_target_leak,
)

V = 16


def ids(n: int = 8, t: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, V, (n, t), generator=torch.Generator().manual_seed(seed))


def ce(logits, targets):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def unshifted(logits, targets):  # the bug: the output at t scored against token t
    return ce(logits, targets)


def shifted(logits, targets):
    return ce(logits[:, :-1], targets[:, 1:])


def shifted_backwards(logits, targets):  # the bug: the output at t scored against token t - 1
    return ce(logits[:, 1:], targets[:, :-1])


def smoothed_unshifted(logits, targets):
    return F.cross_entropy(
        logits.reshape(-1, V), targets.reshape(-1), label_smoothing=0.1, ignore_index=-100
    )


class UnmaskedLM(zoo.TinyCausalLM):
    """The zoo LM without its causal mask: a bidirectional encoder trained as a next-token LM."""

    def forward(self, idx):
        h = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        return self.head(self.ln(self.block(h)))


class OwnLossLM(zoo.TinyCausalLM):
    """A model computing its own loss from ``labels`` (the Hugging Face convention)."""

    def __init__(self, shift: bool):
        super().__init__(vocab=V)
        self.shift = shift

    def forward(self, input_ids, labels=None):
        logits = super().forward(input_ids)
        if labels is None:
            return {"logits": logits}
        lg, lb = (logits[:, :-1], labels[:, 1:]) if self.shift else (logits, labels)
        return {"logits": logits, "loss": ce(lg, lb)}


# --- the bug, in each place it is made ------------------------------------------------------


@pytest.mark.parametrize("loss_fn", [unshifted, smoothed_unshifted], ids=["plain", "smoothing"])
def test_a_loss_without_the_shift_fails_naming_the_shift(loss_fn):
    x = ids()
    with pytest.raises(SanityError, match="target leak") as e:
        assert_no_target_leak(zoo.TinyCausalLM(vocab=V), (x, x), loss_fn)
    assert first_cause(e).id == "loss_not_shifted"
    r = e.value.result
    assert r.offset == 0 and r.agreement == 1.0 and r.leak_change > 0.01


def test_a_loss_shifted_the_wrong_way_fails():
    x = ids()
    with pytest.raises(SanityError) as e:
        assert_no_target_leak(zoo.TinyCausalLM(vocab=V), (x, x), shifted_backwards)
    assert e.value.result.offset == -1
    assert first_cause(e).id == "loss_not_shifted"


def test_a_bidirectional_model_trained_to_predict_the_next_token_fails():
    x = ids()
    with pytest.raises(SanityError) as e:
        assert_no_target_leak(UnmaskedLM(vocab=V), (x, x), shifted)
    assert e.value.result.offset == 1
    assert first_cause(e).id == "model_sees_target"


def test_a_models_own_unshifted_loss_fails():
    x = ids()
    with pytest.raises(SanityError) as e:
        assert_no_target_leak(OwnLossLM(shift=False), {"input_ids": x, "labels": x.clone()})
    assert "loss_not_shifted" in cause_ids(e)
    assert e.value.result.loss_is_model_own


def test_decoder_inputs_equal_to_the_labels_fail_naming_them():
    batch = _t5_batch()
    leaky = {**batch, "decoder_input_ids": batch["labels"].clone()}
    with pytest.raises(SanityError) as e:
        assert_no_target_leak(_t5(), leaky)
    assert first_cause(e).id == "decoder_inputs_not_shifted"
    assert "decoder_input_ids" in e.value.result.source


def test_a_feature_column_equal_to_the_label_fails():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 6, generator=g)
    y = torch.randint(0, 3, (32,), generator=g)
    x[:, 4] = y.float()  # the label kept among the features
    model = zoo.mlp(d_in=6)
    model[-1] = nn.Linear(model[-1].in_features, 3)
    with pytest.raises(SanityError) as e:
        assert_no_target_leak(model, (x, y), F.cross_entropy)
    assert first_cause(e).id == "target_in_features"
    assert e.value.result.offset == 4


# --- healthy twins --------------------------------------------------------------------------


def test_the_shift_in_the_loss_passes():
    x = ids()
    r = assert_no_target_leak(zoo.TinyCausalLM(vocab=V), (x, x), shifted)
    assert r.applies and r.offset == 1 and r.leak_change <= r.max_dependence


def test_the_shift_in_the_data_passes():
    model, batch, loss_fn = zoo.healthy("causal_lm")
    r = assert_no_target_leak(model, batch, loss_fn)
    assert r.applies and r.offset == 1


def test_a_models_own_shifted_loss_passes():
    x = ids()
    assert assert_no_target_leak(OwnLossLM(shift=True), {"input_ids": x, "labels": x}).applies


@pytest.mark.parametrize(
    ("build", "batch"), [(_gpt2, _lm_batch), (_t5, _t5_batch)], ids=["gpt2", "t5"]
)
def test_hugging_face_models_that_shift_their_own_labels_pass(build, batch):
    r = assert_no_target_leak(build(), batch())
    assert r.passed


def test_the_features_of_a_plain_classifier_hold_no_target():
    model, batch, loss_fn = zoo.healthy("mlp")
    r = assert_no_target_leak(model, batch, loss_fn)
    assert not r.applies and "no input holds" in r.reason


def test_a_regression_loss_is_out_of_scope_and_says_why():
    model = zoo.mlp()
    x = torch.randn(8, 20)
    r = measure_target_leak(model, (x, torch.randn(8, 10)), F.mse_loss)
    assert r.passed and not r.applies and r.reason


# --- the contract ---------------------------------------------------------------------------


def test_it_restores_the_model_and_global_state():
    model, x = zoo.TinyCausalLM(vocab=V), ids()
    assert_restores(lambda: measure_target_leak(model, (x, x), unshifted), model)


def test_the_same_seed_gives_the_same_result():
    model, x = zoo.TinyCausalLM(vocab=V), ids()
    assert measure_target_leak(model, (x, x), unshifted) == measure_target_leak(
        model, (x, x), unshifted
    )


def test_a_negative_bound_is_a_clear_error():
    x = ids()
    with pytest.raises(ValueError, match="max_dependence"):
        measure_target_leak(zoo.TinyCausalLM(vocab=V), (x, x), shifted, max_dependence=-1)


@pytest.mark.parametrize("name", list(ZOO))
def test_every_zoo_model_passes_with_defaults(name):
    arch = ZOO[name]
    assert run_check("no_target_leak", arch, arch.build(), arch.batch()).passed


def test_learns_signal_fails_on_a_copy_that_generalises_and_names_the_leak():
    x, holdout = ids(16, seed=1), ids(16, seed=2)
    model = zoo.TinyCausalLM(vocab=V)
    with pytest.raises(SanityError, match="target leak") as e:
        assert_learns_signal(model, (x, x), unshifted, holdout=(holdout, holdout))
    assert first_cause(e).id == "target_leak"
    r = measure_learns_signal(model, (x, x), shifted, holdout=(holdout, holdout))
    assert r.target_leak is None


def test_sequences_that_repeat_are_no_leak_when_the_model_reads_the_past():
    # period 2: the token at t - 2 equals the token at t, which a causal LM legitimately reads
    x = torch.tensor([[3, 5] * 6, [7, 1] * 6, [2, 9] * 6, [4, 4, 8, 8] * 3])
    assert measure_target_leak(zoo.TinyCausalLM(vocab=V), (x, x), shifted).passed


@pytest.mark.parametrize("head", ["logit", "probability"])
def test_a_binary_label_left_among_the_features_fails(head):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 6, generator=g)
    y = torch.randint(0, 2, (32,), generator=g).float()
    x[:, 2] = y
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 1))
    if head == "logit":
        model, loss_fn = net, lambda z, t: F.binary_cross_entropy_with_logits(z.squeeze(1), t)
    else:
        model, loss_fn = (
            nn.Sequential(net, nn.Sigmoid()),
            lambda p, t: F.binary_cross_entropy(p.squeeze(1), t),
        )
    with pytest.raises(SanityError) as e:
        assert_no_target_leak(model, (x, y), loss_fn)
    assert first_cause(e).id == "target_in_features" and e.value.result.offset == 2
    x[:, 2] = torch.randn(32, generator=g)  # the healthy twin: the label column dropped
    assert measure_target_leak(model, (x, y), loss_fn).passed


def _bert_mlm_batch(mask_inputs: bool):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 96, (4, 16), generator=g)
    chosen = torch.rand(4, 16, generator=g) < 0.15
    chosen[:, 3] = True  # every row has masked positions
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    inputs = ids.masked_fill(chosen, 4) if mask_inputs else ids  # 4: the [MASK] id
    return {"input_ids": inputs, "attention_mask": torch.ones_like(ids), "labels": labels}


def _bert_mlm():
    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=96, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=32,
    )  # fmt: skip
    return transformers.BertForMaskedLM(config)


def test_a_masked_lm_whose_inputs_were_not_masked_fails_naming_the_mask_not_the_shift():
    with pytest.raises(SanityError) as e:
        assert_no_target_leak(_bert_mlm(), _bert_mlm_batch(mask_inputs=False))
    assert first_cause(e).id == "target_not_masked"
    assert measure_target_leak(_bert_mlm(), _bert_mlm_batch(mask_inputs=True)).passed


def test_a_label_column_standardised_with_the_other_features_still_fails():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 6, generator=g)
    y = torch.randint(0, 3, (64,), generator=g)
    x[:, 1] = y.float()
    x = (x - x.mean(0)) / x.std(0)  # a pipeline's standardisation, label column included
    model = zoo.mlp(d_in=6)
    model[-1] = nn.Linear(model[-1].in_features, 3)
    with pytest.raises(SanityError) as e:
        assert_no_target_leak(model, (x, y), F.cross_entropy)
    assert first_cause(e).id == "target_in_features" and e.value.result.offset == 1
    x[:, 1] = torch.randn(64, generator=g)  # the healthy twin
    assert measure_target_leak(model, (x, y), F.cross_entropy).passed
