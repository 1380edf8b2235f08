"""Per-layer gradient norms (Nielsen's speed of learning) and the GradientMonitor."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import zoo
from state_oracle import assert_same, snapshot
from torch import nn
from torch.nn import functional as F

from nnsanity import GradientMonitor, layer_gradient_norms

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


def test_monitor_keeps_the_last_records_when_asked():
    model, batch = zoo.NielsenNet(), zoo.mnist_like_batch()
    with GradientMonitor(model, keep=2) as monitor:
        opt = train(model, batch, steps=5)
    assert len(monitor.history) == 2
    opt.zero_grad()
    zoo.nielsen_loss(model(batch[0]), batch[1]).backward()
    assert monitor.record() == layer_gradient_norms(model, batch, zoo.nielsen_loss)
    assert len(monitor.history) == 2 and monitor.history[-1] == monitor.record()


def test_monitor_rejects_bad_arguments():
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module"):
        GradientMonitor("model")
    with pytest.raises(TypeError, match="not a factory"):
        GradientMonitor(zoo.mlp(), optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    with pytest.raises(ValueError, match="kind must be"):
        GradientMonitor(zoo.mlp()).as_array("biases")
    with pytest.raises(ValueError, match="keep must be at least 1"):
        GradientMonitor(zoo.mlp(), keep=0)
    monitor = GradientMonitor(zoo.mlp())
    with monitor, pytest.raises(RuntimeError, match="already active"), monitor:
        pass
