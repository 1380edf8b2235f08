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


class Regressor(nn.Module):
    """An MLP regressor; ``ignore`` plants the bug: the input multiplied by 0."""

    def __init__(self, ignore=False):
        super().__init__()
        torch.manual_seed(0)
        self.ignore = ignore
        self.net = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))

    def forward(self, x):
        return self.net(x * 0 if self.ignore else x)


def _small_targets():
    """Targets 30x smaller than the outputs at init: the initial MSE is far above the
    input-independent one (the targets' variance), as CTC's is at init (35 nats against 7.7
    for its best shared output)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 8, generator=g)
    return x, 0.03 * (x[:, :1] + 0.3 * torch.randn(32, 1, generator=g))


def test_the_gap_is_a_fraction_of_the_input_independent_loss_not_of_the_initial_one():
    r = assert_uses_inputs(Regressor(), _small_targets(), F.mse_loss)
    # 5% of the initial loss would be more than the baseline itself: no model could pass
    assert 0.05 * r.initial_loss > r.baseline_loss
    assert r.required == pytest.approx(0.05 * r.baseline_loss)
    with pytest.raises(SanityError, match="Model does no better with its inputs"):
        assert_uses_inputs(Regressor(ignore=True), _small_targets(), F.mse_loss)


class CTCNet(nn.Module):
    """Speech-recognition style: conv + bidirectional GRU over (B, T, F) frames, per-frame
    logits scored by CTC (blank 0); ``ignore`` zeroes the frames (the planted bug)."""

    def __init__(self, ignore=False):
        super().__init__()
        torch.manual_seed(0)
        self.ignore = ignore
        self.conv = nn.Conv1d(8, 64, 3, padding=1)
        self.rnn = nn.GRU(64, 64, batch_first=True, bidirectional=True)
        self.out = nn.Linear(128, 12)

    def forward(self, x):
        x = torch.zeros_like(x) if self.ignore else x
        return self.out(self.rnn(F.gelu(self.conv(x.transpose(1, 2))).transpose(1, 2))[0])


def ctc_loss(logits, labels):
    n, t = logits.shape[:2]
    lengths = torch.full((n,), t), torch.full((n,), labels.shape[1])
    log_probs = logits.log_softmax(-1).transpose(0, 1)  # (T, B, C), as F.ctc_loss takes
    return F.ctc_loss(log_probs, labels, *lengths, reduction="sum") / n


def _utterances():
    g = torch.Generator().manual_seed(0)
    return torch.randn(8, 20, 8, generator=g), torch.randint(1, 12, (8, 5), generator=g)


def test_a_ctc_model_passes_and_one_that_ignores_its_frames_fails():
    r = assert_uses_inputs(CTCNet(), _utterances(), ctc_loss)
    assert r.initial_loss > 4 * r.baseline_loss  # 35 nats at init, 7.7 shared
    with pytest.raises(SanityError, match="Model does no better with its inputs"):
        assert_uses_inputs(CTCNet(ignore=True), _utterances(), ctc_loss)
