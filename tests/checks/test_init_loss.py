"""The init-loss check: at initialisation the loss is that of an uninformed guess."""

from __future__ import annotations

import math

import pytest
import torch
import zoo
from state_oracle import assert_same, snapshot
from torch import nn
from torch.nn import functional as F
from zoo import healthy

from nnsanity import assert_init_loss, measure_init_loss
from nnsanity.errors import SanityError

SOFTMAX_MODELS = ["mlp", "cnn_batchnorm", "causal_lm"]


@pytest.mark.parametrize("name", SOFTMAX_MODELS)
def test_every_healthy_softmax_model_starts_near_ln_c_with_default_arguments(name):
    model, batch, loss_fn = healthy(name)
    r = assert_init_loss(model, batch, loss_fn)
    c = 16 if name == "causal_lm" else zoo.N_CLASSES
    assert r.n_classes == c and r.ln_classes == pytest.approx(math.log(c))
    assert r.expected == r.zero_output_loss == pytest.approx(math.log(c), rel=1e-6)
    assert r.zero_output_loss < r.unit_noise_loss == r.upper


def test_the_zero_output_reference_of_network2s_summed_bce_is_10_ln_2():
    model, batch, loss_fn = healthy("nielsen_784_30_10")
    r = measure_init_loss(model, batch, loss_fn)
    assert r.zero_output_loss == pytest.approx(10 * math.log(2), rel=1e-6)
    assert r.n_classes is None  # not a softmax: 10 ln 2 is no ln C of an output dimension


@pytest.mark.parametrize("seed", [0, 2, 3])
def test_flags_network2s_init_whose_output_biases_are_unit_gaussians(seed):
    # A real finding, not a planted bug: network2.py draws every bias from N(0, 1), the output
    # layer's too, which starts it more confident than unit-scale random logits (loss 8.4 to 10.1
    # against a bound of 8.27 for these seeds; 6 of seeds 0-9 are flagged).
    model, batch, loss_fn = healthy("nielsen_784_30_10", seed)
    with pytest.raises(
        SanityError, match=r"up to 8\.2\d+ allowed: the loss of unit-scale random outputs"
    ):
        assert_init_loss(model, batch, loss_fn)


@pytest.mark.parametrize("seed", [0, 2, 3])
def test_network2s_init_passes_once_its_output_biases_are_zeroed(seed):
    model, batch, loss_fn = healthy("nielsen_784_30_10", seed)
    with torch.no_grad():
        model.layers[-1].bias.zero_()
    assert assert_init_loss(model, batch, loss_fn).loss < 8.0


@pytest.mark.parametrize("name", [*SOFTMAX_MODELS, "nielsen_784_30_10"])
def test_fails_when_the_last_layer_is_badly_scaled(name):
    model, batch, loss_fn = healthy(name)
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        last.weight.mul_(20)
    with pytest.raises(
        SanityError, match=r"(?s)Loss at initialisation is too high!.*Output std"
    ) as e:
        assert_init_loss(model, batch, loss_fn)
    message = str(e.value)
    assert "1. the final layer is too large: scale its weights down" in message
    assert "set it to log(class frequencies)" in message


def test_an_explicit_expected_and_rtol_bound_the_loss_on_both_sides():
    model, batch, loss_fn = healthy("mlp")
    assert assert_init_loss(model, batch, loss_fn, expected=math.log(10), rtol=0.05).passed
    with pytest.raises(
        SanityError, match=r"within \[2\.85, 3\.15\] required: expected 3 ± 0\.05"
    ) as e:
        assert_init_loss(model, batch, loss_fn, expected=3.0, rtol=0.05)
    assert "lower than expected" in str(e.value)


def test_an_explicit_expected_without_rtol_gets_the_unit_noise_allowance():
    model, batch, loss_fn = healthy("mlp")
    r = measure_init_loss(model, batch, loss_fn, expected=1.5)
    assert r.upper == pytest.approx(1.5 + r.unit_noise_loss - r.zero_output_loss)
    assert not r.passed


def test_a_model_returning_probabilities_needs_an_explicit_reference():
    model = nn.Sequential(zoo.mlp(), nn.Softmax(-1))
    nll_of_probs = lambda p, y: F.nll_loss(torch.log(p), y)  # noqa: E731
    batch = zoo.classification_batch()
    with pytest.raises(ValueError, match="not probabilities"):
        assert_init_loss(model, batch, nll_of_probs)
    assert assert_init_loss(model, batch, nll_of_probs, expected=math.log(10), rtol=0.1).passed


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"model": nn.Identity()}, ValueError, "no trainable parameters"),
        ({"batch": [torch.zeros(3)]}, TypeError, r"batch must be an \(inputs, targets\) pair"),
        ({"loss_fn": "ce"}, TypeError, "loss_fn must be callable"),
        ({"loss_fn": None}, TypeError, "loss_fn is None, which needs a mapping batch"),
        ({"expected": "ln 10"}, TypeError, "expected must be a finite number"),
        ({"expected": math.nan}, TypeError, "expected must be a finite number"),
        ({"rtol": 0}, ValueError, "rtol must be a positive number"),
        ({"seed": None}, TypeError, "seed must be an int"),
    ],
)
def test_bad_arguments_raise_errors_that_name_the_problem(kwargs, error, match):
    args = dict(zip(("model", "batch", "loss_fn"), healthy("mlp")), **kwargs)
    with pytest.raises(error, match=match):
        assert_init_loss(args.pop("model"), args.pop("batch"), args.pop("loss_fn"), **args)


def test_a_model_returning_a_dict_of_logits_gets_the_default_reference():
    class ReturnsDict(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = zoo.mlp()

        def forward(self, x):
            return {"logits": self.net(x)}

    loss_fn = lambda out, y: F.cross_entropy(out["logits"], y)  # noqa: E731
    batch = zoo.classification_batch()
    r = assert_init_loss(ReturnsDict(), batch, loss_fn)
    assert r.n_classes == 10 and r.zero_output_loss == pytest.approx(math.log(10), rel=1e-6)


def test_the_check_leaves_the_model_and_global_state_as_it_found_them():
    model, batch, loss_fn = healthy("cnn_batchnorm")
    model.eval()
    before = snapshot(model)
    r = measure_init_loss(model, batch, loss_fn)
    assert_same(before, snapshot(model))
    assert torch.is_grad_enabled() and not any(m.training for m in model.modules())
    assert r == measure_init_loss(model, batch, loss_fn)  # deterministic


def test_the_check_works_in_float64():
    model, (x, y), loss_fn = healthy("mlp")
    r = assert_init_loss(model.double(), (x.double(), y), loss_fn)
    assert r.ln_classes == pytest.approx(math.log(10))
