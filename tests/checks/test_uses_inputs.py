"""The input-independent baseline: every healthy model fits its batch better with its inputs."""

from __future__ import annotations

import pytest
import torch
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
    assert r.method == "baseline" and r.gap >= r.required > 0
    assert r.real_loss <= r.baseline_loss - r.required and len(r.trace) < 200  # stopped early


def test_the_baseline_of_cross_entropy_is_the_entropy_of_the_label_frequencies():
    model, (x, y) = zoo.mlp(), zoo.classification_batch()
    freq = torch.bincount(y, minlength=10).double() / len(y)
    entropy = float(-(freq[freq > 0] * freq[freq > 0].log()).sum())
    r = measure_uses_inputs(model, (x, y), F.cross_entropy)
    assert r.baseline_loss == pytest.approx(entropy, rel=1e-4)


def test_the_baseline_of_mse_is_the_variance_of_the_targets():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 1))
    x, y = torch.randn(16, 20), torch.randn(16, 1) * 3 + 1
    r = measure_uses_inputs(model, (x, y), F.mse_loss)
    assert r.baseline_loss == pytest.approx(float(y.var(unbiased=False)), rel=1e-4)


def test_fails_when_the_forward_ignores_its_input():
    with pytest.raises(
        SanityError,
        match=r"(?s)Model does no better with its inputs than without them!.*"
        r"after 200 steps.*1\. forward ignores its input",
    ) as e:
        assert_uses_inputs(IgnoresItsInput(), zoo.classification_batch(), F.cross_entropy)
    assert e.value.result.real_loss >= e.value.result.baseline_loss - 1e-3


def test_falls_back_to_zeroed_inputs_when_the_judged_output_is_picked_by_a_callable():
    model, batch, loss_fn = healthy("mlp")
    r = assert_uses_inputs(model, batch, loss_fn, output=lambda out: out)
    assert r.method == "zeroed inputs" and r.passed
    with pytest.raises(SanityError, match="the same model trained on zeroed inputs"):
        assert_uses_inputs(IgnoresItsInput(), batch, loss_fn, output=lambda out: out)


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


class NearlyConstant(nn.Module):
    """A LayerScale-like init: a healthy MLP whose output moves by 1e-6 with the input, on top
    of a bias shared by every sample (timm ``init_values=1e-5`` gives 8e-6)."""

    def __init__(self, out: int):
        super().__init__()
        self.net = zoo.mlp()
        self.bias = nn.Parameter(torch.linspace(-1, 1, out))
        self.out = out

    def forward(self, x):
        return self.bias + 1e-6 * self.net(x)[:, : self.out]


def test_outputs_the_same_for_every_sample_do_not_read_as_an_unpaired_loss():
    # the pairing probe hands the loss synthetic, varied outputs: the model's own near-constant
    # ones cannot tell a loss that pairs outputs with targets from one that does not
    torch.manual_seed(0)
    x, y = torch.randn(16, 20), torch.randint(0, 2, (16,))
    r = measure_uses_inputs(NearlyConstant(2), (x, y), F.cross_entropy)
    assert r.unpaired is None, r


@pytest.mark.filterwarnings("ignore:Using a target size")  # the planted bug warns
def test_a_broadcast_loss_is_still_found_behind_near_constant_outputs():
    torch.manual_seed(0)
    x, y = torch.randn(16, 20), torch.randn(16)  # targets (N,) against outputs (N, 1)
    r = measure_uses_inputs(NearlyConstant(1), (x, y), F.mse_loss)
    assert r.unpaired is not None and "broadcast to (16, 16)" in r.unpaired
    assert not r.passed
