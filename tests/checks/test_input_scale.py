"""Input scale: the float features reach the first layer at about unit scale."""

from __future__ import annotations

import pytest
import torch
import zoo
from architectures import ZOO, PackedRegressor
from state_oracle import assert_restores
from torch import nn

from nnsanity import assert_input_scale, measure_input_scale
from nnsanity._harness import Harness
from nnsanity._input_scale import cause, measure
from nnsanity.errors import SanityError

pytestmark = pytest.mark.usefixtures("one_thread")

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def photos(n=8, seed=0):
    """Images as a camera gives them: whole-valued pixels in 0-255 (as float), smooth, with
    natural images' statistics (ImageNet: mean 0.45, std 0.27 of the range)."""
    g = torch.Generator().manual_seed(seed)
    smooth = nn.functional.avg_pool2d(torch.randn(n, 3, 36, 36, generator=g), 5, 1)
    unit = (0.45 + 0.27 * smooth / smooth.std()).clamp(0, 1)
    return (unit * 255).round(), torch.randint(0, 10, (n,), generator=g)


def resnet18():
    return ZOO["torchvision_resnet18"].build()


def standardised(pixels):
    return (pixels / 255 - IMAGENET_MEAN) / IMAGENET_STD


@pytest.mark.parametrize("name", list(zoo.HEALTHY))
def test_passes_on_the_healthy_toy_models_with_defaults(name):
    model, batch, _ = zoo.healthy(name)
    assert assert_input_scale(model, batch).passed


@pytest.mark.parametrize("name", list(ZOO))
def test_passes_on_the_real_architectures_with_defaults(name):
    arch = ZOO[name]
    assert measure_input_scale(arch.build(), arch.batch()).passed


@pytest.mark.parametrize("name", ["gpt2", "bert_classifier", "t5", "transformer_classifier"])
def test_token_ids_and_masks_are_not_features(name):
    arch = ZOO[name]
    r = measure_input_scale(arch.build(), arch.batch())
    assert r.features == () and r.rms is None and r.passed


def test_fails_on_raw_0_255_pixels_naming_the_first_layer():
    x, y = photos()
    with pytest.raises(
        SanityError,
        match=r"(?s)Inputs are far above the scale the first layer expects!.*"
        r"RMS of what 'conv1' \(Conv2d\) receives: 1\d\d \(up to 3 allowed\).*"
        r"range \[\d+, 2\d\d\].*1\. raw 0-255 pixels",
    ):
        assert_input_scale(resnet18(), (x, y))


def test_the_same_pixels_scaled_and_standardised_once_pass():
    x, y = photos()
    assert 0.5 < assert_input_scale(resnet18(), (x / 255, y)).rms < 1
    assert 0.5 < assert_input_scale(resnet18(), (standardised(x), y)).rms < 3


def test_fails_on_images_standardised_twice():
    x, y = photos()
    twice = (standardised(x) - IMAGENET_MEAN) / IMAGENET_STD
    with pytest.raises(SanityError, match=r"(?s)far above.*3\. inputs normalised twice") as e:
        assert_input_scale(resnet18(), (twice, y))
    assert e.value.result.rms > 3


def test_fails_on_pixels_divided_by_255_twice():
    x, y = photos(16)
    small = nn.functional.adaptive_avg_pool2d(x[:, :1], 12)  # 1x12x12, as the MNIST CNN takes
    with pytest.raises(
        SanityError,
        match=r"(?s)Inputs are far below the scale the first layer expects!.*"
        r"\(at least 0\.01 required\).*1\. inputs scaled twice",
    ):
        assert_input_scale(ZOO["log_softmax_nll_cnn"].build(), (small / 255 / 255, y))
    assert_input_scale(ZOO["log_softmax_nll_cnn"].build(), (small / 255, y))


class ScalesItsInput(nn.Module):
    """Takes raw pixels and scales them itself, in place, before its first layer."""

    def __init__(self):
        super().__init__()
        self.net = resnet18()

    def forward(self, x):
        return self.net(x.div_(255))


def test_scaling_inside_the_model_counts():
    x, y = photos()
    r = assert_input_scale(ScalesItsInput(), (x, y))
    assert r.first_layer == "net.conv1" and r.rms < 1 and r.features[0].max > 200


def test_a_normalisation_layer_first_makes_the_scale_irrelevant():
    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm1d(20), nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 10))
    raw = torch.randn(16, 20) * 1000 + 5000  # tabular features in their raw units
    r = assert_input_scale(model, (raw, torch.zeros(16, dtype=torch.long)))
    assert r.normalises and r.first_layer == "0" and r.rms is None


def test_packed_sequences_are_followed_to_the_lstm():
    (x, lengths), y = ZOO["packed_lstm"].batch()
    torch.manual_seed(0)
    with pytest.raises(SanityError, match="'rnn' \\(LSTM\\) receives"):
        assert_input_scale(PackedRegressor(), ((x * 100, lengths), y))


def test_the_measurement_names_the_scale_as_a_cause_for_other_checks():
    x, y = photos()
    h = Harness(resnet18(), (x, y), seed=0, needs_loss=False)
    with h.isolated(train=False):
        scale = measure(h)
    c = cause(scale)
    assert scale.outside() and c is not None and c.id == "input_scale_high" and c.where == "conv1"
    h = Harness(resnet18(), (x / 255, y), seed=0, needs_loss=False)
    with h.isolated(train=False):
        assert cause(measure(h)) is None


def test_min_rms_and_max_rms_relax_the_check():
    x, y = photos()
    assert_input_scale(resnet18(), (x, y), max_rms=300)
    assert_input_scale(
        ZOO["log_softmax_nll_cnn"].build(), (torch.rand(4, 1, 12, 12) / 1e4, y[:4]), min_rms=0
    )


def test_input_scale_rejects_bad_arguments():
    batch = zoo.classification_batch()
    with pytest.raises(ValueError, match="max_rms must be a number >= min_rms=1"):
        assert_input_scale(zoo.mlp(), batch, min_rms=1.0, max_rms=0.5)
    with pytest.raises(TypeError, match="min_rms must be a number >= 0"):
        assert_input_scale(zoo.mlp(), batch, min_rms="0.01")
    with pytest.raises(ValueError, match="perturb= names 'pixels'"):
        assert_input_scale(zoo.mlp(), batch, perturb="pixels")


def test_the_check_leaves_the_model_and_global_state_as_it_found_them():
    model = zoo.cnn()
    model.train()
    assert_restores(lambda: measure_input_scale(model, zoo.image_batch()), model)
    assert all(p.requires_grad for p in model.parameters())


class ReadsItsInputAsNumpy(nn.Module):
    """A forward that leaves autograd (x.numpy()) before its first layer."""

    def __init__(self):
        super().__init__()
        self.net = zoo.mlp()

    def forward(self, x):
        return self.net(torch.from_numpy(x.numpy() * 255))


def test_a_forward_that_leaves_autograd_is_judged_on_its_raw_features():
    x, y = zoo.classification_batch()
    r = assert_input_scale(ReadsItsInputAsNumpy(), (x, y))
    assert r.first_layer is None and r.rms == pytest.approx(r.features[0].rms)


def test_a_batch_the_model_cannot_take_is_a_clear_error():
    x, y = zoo.classification_batch()
    with pytest.raises(ValueError, match="Sequential failed when called as model"):
        assert_input_scale(zoo.mlp(), (x[:, :7], y))
