"""A stable loss: a short run on one batch neither diverges nor bounces back above its best."""

from __future__ import annotations

import math

import mnist_recipe
import pytest
import torch
import zoo
from architectures import ZOO
from causes import first_cause
from state_oracle import assert_restores
from torch import nn
from torch.nn import functional as F

from nnsanity import assert_loss_stable, measure_loss_stability
from nnsanity.errors import SanityError

pytestmark = pytest.mark.usefixtures("one_thread")

BATCH = zoo.classification_batch()


def relu_mlp(width=64, depth=2, seed=0):
    torch.manual_seed(seed)
    layers, d = [], 20
    for _ in range(depth):
        layers += [nn.Linear(d, width), nn.ReLU()]
        d = width
    return nn.Sequential(*layers, nn.Linear(d, zoo.N_CLASSES))


def sgd(lr, momentum=0.0):
    return lambda p: torch.optim.SGD(p, lr=lr, momentum=momentum)


def adam(lr):
    return lambda p: torch.optim.Adam(p, lr=lr)


@pytest.mark.parametrize("name", list(zoo.HEALTHY))
def test_passes_on_the_healthy_toy_models_with_defaults(name):
    assert assert_loss_stable(*zoo.healthy(name)).passed


@pytest.mark.parametrize("name", list(ZOO))
def test_passes_on_the_real_architectures_with_defaults(name):
    arch = ZOO[name]
    r = measure_loss_stability(arch.build(), arch.batch(), arch.loss_fn)
    assert r.passed and len(r.trace) == 5 and r.rise < 0.2 * abs(r.initial_loss), r


@pytest.mark.parametrize("name", ["timm_vit_tiny", "bert_classifier"])
def test_fails_as_diverged_when_100x_the_default_learning_rate_sends_the_loss_above_its_start(
    name,
):
    arch = ZOO[name]
    with pytest.raises(
        SanityError,
        match=r"(?s)Loss diverged!.*Loss at step 3: .*1\. the learning rate is too high",
    ) as e:
        assert_loss_stable(arch.build(), arch.batch(), arch.loss_fn, optimizer=adam(3e-2))
    r = e.value.result
    assert r.first_over == 3 and r.trace[3] > r.initial_loss + r.allowed and r.diverged


def test_fails_as_oscillating_when_the_loss_bounces_back_below_its_start():
    # SGD at lr 3 on a ReLU MLP: 2.32, 1.63, 0.85, then back up to 2.59
    with pytest.raises(
        SanityError, match=r"(?s)Loss oscillates!.*back above its best so far 0\.85.*"
    ) as e:
        assert_loss_stable(relu_mlp(), BATCH, F.cross_entropy, optimizer=sgd(3.0))
    assert not e.value.result.diverged


def test_the_same_model_at_a_sane_learning_rate_descends_without_a_rise():
    r = assert_loss_stable(relu_mlp(), BATCH, F.cross_entropy, optimizer=sgd(0.1))
    assert r.rise == 0.0 and r.rise_at is None and r.first_over is None
    assert all(b < a for a, b in zip(r.trace, r.trace[1:]))


def test_a_users_step_at_a_divergent_learning_rate_fails_at_the_first_step_it_overshoots():
    model = zoo.cnn()
    opt = torch.optim.SGD(model.parameters(), lr=3.0)

    def step(batch):
        opt.zero_grad()
        loss = F.cross_entropy(model(batch[0]), batch[1])
        loss.backward()
        opt.step()
        return loss

    with pytest.raises(
        SanityError, match=r"(?s)Loss diverged!.*Loss at step 1: 75.*Largest rise: .* at step 4"
    ):
        assert_loss_stable(model, zoo.image_batch(), F.cross_entropy, step=step)


def test_a_nan_loss_is_an_unbounded_rise():
    r = measure_loss_stability(relu_mlp(), BATCH, F.cross_entropy, optimizer=sgd(1e30))
    assert not r.passed and r.rise == math.inf and r.diverged
    assert r.first_over == r.rise_at and not math.isfinite(r.trace[r.first_over])


def test_dropout_noise_is_allowed_for():
    # each step of a heavy-dropout model is a noisy draw: the allowance grows with its spread
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Dropout(0.5), nn.Linear(64, 10))
    r = assert_loss_stable(model, BATCH, F.cross_entropy)
    assert r.noise_sd > 0 and r.allowed > r.max_rise * abs(r.initial_loss)


def test_max_rise_relaxes_the_check():
    r = measure_loss_stability(relu_mlp(), BATCH, F.cross_entropy, optimizer=sgd(3.0))
    relaxed = (r.rise + 1e-6) / abs(r.initial_loss)
    assert_loss_stable(relu_mlp(), BATCH, F.cross_entropy, optimizer=sgd(3.0), max_rise=relaxed)


def test_loss_stability_rejects_bad_arguments():
    with pytest.raises(ValueError, match="steps must be at least 2"):
        assert_loss_stable(zoo.mlp(), BATCH, F.cross_entropy, steps=1)
    with pytest.raises(ValueError, match=r"max_rise must be a number >= 0"):
        assert_loss_stable(zoo.mlp(), BATCH, F.cross_entropy, max_rise=-0.1)
    with pytest.raises(TypeError, match="step must be callable"):
        assert_loss_stable(zoo.mlp(), BATCH, F.cross_entropy, step="sgd")


def test_the_check_leaves_the_model_and_global_state_as_it_found_them():
    model = zoo.cnn()
    model.eval()
    assert_restores(
        lambda: measure_loss_stability(model, zoo.image_batch(), F.cross_entropy), model
    )


def test_results_are_the_same_run_after_run():
    first = measure_loss_stability(relu_mlp(), BATCH, F.cross_entropy, optimizer=sgd(3.0))
    again = measure_loss_stability(relu_mlp(), BATCH, F.cross_entropy, optimizer=sgd(3.0))
    assert again.to_dict() == first.to_dict()


def test_raw_pixel_scale_inputs_are_named_as_the_first_cause():
    x, y = BATCH
    raw = (x * 64 + 128).clamp(0, 255)  # features in 0-255 units, as raw pixels
    with pytest.raises(SanityError, match=r"(?s)Loss diverged!.*evidence: RMS 1\d\d") as e:
        assert_loss_stable(relu_mlp(), (raw, y), F.cross_entropy, optimizer=sgd(0.1))
    assert first_cause(e).id == "input_scale_high" and first_cause(e).where == "0"
    assert "raw 0-255 pixels" in e.value.result.input_scale.summary
    # the same model and learning rate on standardised inputs: stable, nothing to name
    assert (
        assert_loss_stable(relu_mlp(), BATCH, F.cross_entropy, optimizer=sgd(0.1)).input_scale
        is None
    )


# pytorch/examples' MNIST CNN with the optimizers people use: Adadelta at lr 1.0 bounces on one
# batch, and dropout-0.5 makes a confident model's train-mode loss far noisier than at init (on
# real digits one seed in 20 rose 0.60 of the initial loss in train mode, 0.04 with dropout off)
@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("kind", ["adadelta", "adagrad", "sgd_momentum", "adamw"])
def test_the_mnist_example_recipe_is_stable_with_the_optimizers_people_use(kind, seed):
    model = mnist_recipe.mnist_net(seed)
    step = mnist_recipe.step_factory(kind)(model)
    r = assert_loss_stable(model, mnist_recipe.digits(16, 10 + seed), F.nll_loss, step=step)
    assert len(r.quiet_trace) == len(r.trace) == r.steps


def test_the_mnist_example_recipe_at_100x_the_learning_rate_is_unstable():
    model = mnist_recipe.mnist_net(0)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)

    def step(batch):
        opt.zero_grad()
        loss = F.nll_loss(model(batch[0]), batch[1])
        loss.backward()
        opt.step()
        return loss

    with pytest.raises(SanityError, match=r"1\. the learning rate is too high"):
        assert_loss_stable(model, mnist_recipe.digits(16, 10), F.nll_loss, step=step)
