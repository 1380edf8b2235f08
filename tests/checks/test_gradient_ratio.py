"""The vanishing/exploding gradient check: a depth trend of the error signal, like with like."""

from __future__ import annotations

import math

import pytest
import torch
import zoo
from state_oracle import assert_restores
from torch import nn
from torch.nn import functional as F

from nnsanity import assert_gradient_ratio, measure_gradient_ratio
from nnsanity.errors import SanityError


def deep_net(
    depth: int,
    activation: type[nn.Module],
    std: float,
    *,
    width: int = 32,
    scale_by_fan_in: bool = True,
    bias_std: float = 1.0,
    seed: int = 0,
) -> nn.Sequential:
    """``depth`` hidden layers; weights N(0, std^2 / fan_in) (or N(0, std^2)), biases N(0, b^2)."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    d = 20
    for _ in range(depth):
        layer = nn.Linear(d, width)
        nn.init.normal_(layer.weight, 0.0, std / math.sqrt(d) if scale_by_fan_in else std)
        nn.init.normal_(layer.bias, 0.0, bias_std)
        layers += [layer, activation()]
        d = width
    return nn.Sequential(*layers, nn.Linear(d, zoo.N_CLASSES))


class NielsenChain(nn.Module):
    """Ch. 5's exploding chain: one sigmoid neuron per layer, w = 100, biases making every z = 0.

    Every factor w sigma'(z) is 25, so the first layer's error signal is 25^3 = 15625 times the
    fourth's.
    """

    def __init__(self, a0: float = 0.5, w: float = 100.0, n: int = 4):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(1, 1).double() for _ in range(n))
        with torch.no_grad():
            for i, layer in enumerate(self.layers):
                layer.weight.fill_(w)
                layer.bias.fill_(-w * a0 if i == 0 else -w / 2)

    def forward(self, x):
        for layer in self.layers:
            x = torch.sigmoid(layer(x))
        return x


def chain_batch():
    return torch.full((4, 1), 0.5, dtype=torch.float64), torch.ones(4, 1, dtype=torch.float64)


BATCH = zoo.classification_batch()


@pytest.mark.parametrize("name", list(zoo.HEALTHY))
def test_passes_on_the_healthy_toy_models_with_defaults(name):
    assert assert_gradient_ratio(*zoo.healthy(name)).passed


def test_a_deep_relu_net_at_he_scale_has_no_depth_trend():
    result = assert_gradient_ratio(
        deep_net(10, nn.ReLU, math.sqrt(2), bias_std=0.0), BATCH, F.cross_entropy
    )
    (group,) = result.groups
    assert group.pattern == "*" and len(group.layers) == 9 and group.trend < 2


def test_fails_when_gradients_vanish_in_a_deep_sigmoid_net_with_unit_gaussian_weights():
    model = deep_net(10, nn.Sigmoid, 1.0, scale_by_fan_in=False)
    with pytest.raises(
        SanityError,
        match=r"(?s)Gradients vanish toward the input!.*"
        r"shrinks toward the input along '\*' \(9 layers\)",
    ) as e:
        assert_gradient_ratio(model, BATCH, F.cross_entropy)
    message = str(e.value)
    assert "from '2' (RMS" in message and "to '18'" in message  # the first and last of the group
    assert "1. saturating activations (sigmoid, tanh) stacked deep" in message
    assert e.value.result.worst.trend > 10


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fails_on_nielsens_four_hidden_layer_network(seed):
    model = zoo.NielsenNet((784, 30, 30, 30, 30, 10), seed=seed)
    with pytest.raises(SanityError, match=r"(?s)vanish.*along 'layers\.\*' \(3 layers\)"):
        assert_gradient_ratio(model, zoo.mnist_like_batch(), zoo.nielsen_loss)


def test_passes_nielsens_three_hidden_layer_network_whose_decay_stays_under_10x():
    result = measure_gradient_ratio(
        zoo.NielsenNet((784, 30, 30, 30, 10)), zoo.mnist_like_batch(), zoo.nielsen_loss
    )
    assert result.passed and 3 < result.groups[0].trend < 10
    assert result.groups[0].toward_input == "shrinks"


def test_fails_when_gradients_explode_in_a_deep_relu_net_initialised_at_three_times_he():
    # The forward signal and the loss explode (activations x3 per layer); the weight gradients
    # are flat across layers, but the error signal grows 3x per layer toward the input.
    model = deep_net(10, nn.ReLU, 3 * math.sqrt(2), width=64, bias_std=0.0)
    with pytest.raises(
        SanityError,
        match=r"(?s)Gradients explode toward the input!.*grows toward the input"
        r".*1\. weights initialised too large",
    ) as e:
        assert_gradient_ratio(model, BATCH, F.cross_entropy)
    assert e.value.result.worst.rate == pytest.approx(3, rel=0.1)


def test_fails_when_gradients_explode_in_a_deep_tanh_net_with_weights_four_times_too_large():
    with pytest.raises(SanityError, match="Gradients explode toward the input!"):
        assert_gradient_ratio(deep_net(20, nn.Tanh, 4.0, width=64), BATCH, F.cross_entropy)


def test_nielsens_w100_chain_explodes_by_exactly_25_cubed():
    result = measure_gradient_ratio(NielsenChain(), chain_batch(), F.mse_loss)
    (group,) = result.groups
    assert group.trend == pytest.approx(25.0**3, rel=1e-9) and group.toward_input == "grows"
    assert not result.passed


def test_a_zero_initialised_branch_is_listed_as_silent_not_failed():
    model = deep_net(4, nn.ReLU, math.sqrt(2))
    nn.init.zeros_(model[-1].weight)  # blocks every error signal below it at step 0
    result = assert_gradient_ratio(model, BATCH, F.cross_entropy)
    assert result.silent == ("0", "2", "4", "6") and result.groups == ()


def test_max_decay_and_max_growth_relax_the_check():
    model = zoo.NielsenNet((784, 30, 30, 30, 30, 10))
    trend = measure_gradient_ratio(model, zoo.mnist_like_batch(), zoo.nielsen_loss).worst.trend
    assert_gradient_ratio(model, zoo.mnist_like_batch(), zoo.nielsen_loss, max_decay=trend * 1.01)
    chain = NielsenChain()
    assert_gradient_ratio(chain, chain_batch(), F.mse_loss, max_growth=2e4)


def test_gradient_ratio_works_in_float64():
    model = deep_net(4, nn.ReLU, math.sqrt(2)).double()
    assert assert_gradient_ratio(model, (BATCH[0].double(), BATCH[1]), F.cross_entropy).passed


def test_gradient_ratio_rejects_bad_arguments():
    with pytest.raises(ValueError, match="max_growth must be a number >= 1"):
        assert_gradient_ratio(zoo.mlp(), BATCH, F.cross_entropy, max_growth=0.5)
    with pytest.raises(TypeError, match="max_decay must be a number >= 1"):
        assert_gradient_ratio(zoo.mlp(), BATCH, F.cross_entropy, max_decay="10")
    with pytest.raises(TypeError, match=r"batch must be an \(inputs, targets\) pair"):
        assert_gradient_ratio(zoo.mlp(), BATCH[0], F.cross_entropy)


def test_the_check_leaves_the_model_and_global_state_as_it_found_them():
    model = zoo.cnn()
    model.eval()
    assert_restores(
        lambda: measure_gradient_ratio(model, zoo.image_batch(), F.cross_entropy), model
    )


@pytest.mark.parametrize("blocks", [1, 2, 3])
def test_one_blocks_fc1_and_fc2_are_two_roles_not_two_layers_of_a_depth(blocks):
    torch.manual_seed(0)
    r = measure_gradient_ratio(zoo.ResidualMLP(blocks), zoo.classification_batch(), F.cross_entropy)
    assert r.passed, str(r)
    assert {g.pattern for g in r.groups} <= {"blocks.*.fc1", "blocks.*.fc2"}
