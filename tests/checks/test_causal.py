"""Causality: passes on causal models, fails on each planted look-ahead."""

from __future__ import annotations

import pytest
import torch
import zoo
from causes import first_cause, result_of
from state_oracle import assert_restores
from torch import nn

from nnsanity import assert_causal, measure_causal
from nnsanity.errors import SanityError

# --- planted bugs -------------------------------------------------------------------------------


class UnmaskedLM(zoo.TinyCausalLM):
    """The zoo LM without its causal mask: every position attends to the whole sequence."""

    def forward(self, idx):
        h = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        return self.head(self.ln(self.block(h)))


class TransposedMaskLM(zoo.TinyCausalLM):
    """The causal mask transposed (tril instead of triu): position t sees only the future."""

    def forward(self, idx):
        t = idx.shape[1]
        h = self.tok(idx) + self.pos(torch.arange(t))
        mask = nn.Transformer.generate_square_subsequent_mask(t).T.contiguous()
        return self.head(self.ln(self.block(h, src_mask=mask)))


class CausalConv(nn.Module):
    """A (B, T, D) -> (B, T, D) convolution over time, padded on the left only (or not)."""

    def __init__(self, causal=True, d=4, k=3):
        super().__init__()
        torch.manual_seed(0)
        self.pad = (k - 1, 0) if causal else ((k - 1) // 2, (k - 1) // 2)
        self.conv = nn.Conv1d(d, d, k)

    def forward(self, x):
        return self.conv(nn.functional.pad(x.transpose(1, 2), self.pad)).transpose(1, 2)


class PeeksFromFive(nn.Module):
    """Causal except that outputs from position 5 on also see the next input."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        ahead = torch.cat([x[:, 1:], torch.zeros_like(x[:, :1])], 1)
        gate = (torch.arange(x.shape[1]) >= 5).to(x.dtype).view(1, -1, 1)
        return self.lin(x + gate * ahead)


def _float_sequences(b=3, t=12, d=4):
    return torch.randn(b, t, d, generator=torch.Generator().manual_seed(0))


# --- causality -----------------------------------------------------------------------------------


def test_causal_passes_on_the_tiny_causal_lm_with_defaults():
    result = assert_causal(zoo.TinyCausalLM(), zoo.token_batch()[0])
    assert result.passed and max(result.changes) == 0.0
    assert result.positions == (0, 1, 3, 4, 6, 7, 9, 10)


def test_causal_passes_on_a_left_padded_convolution_over_float_sequences():
    assert assert_causal(CausalConv(), _float_sequences()).passed


def test_fails_when_the_lm_has_no_causal_mask_and_names_position_zero():
    with pytest.raises(SanityError, match=r"The output at position 0 sees the future!"):
        assert_causal(UnmaskedLM(), zoo.token_batch()[0])


def test_fails_when_the_causal_mask_is_transposed():
    with pytest.raises(
        SanityError, match=r"(?s)position 0 sees the future.*2\. a mask of the wrong"
    ):
        assert_causal(TransposedMaskLM(), zoo.token_batch()[0])


def test_fails_on_a_convolution_padded_on_both_sides():
    with pytest.raises(SanityError, match=r"position 0 sees the future"):
        assert_causal(CausalConv(causal=False), _float_sequences())


def test_names_the_first_position_that_sees_the_future_even_between_checked_positions():
    result = measure_causal(PeeksFromFive(), _float_sequences())
    assert 5 not in result.positions
    assert (result.first_leak, result.leak_after) == (5, 5)


class TimeMajorGRU(nn.Module):
    def __init__(self, bidirectional=False):
        super().__init__()
        torch.manual_seed(0)
        self.gru = nn.GRU(4, 4, bidirectional=bidirectional)  # (T, B, D) in and out

    def forward(self, x):
        return self.gru(x)[0]


def test_dim_names_the_sequence_dimension_of_time_major_inputs():
    time_major = _float_sequences().transpose(0, 1).contiguous()  # (T, B, D)
    assert assert_causal(TimeMajorGRU(), time_major, dim=0).passed
    with pytest.raises(SanityError, match=r"sees the future") as failure:
        assert_causal(TimeMajorGRU(bidirectional=True), time_major, dim=0)
    assert result_of(failure).where.module == "gru"
    assert first_cause(failure).id == "layer_looks_ahead"
    assert "bidirectional=True" in first_cause(failure).summary


def test_an_inputs_targets_batch_pair_passed_as_inputs_raises_a_type_error_naming_the_fix():
    with pytest.raises(
        TypeError, match=r"takes the inputs alone, not an \(inputs, targets\) batch pair"
    ):
        assert_causal(zoo.TinyCausalLM(), zoo.token_batch())


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"inputs": [1, 2, 3]}, TypeError, "inputs hold no tensor"),
        ({"dim": 2}, ValueError, "dim=2 is not a dimension"),
        ({"positions": [11]}, ValueError, "the last position"),
        ({"inputs": torch.zeros(4, 1, dtype=torch.long)}, ValueError, "at least 2 positions"),
        ({"seed": 0.5}, TypeError, "seed must be an int"),
    ],
)
def test_causal_rejects_bad_arguments(kwargs, error, match):
    args = {"inputs": zoo.token_batch()[0], **kwargs}
    with pytest.raises(error, match=match):
        measure_causal(zoo.TinyCausalLM(), args.pop("inputs"), **args)


def test_causal_works_in_float64():
    assert assert_causal(CausalConv().double(), _float_sequences().double()).passed


# --- side effects --------------------------------------------------------------------------------


@pytest.mark.parametrize("model_factory", [zoo.TinyCausalLM, UnmaskedLM], ids=["causal", "failing"])
def test_the_check_leaves_global_state_and_the_model_as_it_found_them(model_factory):
    model = model_factory().train()
    assert_restores(lambda: measure_causal(model, zoo.token_batch()[0]), model)
    assert model.training and all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
