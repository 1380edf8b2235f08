"""The optimisation checks: the loss decreases, and one batch can be overfitted."""

from __future__ import annotations

import math

import pytest
import torch
import zoo
from causes import first_cause
from state_oracle import assert_restores
from torch import nn
from torch.nn import functional as F
from zoo import healthy, user_step

from nnsanity import (
    assert_can_overfit,
    assert_loss_decreases,
    assert_uses_inputs,
    measure_loss_decrease,
    measure_overfit,
)
from nnsanity.errors import SanityError

pytestmark = pytest.mark.usefixtures("one_thread")


# --- assert_loss_decreases -----------------------------------------------------------------------


@pytest.mark.parametrize("name", zoo.HEALTHY)
def test_loss_decreases_on_every_healthy_model_with_default_arguments(name):
    model, batch, loss_fn = healthy(name)
    r = assert_loss_decreases(model, batch, loss_fn)
    assert r.decrease >= r.required > 0
    assert len(r.trace) < 25 and r.trace[0] == pytest.approx(r.initial_loss, rel=1e-5)  # early


@pytest.mark.parametrize("name", ["mlp", "causal_lm"])
def test_a_correct_user_training_step_passes_loss_decrease_and_overfit(name):
    model, batch, loss_fn = healthy(name)
    r = assert_loss_decreases(model, batch, loss_fn, step=user_step(model, None, loss_fn))
    assert r.accumulates_gradients is False
    r = assert_can_overfit(model, batch, loss_fn, step=user_step(model, None, loss_fn))
    assert r.steps < 5000


def test_a_user_step_that_zeroes_gradients_after_the_update_passes():
    model, batch, loss_fn = healthy("mlp")
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)

    def step(b):
        loss = loss_fn(model(b[0]), b[1])
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss

    assert assert_loss_decreases(model, batch, loss_fn, step=step).accumulates_gradients is False


def test_fails_when_the_training_step_never_calls_optimizer_step():
    model, batch, loss_fn = healthy("mlp")
    with pytest.raises(
        SanityError,
        match=r"(?s)No parameter changed during training!.*1\. the step never calls optimizer",
    ):
        assert_loss_decreases(model, batch, loss_fn, step=user_step(model, "no_optimizer_step"))


def test_names_log_softmax_over_a_single_unit_when_no_parameter_can_change():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 1), nn.LogSoftmax(dim=1))
    x, y = zoo.classification_batch()[0], torch.ones(16, 1)
    with pytest.raises(
        SanityError, match=r"(?s)No parameter changed.*1\. the output is 0 for every"
    ) as e:
        assert_loss_decreases(model, (x, y), F.binary_cross_entropy_with_logits)
    assert e.value.result.constant_output == 0 and len(e.value.result.trace) == 10  # stopped


def test_fails_when_the_training_step_flips_the_loss_sign():
    model, batch, loss_fn = healthy("mlp")
    with pytest.raises(SanityError, match=r"(?s)Loss diverged!.*Loss at step \d+") as e:
        assert_loss_decreases(model, batch, loss_fn, step=user_step(model, "flipped_sign"))
    assert "1. the update climbs the loss: a flipped sign" in str(e.value)
    assert e.value.result.final_loss > e.value.result.initial_loss


@pytest.mark.parametrize("name", ["mlp", "cnn_batchnorm"])
def test_fails_with_the_divergence_step_when_the_learning_rate_is_far_too_high(name):
    model, batch, loss_fn = healthy(name)
    sgd = lambda p: torch.optim.SGD(p, lr=1e3)  # noqa: E731
    with pytest.raises(SanityError, match=r"Loss at step [12]: ") as e:
        assert_loss_decreases(model, batch, loss_fn, optimizer=sgd)
    assert "1. the learning rate is too high" in str(e.value)


def test_judges_the_path_a_loss_that_explodes_then_lands_low_fails_at_the_explosion():
    # A divergent learning rate in the user's step: the loss goes 1.6, then 1.5e12, then lands
    # low; the end point alone would pass.
    model, batch, loss_fn = healthy("mlp")
    inner = user_step(model)
    losses = iter([None, 1.5e12])

    def step(b):
        loss = inner(b)
        spike = next(losses, None)
        return loss if spike is None else torch.tensor(spike)

    with pytest.raises(SanityError, match=r"(?s)Loss diverged!.*Loss at step 1: 1\.5e\+12") as e:
        assert_loss_decreases(model, batch, loss_fn, step=step)
    assert "1. the learning rate is too high" in str(e.value)


@pytest.mark.parametrize("name", zoo.HEALTHY)
def test_fails_when_the_training_step_never_calls_zero_grad(name):
    model, batch, loss_fn = healthy(name)
    bad_step = user_step(model, "no_zero_grad", loss_fn)
    with pytest.raises(
        SanityError,
        match=r"(?s)accumulates gradients across calls!.*held the previous gradient",
    ) as failure:
        assert_loss_decreases(model, batch, loss_fn, step=bad_step)
    assert first_cause(failure).id == "missing_zero_grad"


def test_a_step_without_zero_grad_still_lowers_the_loss_so_only_the_gradient_probe_catches_it():
    # The finding behind the probe: under Adam, accumulated gradients still point downhill.
    model, batch, loss_fn = healthy("mlp")
    r = measure_loss_decrease(model, batch, loss_fn, step=user_step(model, "no_zero_grad"))
    assert r.decrease > r.required and r.accumulates_gradients is True


def test_fails_when_the_learning_rate_is_too_low_to_move_the_loss():
    model, batch, loss_fn = healthy("mlp")
    tiny = lambda p: torch.optim.Adam(p, lr=1e-7)  # noqa: E731
    with pytest.raises(
        SanityError,
        match=r"(?s)Decrease over 100 steps: .* \(at least .* required\).*1\. .*too low",
    ):
        assert_loss_decreases(model, batch, loss_fn, optimizer=tiny)


def test_dropout_noise_raises_the_required_decrease_above_the_relative_margin():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Dropout(0.5), nn.Linear(64, 10))
    batch = zoo.classification_batch()
    r = measure_loss_decrease(model, batch, F.cross_entropy, min_decrease=0.0)
    assert r.noise_sd > 0 and r.required == pytest.approx(3 * r.noise_sd * 0.5)  # sqrt(2/8)
    assert r.required > 0.01 * r.initial_loss and r.passed
    assert measure_loss_decrease(*healthy("mlp")).noise_sd == 0  # deterministic: no noise floor


# --- assert_can_overfit --------------------------------------------------------------------------


@pytest.mark.parametrize("name", zoo.HEALTHY)
def test_overfits_one_batch_of_every_healthy_model_with_default_arguments(name):
    model, batch, loss_fn = healthy(name)
    r = assert_can_overfit(model, batch, loss_fn)
    reference = min(r.initial_loss, r.zero_output_loss or math.inf)
    assert r.final_loss <= r.target == pytest.approx(0.05 * reference)
    assert r.steps < 5000 and r.accuracy == 1.0  # stopped early, once the target was reached


def test_a_badly_scaled_init_cannot_raise_the_bar_above_the_loss_of_all_zero_outputs():
    model, batch, loss_fn = healthy("mlp")
    with torch.no_grad():
        model[-1].weight.mul_(100)  # planted bug: confidently wrong logits at init
    # 0.05 x the first loss (14.27) would be 0.714, reached after ~100 steps at 87.5% training
    # accuracy; the bar is 0.05 x ln 10 instead, the loss of "no preference" (~220 steps).
    adam = lambda p: torch.optim.Adam(p, lr=3e-4)  # noqa: E731 - the step counts above
    r = measure_overfit(model, batch, loss_fn, max_steps=150, optimizer=adam)
    assert r.initial_loss > 10 and r.zero_output_loss == pytest.approx(math.log(10))
    assert r.target == pytest.approx(0.05 * math.log(10)) and not r.passed
    with pytest.raises(
        SanityError, match=r"0\.05 of the way from 0 to the no-preference loss 2\.3"
    ):
        assert_can_overfit(model, batch, loss_fn, max_steps=150, optimizer=adam)


def test_fails_on_a_double_softmax_even_though_training_accuracy_reaches_100_percent():
    model, batch, _ = healthy("mlp")
    double_softmax = lambda out, y: F.cross_entropy(out.softmax(-1), y)  # noqa: E731
    with pytest.raises(SanityError, match=r"Training accuracy: 100%") as e:
        assert_can_overfit(model, batch, double_softmax)
    assert "1. softmax/log_softmax (or sigmoid) applied before" in str(e.value)
    assert e.value.result.best_loss > 1.4  # the floor ln(1 + 9/e) = 1.46 for 10 classes


def test_a_model_that_cannot_fit_comes_back_early_and_says_so():
    # softmax before cross-entropy in a small CNN: its loss is floored at 1.46, so the 5,000-step
    # budget is not spent once the trace shows the target out of reach
    model = nn.Sequential(zoo.cnn(), nn.Softmax(-1))
    with pytest.raises(SanityError, match=r"(?s)Stopped early: at the rate of the last steps") as e:
        assert_can_overfit(model, zoo.image_batch(), F.cross_entropy)
    result = e.value.result
    assert result.stopped == "out of reach" and result.steps <= 1000
    assert "1. softmax/log_softmax (or sigmoid) applied before a loss" in str(e.value)


def test_fails_with_the_divergence_step_when_overfitting_with_a_far_too_high_learning_rate():
    model, batch, loss_fn = healthy("mlp")
    sgd = lambda p: torch.optim.SGD(p, lr=1e3)  # noqa: E731
    with pytest.raises(SanityError, match=r"(?s)the loss diverged!.*Loss at step \d+: nan"):
        assert_can_overfit(model, batch, loss_fn, optimizer=sgd)


def test_an_explicit_target_and_step_budget_are_honoured():
    model, batch, loss_fn = healthy("mlp")
    r = measure_overfit(model, batch, loss_fn, target=2.0, max_steps=1000)
    assert r.passed and r.final_loss <= 2.0 < r.trace[-2]
    with pytest.raises(SanityError, match=r"(?s)after 50 steps.*1\. .*max_steps=50 too small"):
        assert_can_overfit(model, batch, loss_fn, max_steps=50)


# --- arguments and side effects ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"model": "mlp"}, TypeError, "model must be a torch.nn.Module"),
        ({"batch": torch.zeros(3)}, TypeError, r"batch must be an \(inputs, targets\) pair"),
        ({"loss_fn": 3}, TypeError, "loss_fn must be callable"),
        ({"optimizer": 0.1}, TypeError, "optimizer must be a factory"),
        ({"optimizer": torch.optim.Adam, "step": print}, ValueError, "not both"),
        ({"seed": 1.5}, TypeError, "seed must be an int"),
    ],
)
# The three training checks share one validator (nnsanity._harness.Harness).
@pytest.mark.parametrize("check", [assert_loss_decreases, assert_can_overfit, assert_uses_inputs])
def test_bad_arguments_raise_errors_that_name_the_problem(check, kwargs, error, match):
    model, batch, loss_fn = healthy("mlp")
    args = {"model": model, "batch": batch, "loss_fn": loss_fn, **kwargs}
    with pytest.raises(error, match=match):
        check(args.pop("model"), args.pop("batch"), args.pop("loss_fn"), **args)


@pytest.mark.parametrize(
    ("check", "kwargs", "match"),
    [
        (assert_loss_decreases, {"steps": 0}, "steps must be at least 1"),
        (assert_loss_decreases, {"min_decrease": 1.5}, "min_decrease must be a fraction"),
        (assert_can_overfit, {"max_steps": -1}, "max_steps must be at least 1"),
    ],
)
def test_out_of_range_options_raise_value_errors(check, kwargs, match):
    with pytest.raises(ValueError, match=match):
        check(*healthy("mlp"), **kwargs)


def test_a_non_numeric_target_raises_a_type_error():
    with pytest.raises(TypeError, match="target must be a finite number"):
        assert_can_overfit(*healthy("mlp"), target="low")


@pytest.mark.parametrize("check", [measure_loss_decrease, measure_overfit])
def test_the_checks_leave_the_model_and_global_state_as_they_found_them(check):
    model, batch, loss_fn = healthy("cnn_batchnorm")
    model.eval()
    assert_restores(lambda: check(model, batch, loss_fn), model)  # under no_grad: they train anyway
    assert not any(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())


def test_the_checks_are_deterministic_for_a_given_seed():
    model, batch, loss_fn = healthy("mlp")
    a = measure_loss_decrease(model, batch, loss_fn, steps=20)
    assert a == measure_loss_decrease(model, batch, loss_fn, steps=20)


def test_the_checks_work_in_float64():
    model, (x, y), loss_fn = healthy("mlp")
    assert assert_loss_decreases(model.double(), (x.double(), y), loss_fn).passed
