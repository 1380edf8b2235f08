"""Exploding and vanishing forward signals: a depth trend of the activations, like with like."""

from __future__ import annotations

import math

import pytest
import torch
import zoo
from architectures import ZOO
from state_oracle import assert_restores
from torch import nn

from nnsanity import assert_activation_growth, measure_activation_growth
from nnsanity.errors import SanityError

pytestmark = pytest.mark.usefixtures("one_thread")

BATCH = zoo.classification_batch()


class Exp(nn.Module):
    def forward(self, x):
        return torch.exp(x)


def deep_net(depth, activation, gain=None, *, width=64, seed=0):
    """``depth`` hidden layers of ``width``; weights N(0, gain^2 / fan_in) and zero biases, or
    PyTorch's default init when ``gain`` is None."""
    torch.manual_seed(seed)
    layers, d = [], 20
    for _ in range(depth):
        layer = nn.Linear(d, width)
        if gain is not None:
            nn.init.normal_(layer.weight, 0.0, gain / math.sqrt(d))
            nn.init.zeros_(layer.bias)
        layers += [layer, activation()]
        d = width
    return nn.Sequential(*layers, nn.Linear(d, zoo.N_CLASSES))


HE = math.sqrt(2)


@pytest.mark.parametrize("name", list(zoo.HEALTHY))
def test_passes_on_the_healthy_toy_models_with_defaults(name):
    model, batch, _ = zoo.healthy(name)
    assert assert_activation_growth(model, batch).passed


@pytest.mark.parametrize("name", list(ZOO))
def test_passes_on_the_real_architectures_with_defaults(name):
    arch = ZOO[name]
    r = measure_activation_growth(arch.build(), arch.batch())
    assert r.passed and all(g.trend < 2 for g in r.groups), r


@pytest.mark.parametrize("activation", [nn.ReLU, nn.GELU, nn.Tanh])
def test_a_deep_net_at_its_designed_init_scale_has_no_depth_trend(activation):
    gain = HE if activation is not nn.Tanh else 1.0  # He for ReLU-like, Glorot/LeCun for tanh
    r = assert_activation_growth(deep_net(10, activation, gain), BATCH)
    (group,) = r.groups
    assert group.pattern == "*" and len(group.layers) == 9 and group.rate < 1.3


def test_a_deep_relu_net_at_pytorchs_default_init_passes():
    # kaiming_uniform(a=sqrt(5)) is 1/sqrt(6) of He scale: the signal shrinks until the
    # biases hold it, about 1.1x per layer
    assert assert_activation_growth(deep_net(10, nn.ReLU), BATCH).groups[0].rate < 1.2


def test_fails_when_activations_explode_in_a_relu_net_at_three_times_he_scale():
    with pytest.raises(
        SanityError,
        match=r"(?s)Activations explode with depth!.*grow with depth along '\*' \(9 layers\).*"
        r"1\. weights initialised too large",
    ) as e:
        assert_activation_growth(deep_net(10, nn.ReLU, 3 * HE), BATCH)
    worst = e.value.result.worst
    assert worst.rate == pytest.approx(3, rel=0.1)  # about the init's excess scale per layer
    assert worst.rms[-1] / worst.rms[0] > 1000


def test_fails_when_activations_vanish_in_a_relu_net_at_a_third_of_he_scale():
    with pytest.raises(
        SanityError, match=r"(?s)Activations vanish with depth!.*1\. weights initialised too small"
    ) as e:
        assert_activation_growth(deep_net(10, nn.ReLU, HE / 3), BATCH)
    assert e.value.result.worst.rate == pytest.approx(3, rel=0.1)


def test_fails_naming_the_first_layer_that_overflows_under_an_exponential_activation():
    with pytest.raises(
        SanityError, match=r"(?s)Activations overflow!.*'(\d+)'.*1\. an unbounded activation"
    ) as e:
        assert_activation_growth(deep_net(6, Exp, 1.0), BATCH)
    r = e.value.result
    first_bad = next(
        str(i)
        for i in range(0, 12, 2)
        if not torch.isfinite(deep_net(6, Exp, 1.0)[: i + 1](BATCH[0])).all()
    )
    assert r.overflow == first_bad and r.last_finite[-1][1] > 10  # exp(70) overflows next


def test_a_short_stack_passes_even_at_three_times_he_scale():
    # 3 grouped layers compound 3 x 3 = 9x, under the 10x bound: documented, not hidden
    r = assert_activation_growth(deep_net(4, nn.ReLU, 3 * HE), BATCH)
    assert r.groups[0].trend < r.max_growth


def test_max_growth_and_max_decay_relax_the_check():
    big, small = deep_net(10, nn.ReLU, 3 * HE), deep_net(10, nn.ReLU, HE / 3)
    assert_activation_growth(
        big, BATCH, max_growth=measure_activation_growth(big, BATCH).worst.trend * 1.01
    )
    assert_activation_growth(
        small, BATCH, max_decay=measure_activation_growth(small, BATCH).worst.trend * 1.01
    )


def test_activation_growth_rejects_bad_arguments():
    with pytest.raises(ValueError, match="max_growth must be a number >= 1"):
        assert_activation_growth(zoo.mlp(), BATCH, max_growth=0.5)
    with pytest.raises(TypeError, match="max_decay must be a number >= 1"):
        assert_activation_growth(zoo.mlp(), BATCH, max_decay=None)
    with pytest.raises(TypeError, match=r"batch must be an \(inputs, targets\) pair"):
        assert_activation_growth(zoo.mlp(), BATCH[0])


def test_the_check_leaves_the_model_and_global_state_as_it_found_them():
    model = zoo.cnn()
    model.eval()
    assert_restores(lambda: measure_activation_growth(model, zoo.image_batch()), model)


def test_results_are_the_same_run_after_run():
    first = measure_activation_growth(deep_net(10, nn.ReLU, 3 * HE), BATCH).to_dict()
    assert measure_activation_growth(deep_net(10, nn.ReLU, 3 * HE), BATCH).to_dict() == first


@pytest.mark.parametrize("blocks", [1, 2, 3])
def test_one_blocks_fc1_and_fc2_are_two_roles_not_two_layers_of_a_depth(blocks):
    torch.manual_seed(0)
    r = measure_activation_growth(zoo.ResidualMLP(blocks), BATCH)
    assert r.passed, str(r)
    assert {g.pattern for g in r.groups} <= {"blocks.*.fc1", "blocks.*.fc2"}
