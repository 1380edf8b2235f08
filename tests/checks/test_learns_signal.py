"""Learnable signal: training on one batch predicts another batch's own labels better than the
same labels permuted; one batch alone can be memorised whatever its labels."""

from __future__ import annotations

import mnist_recipe as recipes
import pytest
import torch
import zoo
from architectures import ZOO
from learnable import SIGNAL, batches
from state_oracle import assert_restores
from torch import nn
from torch.nn import functional as F

from nnsanity import assert_can_overfit, assert_learns_signal, measure_learns_signal
from nnsanity._structures import LABEL_KEYS
from nnsanity.checks.learns_signal import STEPS
from nnsanity.errors import SanityError

pytestmark = pytest.mark.usefixtures("one_thread")


def misaligned(batch, shift=1):
    """Labels moved ``shift`` samples along: shuffled separately from the inputs, off by one."""

    def roll(t):
        return torch.roll(t, shift, 0)

    if isinstance(batch, dict):
        return {k: roll(v) if k in LABEL_KEYS else v for k, v in batch.items()}
    return (batch[0], roll(batch[1]))


def toy(name):
    return zoo.healthy(name)[0], zoo.HEALTHY[name][2]


@pytest.mark.parametrize("name", list(zoo.HEALTHY))
def test_passes_on_the_healthy_toy_models_with_a_learnable_relation(name):
    model, loss_fn = toy(name)
    train, holdout = batches(name)
    r = assert_learns_signal(model, train, loss_fn, holdout=holdout)
    assert r.z >= r.min_z and r.gain > r.permuted_gain and len(r.trace) <= 2


# the zoo models with batches made to carry a learnable relation (tests/learnable.py)
@pytest.mark.parametrize("name", [n for n in ZOO if n in SIGNAL])
def test_passes_on_the_real_architectures_with_a_learnable_relation(name):
    arch = ZOO[name]
    train, holdout = batches(name)
    r = measure_learns_signal(arch.build(), train, arch.loss_fn, holdout=holdout)
    assert r.passed, r


@pytest.mark.parametrize("name", list(zoo.HEALTHY))
@pytest.mark.parametrize("shift", [1, 3])
def test_fails_on_the_toy_models_when_labels_are_shuffled_separately_from_inputs(name, shift):
    model, loss_fn = toy(name)
    train, holdout = batches(name)
    with pytest.raises(
        SanityError,
        match=r"(?s)Training on the batch does not predict the holdout's labels!.*"
        r"z = .* \(at least 3 required\).*1\. labels not aligned with the inputs",
    ) as e:
        assert_learns_signal(
            model, misaligned(train, shift), loss_fn, holdout=misaligned(holdout, shift)
        )
    r = e.value.result
    assert len(r.trace) == r.steps == STEPS  # the whole budget: the relation never showed


@pytest.mark.parametrize("name", ["torchvision_resnet18", "timm_vit_tiny", "gpt2", "t5"])
def test_fails_on_real_architectures_when_labels_are_shuffled_separately(name):
    arch = ZOO[name]
    train, holdout = batches(name)
    r = measure_learns_signal(
        arch.build(), misaligned(train), arch.loss_fn, holdout=misaligned(holdout)
    )
    assert not r.passed and max(r.z_trace) < r.min_z


def test_a_users_step_trains_the_model():
    model, loss_fn = toy("mlp")
    train, holdout = batches("mlp")
    r = assert_learns_signal(model, train, loss_fn, holdout=holdout, step=zoo.user_step(model))
    assert r.trace and r.z >= r.min_z


def test_one_batch_with_shuffled_labels_is_still_memorised():
    # why the check needs two batches: the single-batch checks cannot see this bug
    model, loss_fn = toy("mlp")
    train, _ = batches("mlp")
    assert assert_can_overfit(model, misaligned(train), loss_fn).passed


def table(n, seed):
    """Tabular rows: 8 features, a target that is a noisy linear function of them, and an id."""
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(n, 8, generator=g)
    weights = torch.linspace(-1, 1, 8, dtype=features.dtype)  # the task: fixed for every batch
    target = features @ weights + 0.1 * torch.randn(n, generator=g)
    ids = torch.randn(n, generator=g)  # an anonymised id: noise
    return torch.cat([features, target[:, None], ids[:, None]], 1)


def regressor():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))


def split(rows, label_column):
    return rows[:, :8], rows[:, label_column : label_column + 1]


def test_fails_when_the_wrong_column_is_the_label():
    train, holdout = table(64, 1), table(64, 2)
    with pytest.raises(SanityError, match=r"1\. labels not aligned with the inputs"):
        assert_learns_signal(regressor(), split(train, 9), F.mse_loss, holdout=split(holdout, 9))


def test_passes_when_the_right_column_is_the_label():
    train, holdout = table(64, 1), table(64, 2)
    assert_learns_signal(regressor(), split(train, 8), F.mse_loss, holdout=split(holdout, 8))


def test_fails_when_every_holdout_sample_has_the_same_label():
    model, loss_fn = toy("mlp")
    train, (x, y) = batches("mlp")
    with pytest.raises(
        SanityError,
        match=r"(?s)Every sample of the holdout has the same label!.*1\. the wrong column",
    ):
        assert_learns_signal(model, train, loss_fn, holdout=(x, torch.full_like(y, 2)))


@pytest.mark.parametrize("seed", range(6))
def test_fails_when_every_training_label_is_the_same_class(seed):
    """A constant column taken as the training label: the model learns a prior the holdout does
    not share, which can beat the permuted labels only by losing less (a newcomer's case that
    passed on 2 of 6 seeds before the holdout loss had to drop)."""
    model, loss_fn = toy("mlp")
    (x, y), holdout = batches("mlp")
    r = measure_learns_signal(model, (x, torch.zeros_like(y)), loss_fn, holdout=holdout, seed=seed)
    assert not r.passed, r


class IgnoresItsInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = zoo.mlp()

    def forward(self, x):
        return self.net(x * 0)


def test_a_model_that_ignores_its_inputs_is_named_first():
    train, holdout = batches("mlp")
    with pytest.raises(
        SanityError,
        match=r"(?s)unchanged by every permutation.*1\. the model ignores its inputs",
    ):
        assert_learns_signal(IgnoresItsInput(), train, F.cross_entropy, holdout=holdout)


def test_a_loss_that_does_not_pair_outputs_with_targets_is_reported_without_training():
    train, holdout = split(table(64, 1), 8), split(table(64, 2), 8)
    flat = (train[0], train[1][:, 0]), (holdout[0], holdout[1][:, 0])  # (N,) targets, (N, 1) out
    with pytest.warns(UserWarning, match="target size"):
        r = measure_learns_signal(regressor(), flat[0], F.mse_loss, holdout=flat[1])
    assert "broadcast to (64, 64)" in r.unpaired and r.trace == () and not r.passed


def test_steps_and_min_z_relax_the_check():
    model, loss_fn = toy("mlp")
    train, holdout = batches("mlp")
    bad = measure_learns_signal(model, misaligned(train), loss_fn, holdout=misaligned(holdout))
    assert_learns_signal(
        model, misaligned(train), loss_fn, holdout=misaligned(holdout), min_z=bad.z - 0.01
    )


def test_learns_signal_rejects_bad_arguments():
    model, loss_fn = toy("mlp")
    train, (x, y) = batches("mlp")
    with pytest.raises(TypeError, match="holdout"):
        assert_learns_signal(model, train, loss_fn)  # no holdout: Python names the argument
    with pytest.raises(ValueError, match="holdout= needs at least 2 samples"):
        assert_learns_signal(model, train, loss_fn, holdout=(x[:1], y[:1]))
    with pytest.raises(ValueError, match="permutations must be at least 2"):
        assert_learns_signal(model, train, loss_fn, holdout=(x, y), permutations=1)
    with pytest.raises(ValueError, match="min_z must be a number >= 0"):
        assert_learns_signal(model, train, loss_fn, holdout=(x, y), min_z=-1)
    with pytest.raises(TypeError, match=r"batch must be an \(inputs, targets\) pair"):
        assert_learns_signal(model, train, loss_fn, holdout=x)
    flat = lambda out, y: F.cross_entropy(out, y.view(out.shape[0]))  # noqa: E731
    with pytest.raises(ValueError, match=r"no first dimension of the batch size 64"):
        assert_learns_signal(model, train, flat, holdout=(x, y.view(1, 64)))


def test_the_check_leaves_the_model_and_global_state_as_it_found_them():
    arch = ZOO["dropout_batchnorm_cnn"]  # dropout and BatchNorm both
    model = arch.build()
    model.eval()
    train, holdout = batches("dropout_batchnorm_cnn")
    assert_restores(
        lambda: measure_learns_signal(model, train, arch.loss_fn, holdout=holdout), model
    )


def test_results_are_the_same_run_after_run():
    arch = ZOO["gpt2"]
    train, holdout = batches("gpt2")
    first = measure_learns_signal(arch.build(), train, None, holdout=holdout).to_dict()
    assert measure_learns_signal(arch.build(), train, None, holdout=holdout).to_dict() == first


@pytest.mark.parametrize("seed", range(20))
def test_a_small_mlp_with_a_clear_relation_passes_on_a_hundred_samples_whatever_the_seed(seed):
    # the power the docstring states: with 32 samples 3 of these 20 seeds fail, with 128 none
    g = torch.Generator().manual_seed(seed)

    def signal(n):
        x = torch.randn(n, 8, generator=g)
        return x, x[:, :3].argmax(1)

    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    assert assert_learns_signal(model, signal(128), F.cross_entropy, holdout=signal(128)).z >= 3


# pytorch/examples' MNIST CNN with its own step (Adadelta at lr 1.0) and with the default Adam:
# the first step often beats the permutations while the holdout loss is still above its start
# (overconfidence); the check now trains on until both hold.
@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("kind", ["adadelta", "default_adam"])
def test_the_mnist_example_cnn_passes_with_its_own_step_and_with_adam(kind, seed):
    model = recipes.mnist_net(seed)
    step = recipes.step_factory(kind)(model) if kind != "default_adam" else None
    train, holdout = recipes.digits(64, 2 * seed + 10), recipes.digits(64, 2 * seed + 11)
    r = assert_learns_signal(model, train, F.nll_loss, holdout=holdout, step=step)
    assert r.z >= r.min_z and r.gain > 0


@pytest.mark.parametrize("bug", ["labels_shuffled", "inputs_zeroed"])
def test_the_mnist_example_cnn_fails_when_it_cannot_learn(bug):
    model = recipes.mnist_net(0)
    (x, y), (xh, yh) = recipes.digits(64, 10), recipes.digits(64, 11)
    g = torch.Generator().manual_seed(0)
    if bug == "labels_shuffled":  # labels shuffled separately from their inputs
        y, yh = y[torch.randperm(64, generator=g)], yh[torch.randperm(64, generator=g)]
    else:
        x, xh = x * 0, xh * 0
    step = recipes.step_factory("adadelta")(model)
    r = measure_learns_signal(model, (x, y), F.nll_loss, holdout=(xh, yh), step=step)
    assert not r.passed and len(r.trace) == r.steps, r


@pytest.mark.parametrize("seed", range(5))
def test_a_transformer_that_needs_the_order_of_its_tokens_passes(seed):
    # issue 15: z = 1.15 at the old 5-step budget; the holdout loss of a 2-class task first rises
    # with the training batch's class balance, and dropout noise hid the gain
    model = recipes.order_transformer(seed)
    train = recipes.ascending_or_descending(128, 2 * seed + 100)
    holdout = recipes.ascending_or_descending(128, 2 * seed + 101)
    assert_learns_signal(model, train, F.cross_entropy, holdout=holdout)
