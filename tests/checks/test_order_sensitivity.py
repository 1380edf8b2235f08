"""Order sensitivity: permuting the positions of a sequence changes a sequence model's outputs;
a positional encoding indexed wrongly leaves a Transformer blind to order."""

from __future__ import annotations

import mnist_recipe as recipes
import pytest
import torch
from architectures import ZOO
from state_oracle import assert_restores
from torch import nn

from nnsanity import SanityError, assert_uses_order, measure_order_sensitivity

pytestmark = pytest.mark.usefixtures("one_thread")


def ids(seed=0):
    return recipes.ascending_or_descending(16, seed)[0]


@pytest.mark.parametrize("seed", range(5))
def test_a_transformer_with_its_positional_encoding_passes(seed):
    r = assert_uses_order(recipes.order_transformer(seed), ids(seed))
    assert r.change >= r.min_change and r.blind_positional == ()


@pytest.mark.parametrize("seed", range(5))
def test_a_positional_encoding_indexed_wrongly_fails_naming_it(seed):
    model = recipes.order_transformer(seed, bug="first_row")  # pe[:, :1] added everywhere
    with pytest.raises(
        SanityError,
        match=r"(?s)The model ignores the order of its inputs!.*\(at least 0\.0001 required\).*"
        r"1\. the positional encoding adds the same vector at every position.*\[pos_encoding\]",
    ) as e:
        assert_uses_order(model, ids(seed))
    assert e.value.result.blind_positional == ("pos_encoding",)


class LearnedPositions(nn.Module):
    """A GPT-style encoder: token plus learned position embeddings (``wpe``) of position ids."""

    def __init__(self, zero_ids=False):
        super().__init__()
        torch.manual_seed(0)
        self.wte, self.wpe = nn.Embedding(32, 32), nn.Embedding(64, 32)
        layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.head = nn.Linear(32, 2)
        self.zero_ids = zero_ids

    def forward(self, x):
        pos = torch.arange(x.shape[1], device=x.device)
        pos = torch.zeros_like(pos) if self.zero_ids else pos  # every position id 0: the bug
        return self.head(self.encoder(self.wte(x) + self.wpe(pos)))  # per-position outputs


def test_learned_positions_pass_and_position_ids_all_zero_fail():
    assert_uses_order(LearnedPositions(), ids())
    r = measure_order_sensitivity(LearnedPositions(zero_ids=True), ids())
    assert not r.passed and r.equivariant and r.blind_positional == ("wpe",)
    assert r.causes[0].id == "positional_encoding_constant"


class BagOfWords(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.head = nn.Embedding(32, 16), nn.Linear(16, 2)

    def forward(self, x):
        return self.head(self.embed(x).mean(1))


def test_a_bag_of_words_model_is_order_blind_by_construction():
    # the docstring's "does not apply": the check reports it, with no positional module to name
    r = measure_order_sensitivity(BagOfWords(), ids())
    assert not r.passed and r.blind_positional == ()
    assert {c.id for c in r.causes} >= {"no_positional_encoding", "order_invariant_by_design"}


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_real_sequence_models_use_order(name):
    arch = ZOO[name]
    batch = arch.batch()
    inputs = (
        {k: v for k, v in batch.items() if k != "labels"} if isinstance(batch, dict) else (batch[0])
    )
    assert measure_order_sensitivity(arch.build(), inputs).passed


def test_an_lstm_uses_order_and_time_first_inputs_take_dim_0():
    torch.manual_seed(0)
    lstm = nn.LSTM(4, 8)  # time-first (T, B, F)
    x = torch.randn(10, 6, 4)
    assert_uses_order(lstm, x, dim=0)


def test_order_sensitivity_rejects_bad_arguments():
    model = recipes.order_transformer(0)
    with pytest.raises(ValueError, match="dim=3 is not a dimension"):
        assert_uses_order(model, ids(), dim=3)
    with pytest.raises(ValueError, match="length 1"):
        assert_uses_order(model, ids()[:, :1])
    with pytest.raises(ValueError, match="min_change must be a number >= 0"):
        assert_uses_order(model, ids(), min_change=-1)


def test_the_check_leaves_the_model_and_global_state_as_it_found_them():
    model = recipes.order_transformer(0)
    model.train()
    assert_restores(lambda: measure_order_sensitivity(model, ids()), model)


def test_results_are_the_same_run_after_run():
    first = measure_order_sensitivity(recipes.order_transformer(0), ids()).to_dict()
    assert measure_order_sensitivity(recipes.order_transformer(0), ids()).to_dict() == first
