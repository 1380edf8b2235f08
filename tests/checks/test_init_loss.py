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
    assert r.zero_output_loss < r.noise_loss == r.upper and r.output_kind == "logits"
    assert r.lower == r.perfect_loss == pytest.approx(0, abs=1e-6)  # cross-entropy's minimum


def test_the_zero_output_reference_of_network2s_summed_bce_is_10_ln_2():
    model, batch, loss_fn = healthy("nielsen_784_30_10")
    r = measure_init_loss(model, batch, loss_fn)
    assert r.zero_output_loss == pytest.approx(10 * math.log(2), rel=1e-6)
    assert r.n_classes is None  # not a softmax: 10 ln 2 is no ln C of an output dimension


@pytest.mark.parametrize("seed", range(10))
def test_passes_network2s_init_whose_output_biases_are_unit_gaussians(seed):
    # network2.py draws every bias from N(0, 1), the output layer's too: outputs of std 0.6-1.5
    # start it somewhat confident (loss 4.9-10.1 nats against 10 ln 2 = 6.93), within what
    # random outputs of std 2 give (11.1), the allowance for the field's inits.
    r = assert_init_loss(*healthy("nielsen_784_30_10", seed))
    assert r.output_std < 2 and r.loss < r.upper == pytest.approx(r.noise_loss)


@pytest.mark.parametrize("name", [*SOFTMAX_MODELS, "nielsen_784_30_10"])
def test_fails_when_the_last_layer_is_badly_scaled(name):
    model, batch, loss_fn = healthy(name)
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        last.weight.mul_(100)  # outputs of std 10 or more: far beyond any init of the field
    with pytest.raises(
        SanityError, match=r"(?s)Loss at initialisation is too high!.*Output: logits \(std"
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
    r = measure_init_loss(model, batch, loss_fn, expected=0.5)
    assert r.upper == pytest.approx(0.5 + r.noise_loss - r.zero_output_loss)
    assert not r.passed


def test_a_model_returning_probabilities_to_a_loss_that_takes_their_log_passes():
    model = nn.Sequential(zoo.mlp(), nn.Softmax(-1))
    nll_of_probs = lambda p, y: F.nll_loss(torch.log(p), y)  # noqa: E731
    r = assert_init_loss(model, zoo.classification_batch(), nll_of_probs)
    assert r.output_kind == "probabilities" and r.zero_output_loss == pytest.approx(math.log(10))


def test_a_model_returning_log_softmax_for_nll_loss_passes_as_the_pytorch_mnist_example():
    model = nn.Sequential(zoo.mlp(), nn.LogSoftmax(-1))
    r = assert_init_loss(model, zoo.classification_batch(), F.nll_loss)
    assert r.output_kind == "log-probabilities" and r.n_classes == 10


@pytest.mark.parametrize(
    ("head", "what"), [(nn.Softmax(-1), "probabilities"), (nn.Identity(), "raw logits")]
)
def test_fails_when_nll_loss_receives_something_other_than_log_probabilities(head, what):
    model = nn.Sequential(zoo.mlp(), head)
    with pytest.raises(
        SanityError, match=r"(?s)The loss goes negative for a right prediction!.*1\. NLLLoss"
    ) as e:
        assert_init_loss(model, zoo.classification_batch(), F.nll_loss)
    assert e.value.result.misuse == "negative", what


def test_fails_on_softmax_before_cross_entropy_naming_the_double_softmax_first():
    model = nn.Sequential(zoo.mlp(), nn.Softmax(-1))
    with pytest.raises(
        SanityError, match=r"(?s)cannot reach its minimum.*1\. softmax applied twice"
    ) as e:
        assert_init_loss(model, zoo.classification_batch(), F.cross_entropy)
    assert e.value.result.perfect_loss == pytest.approx(math.log(1 + 9 / math.e), rel=1e-4)


def test_fails_on_sigmoid_before_bce_with_logits_naming_the_double_sigmoid_first():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 1, 1), nn.Sigmoid()
    )
    x = torch.randn(4, 1, 8, 8)
    masks = (x > 0).float()
    with pytest.raises(
        SanityError, match=r"(?s)cannot reach its minimum.*1\. sigmoid before BCEWithLogitsLoss"
    ):
        assert_init_loss(model, (x, masks), F.binary_cross_entropy_with_logits)
    assert assert_init_loss(model, (x, masks), F.binary_cross_entropy).passed  # its proper loss


def test_fails_on_a_loss_summed_over_the_batch_and_rtol_accepts_it():
    summed = lambda o, y: F.cross_entropy(o, y, reduction="sum")  # noqa: E731
    model, batch = zoo.mlp(), zoo.classification_batch()
    with pytest.raises(SanityError, match=r"(?s)summed over the batch!.*16 x ln 10.*reduction"):
        assert_init_loss(model, batch, summed)
    assert assert_init_loss(model, batch, summed, expected=16 * math.log(10), rtol=0.1).passed


def test_passes_a_t5_style_init_whose_outputs_have_std_above_one():
    model = zoo.mlp()
    with torch.no_grad():
        factor = 1.15 / float(model(zoo.classification_batch()[0]).std())
        model[-1].weight.mul_(factor)
        model[-1].bias.mul_(factor)
    r = assert_init_loss(model, zoo.classification_batch(), F.cross_entropy)
    assert 1.1 < r.output_std < 1.2


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


@pytest.mark.parametrize(
    "loss_fn",
    [
        nn.MSELoss(reduction="sum"),
        nn.L1Loss(reduction="sum"),
        lambda z, y: F.smooth_l1_loss(z, y, reduction="sum"),
    ],
    ids=["mse", "l1", "smooth_l1"],
)
def test_a_regression_loss_summed_over_the_batch_fails_and_its_mean_passes(loss_fn):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 1))
    x, y = torch.randn(16, 20), torch.randn(16, 1)
    with pytest.raises(SanityError, match=r"(?s)summed over the batch!.*each sample twice"):
        assert_init_loss(model, (x, y), loss_fn)
    r = assert_init_loss(model, (x, y), F.mse_loss)
    assert r.doubled_loss == pytest.approx(r.loss)
