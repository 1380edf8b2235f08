"""Errors raised inside the user's model or loss come back naming the shapes involved."""

from __future__ import annotations

import pytest
import torch
import zoo
from torch import nn
from torch.nn import functional as F

from nnsanity import assert_finite, assert_init_loss

pytestmark = pytest.mark.usefixtures("one_thread")


class _ConcatsATensor(nn.Module):
    """A model that passes a tensor where torch.cat wants a sequence: a TypeError inside it."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(20, 10)

    def forward(self, x):
        return torch.cat(self.linear(x), 1)


def test_token_ids_beyond_the_embedding_raise_a_value_error_that_suggests_the_vocab_size():
    x, y = zoo.token_batch(vocab=16)
    with pytest.raises(ValueError, match=r"shape \(4, 12\): index out of range — token ids >="):
        assert_finite(zoo.TinyCausalLM(), (x + 100, y), zoo.lm_loss)


def test_a_type_error_inside_the_model_raises_a_value_error_naming_the_input_shape():
    with pytest.raises(
        ValueError,
        match=r"_ConcatsATensor failed when called as model\(inputs\) on a tensor of shape "
        r"\(16, 20\)",
    ):
        assert_init_loss(_ConcatsATensor(), zoo.classification_batch(), F.cross_entropy)


def test_a_batch_size_mismatch_in_the_loss_raises_a_value_error_naming_both_shapes():
    x, y = zoo.classification_batch()
    shapes = r"outputs of shape \(16, 10\) and targets of shape \(8,\)"
    with pytest.raises(ValueError, match=shapes):
        assert_init_loss(zoo.mlp(), (x, y[:8]), F.cross_entropy)


def test_a_loss_fn_of_the_wrong_arity_raises_a_type_error_naming_the_expected_call():
    with pytest.raises(TypeError, match=r"targets of shape \(16,\).*loss_fn\(outputs, targets\)"):
        assert_finite(zoo.mlp(), zoo.classification_batch(), lambda out: out.mean())
