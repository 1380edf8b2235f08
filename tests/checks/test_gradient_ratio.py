"""Per-layer gradient norms, the GradientMonitor, and the vanishing/exploding gradient check."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import zoo
from state_oracle import assert_same, snapshot
from torch import nn
from torch.nn import functional as F

from nnsanity import (
    GradientMonitor,
    assert_gradient_ratio,
    layer_gradient_norms,
    measure_gradient_ratio,
)
from nnsanity.errors import SanityError

# Planted bugs -----------------------------------------------------------------------------------


def deep_net(
    depth: int,
    activation: type[nn.Module],
    std: float,
    *,
    width: int = 32,
    scale_by_fan_in: bool = True,
    seed: int = 0,
) -> nn.Sequential:
    """``depth`` hidden layers; weights N(0, std^2 / fan_in) (or N(0, std^2)), biases N(0, 1)."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    d = 20
    for _ in range(depth):
        layer = nn.Linear(d, width)
        nn.init.normal_(layer.weight, 0.0, std / math.sqrt(d) if scale_by_fan_in else std)
        nn.init.normal_(layer.bias)
        layers += [layer, activation()]
        d = width
    return nn.Sequential(*layers, nn.Linear(d, zoo.N_CLASSES))


class NielsenChain(nn.Module):
    """Ch. 5's exploding chain: one sigmoid neuron per layer, w = 100, biases making every z = 0.

    Every factor w sigma'(z) is 25, so the first layer's gradient is 25^3 = 15625 times the
    fourth's (the weight gradients too, as every layer's input is 0.5).
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


class ZeroedMiddle(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(20, 32), nn.Linear(32, 32), nn.Linear(32, 10)
        nn.init.zeros_(self.c.weight)  # blocks every gradient below it

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


# layer_gradient_norms ---------------------------------------------------------------------------


def test_norms_match_autograd_computed_by_hand():
    model, (x, y) = zoo.mlp(), zoo.classification_batch()
    norms = layer_gradient_norms(model, (x, y), F.cross_entropy)
    F.cross_entropy(model(x), y).backward()
    for name in ("0", "2", "4"):
        layer = model.get_submodule(name)
        assert norms[name].weight_norm == pytest.approx(float(layer.weight.grad.norm()), rel=1e-5)
        assert norms[name].bias_norm == pytest.approx(float(layer.bias.grad.norm()), rel=1e-5)
        assert norms[name].bias_rms == pytest.approx(
            norms[name].bias_norm / math.sqrt(32 if (name != "4") else 10), rel=1e-6
        )


def test_there_is_one_entry_per_module_owning_parameters_in_registration_order():
    model = zoo.TinyCausalLM()
    norms = layer_gradient_norms(model, zoo.token_batch(), zoo.lm_loss)
    owners = [n for n, m in model.named_modules() if list(m.parameters(recurse=False))]
    assert list(norms) == owners
    assert norms["block.norm1"].module == "LayerNorm"
    assert norms["tok"].bias_norm is None  # an Embedding has no bias group


def test_frozen_parameters_are_left_out():
    model = zoo.mlp()
    model[0].requires_grad_(False)
    assert list(layer_gradient_norms(model, zoo.classification_batch(), F.cross_entropy)) == [
        "2",
        "4",
    ]


def test_a_two_hidden_layer_sigmoid_net_learns_slower_in_its_first_hidden_layer():
    norms = layer_gradient_norms(
        zoo.NielsenNet((784, 30, 30, 10)), zoo.mnist_like_batch(100), zoo.nielsen_loss
    )
    assert norms["layers.0"].bias_norm < norms["layers.1"].bias_norm


def test_norms_leave_gradients_and_global_state_as_they_were():
    model, batch = zoo.mlp(), zoo.classification_batch()
    model[0].weight.grad = torch.ones_like(model[0].weight)
    model.eval()
    before = snapshot(model)
    layer_gradient_norms(model, batch, F.cross_entropy)
    assert_same(before, snapshot(model))


# GradientMonitor --------------------------------------------------------------------------------


def train(model, batch, steps, lr=0.1, accumulate=1):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    x, y = batch
    for _ in range(steps):
        opt.zero_grad()
        for _ in range(accumulate):
            zoo.nielsen_loss(model(x), y).backward()
        opt.step()
    return opt


def test_monitor_records_one_entry_per_optimizer_step_of_an_unchanged_loop():
    model, batch = zoo.NielsenNet((784, 30, 30, 10)), zoo.mnist_like_batch(32)
    at_init = layer_gradient_norms(model, batch, zoo.nielsen_loss)
    with GradientMonitor(model) as monitor:
        train(model, batch, steps=4)
    assert len(monitor.history) == 4
    assert monitor.layers == ["layers.0", "layers.1", "layers.2"]
    assert monitor.history[0] == at_init  # read before the first update
    speed = monitor.as_array("bias")
    assert speed.shape == (4, 3)
    assert (speed[:, 0] < speed[:, 1]).all()


def test_monitor_reads_accumulated_gradients_once_per_step():
    model, batch = zoo.NielsenNet(), zoo.mnist_like_batch()
    once = layer_gradient_norms(model, batch, zoo.nielsen_loss)["layers.0"].weight_norm
    with GradientMonitor(model) as monitor:
        train(model, batch, steps=1, accumulate=3)
    assert len(monitor.history) == 1
    assert monitor.history[0]["layers.0"].weight_norm == pytest.approx(3 * once, rel=1e-5)


def test_monitor_ignores_other_models_optimizers_and_removes_its_hook_on_exit():
    model, other = zoo.NielsenNet(), zoo.NielsenNet(seed=1)
    batch = zoo.mnist_like_batch()
    with GradientMonitor(model) as monitor:
        train(other, batch, steps=2)
    assert monitor.history == []
    train(model, batch, steps=2)
    assert monitor.history == []


def test_monitor_watches_only_the_given_optimizer():
    model, batch = zoo.NielsenNet(), zoo.mnist_like_batch()
    watched = torch.optim.SGD(model.parameters(), lr=0.1)
    with GradientMonitor(model, optimizer=watched) as monitor:
        train(model, batch, steps=2)  # its own optimizer, not the watched one
        zoo.nielsen_loss(model(batch[0]), batch[1]).backward()
        watched.step()
    assert len(monitor.history) == 1


def test_monitor_records_on_demand_and_fills_missing_biases_with_nan():
    model = nn.Sequential(nn.Linear(4, 3, bias=False), nn.Linear(3, 2))
    monitor = GradientMonitor(model)
    model(torch.ones(1, 4)).sum().backward()
    monitor.record()
    bias = monitor.as_array("bias", "rms")
    assert np.isnan(bias[0, 0]) and bias[0, 1] == pytest.approx(1.0)
    assert monitor.as_array("weight", layers=["1"]).shape == (1, 1)


def test_monitor_rejects_bad_arguments():
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module"):
        GradientMonitor("model")
    with pytest.raises(TypeError, match="not a factory"):
        GradientMonitor(zoo.mlp(), optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    with pytest.raises(ValueError, match="kind must be"):
        GradientMonitor(zoo.mlp()).as_array("biases")
    monitor = GradientMonitor(zoo.mlp())
    with monitor, pytest.raises(RuntimeError, match="already active"), monitor:
        pass


# assert_gradient_ratio --------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(zoo.HEALTHY))
def test_gradient_ratio_passes_on_healthy_models_with_defaults(name):
    model_factory, batch_factory, loss_fn = zoo.HEALTHY[name]
    result = assert_gradient_ratio(model_factory(), batch_factory(), loss_fn)
    assert 1 <= result.ratio <= 100


def test_fails_when_gradients_vanish_in_a_deep_sigmoid_net_with_unit_gaussian_weights():
    model = deep_net(10, nn.Sigmoid, 1.0, scale_by_fan_in=False)
    with pytest.raises(
        SanityError,
        match=r"(?s)Gradients vanish toward the input!.*up to 100 allowed.*Smallest: layer '\d+'"
        r".*1\. .*ReLU.*He.*normalisation.*residual",
    ) as info:
        assert_gradient_ratio(model, zoo.classification_batch(), F.cross_entropy)
    assert info.value.result.ratio > 100


def test_fails_on_nielsens_four_hidden_layer_network():
    model = zoo.NielsenNet((784, 30, 30, 30, 30, 10))
    with pytest.raises(SanityError, match=r"(?s)vanish.*Smallest: layer 'layers\.0'"):
        assert_gradient_ratio(model, zoo.mnist_like_batch(), zoo.nielsen_loss)


def test_fails_when_gradients_explode_in_a_deep_tanh_net_with_weights_four_times_too_large():
    model = deep_net(20, nn.Tanh, 4.0, width=64)
    with pytest.raises(
        SanityError,
        match=r"(?s)Gradients explode toward the input!.*1\. .*init scale.*learning rate.*clip",
    ) as info:
        assert_gradient_ratio(model, zoo.classification_batch(), F.cross_entropy)
    assert info.value.result.first_last_ratio > 1


def test_nielsens_w100_chain_explodes_by_exactly_25_cubed():
    result = measure_gradient_ratio(NielsenChain(), chain_batch(), F.mse_loss)
    assert result.first_last_ratio == pytest.approx(25.0**3, rel=1e-9)
    with pytest.raises(SanityError, match=r"(?s)explode.*smallest gradient RMS: 1\.56e\+04"):
        assert_gradient_ratio(NielsenChain(), chain_batch(), F.mse_loss)


def test_fails_naming_a_layer_whose_gradient_is_exactly_zero():
    with pytest.raises(
        SanityError, match=r"(?s)Layer 'a' gets an exactly zero gradient!.*assert_params_update"
    ):
        assert_gradient_ratio(ZeroedMiddle(), zoo.classification_batch(), F.cross_entropy)


def test_max_ratio_relaxes_the_check():
    model = zoo.NielsenNet((784, 30, 30, 30, 30, 10))
    ratio = measure_gradient_ratio(model, zoo.mnist_like_batch(), zoo.nielsen_loss).ratio
    assert_gradient_ratio(model, zoo.mnist_like_batch(), zoo.nielsen_loss, max_ratio=ratio * 1.01)


def test_embedding_rms_counts_only_the_rows_of_tokens_in_the_batch():
    model = zoo.TinyCausalLM()
    batch = zoo.token_batch()  # 12 positions of the 64 in the position table
    stats = layer_gradient_norms(model, batch, zoo.lm_loss)["pos"]
    assert stats.matrix_rms == pytest.approx(stats.weight_norm / math.sqrt(12 * 32), rel=1e-6)


def test_gradient_ratio_works_in_float64():
    model, (x, y) = zoo.mlp().double(), zoo.classification_batch()
    assert assert_gradient_ratio(model, (x.double(), y), F.cross_entropy).ratio < 100


def test_gradient_ratio_rejects_bad_arguments():
    batch = zoo.classification_batch()
    with pytest.raises(ValueError, match="max_ratio must be a number >= 1"):
        assert_gradient_ratio(zoo.mlp(), batch, F.cross_entropy, max_ratio=0.5)
    with pytest.raises(TypeError, match="batch must be an \\(inputs, targets\\) pair"):
        assert_gradient_ratio(zoo.mlp(), batch[0], F.cross_entropy)
    with pytest.raises(ValueError, match="no trainable weight matrix"):
        measure_gradient_ratio(nn.LayerNorm(20), batch, lambda o, y: o.sum())


def test_gradient_ratio_leaves_model_and_global_state_unchanged():
    model = zoo.cnn()
    model[0].weight.grad = torch.ones_like(model[0].weight)
    before = snapshot(model)
    with pytest.raises(SanityError):
        assert_gradient_ratio(model, zoo.image_batch(), F.cross_entropy, max_ratio=1.0)
    assert_same(before, snapshot(model))
