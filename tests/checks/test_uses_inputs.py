"""The input-independent baseline: every healthy model fits its batch better with its inputs."""

from __future__ import annotations

import pytest
import zoo
from state_oracle import assert_restores
from torch import nn
from torch.nn import functional as F
from zoo import healthy, user_step

from nnsanity import assert_uses_inputs, measure_uses_inputs
from nnsanity.errors import SanityError

pytestmark = pytest.mark.usefixtures("one_thread")


class IgnoresItsInput(nn.Module):
    """Planted bug: a forward that multiplies its input by 0 before a healthy MLP."""

    def __init__(self):
        super().__init__()
        self.net = zoo.mlp()

    def forward(self, x):
        return self.net(x * 0)


@pytest.mark.parametrize("name", zoo.HEALTHY)
def test_every_healthy_model_beats_its_input_independent_baseline(name):
    model, batch, loss_fn = healthy(name)
    r = assert_uses_inputs(model, batch, loss_fn)
    assert r.gap >= r.required > 0 and len(r.real_trace) == len(r.zeroed_trace) == 200


def test_fails_when_the_forward_ignores_its_input():
    batch = zoo.classification_batch()
    with pytest.raises(
        SanityError, match=r"Gap after 200 steps: 0 \(identical: the outputs ignore"
    ):
        assert_uses_inputs(IgnoresItsInput(), batch, F.cross_entropy)


def test_a_correct_user_training_step_beats_the_input_independent_baseline():
    model, batch, loss_fn = healthy("mlp")
    assert assert_uses_inputs(model, batch, loss_fn, step=user_step(model)).passed


# The arguments it shares with the other training checks: test_loss_decrease_and_overfit.py.
def test_an_out_of_range_min_gap_raises_a_value_error():
    with pytest.raises(ValueError, match="min_gap must be a fraction"):
        assert_uses_inputs(*healthy("mlp"), min_gap=-0.1)


def test_the_check_leaves_the_model_and_global_state_as_it_found_them():
    model, batch, loss_fn = healthy("cnn_batchnorm")
    model.eval()
    assert_restores(lambda: measure_uses_inputs(model, batch, loss_fn), model)  # under no_grad
    assert not any(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())


def test_the_check_is_deterministic_for_a_given_seed():
    model, batch, loss_fn = healthy("mlp")
    a = measure_uses_inputs(model, batch, loss_fn, steps=20)
    assert a == measure_uses_inputs(model, batch, loss_fn, steps=20)
