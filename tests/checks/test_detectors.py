"""Detectors that return a dict of losses in train mode and detections in eval mode.

torchvision's convention: ``model(images, targets)`` with a list of (3, H, W) images and a
list of ``{"boxes", "labels"}`` targets returns ``{"loss_classifier": ..., "loss_box_reg": ...,
...}`` in train mode and one dict of ``boxes``/``labels``/``scores`` per image in eval mode.
With ``loss_fn=None`` the model's own loss is the sum of the dict's values; the checks of the
loss judge it, the checks of the outputs say they do not apply. The healthy detector passes
every applicable check with defaults in the zoo (``test_architectures.py``); here each planted
bug fails beside its healthy twin.
"""

from __future__ import annotations

import pytest
import torch
from architectures import detection_batch, fasterrcnn
from state_oracle import assert_same, snapshot
from torch import nn

import nnsanity
from nnsanity._harness import Harness
from nnsanity.catalogue import Subject, get
from nnsanity.errors import SanityError

pytestmark = pytest.mark.usefixtures("one_thread")


class DetachedHead(nn.Module):
    """The two-MLP box head whose output is cut from the graph (a stray ``.detach()``)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc6, self.fc7 = nn.Linear(32 * 4 * 4, 64), nn.Linear(64, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc7(torch.relu(self.fc6(x.flatten(1))))).detach()


class BatchMixingBackbone(nn.Module):
    """A backbone that subtracts the batch mean of its features: each image's detections then
    depend on the other images of the batch."""

    out_channels = 32

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.body(x)
        return f - f.mean(0, keepdim=True)


def sgd(lr: float):
    """torchvision's reference detection recipe: SGD, momentum 0.9, weight decay 1e-4 (its lr
    0.02 is for 16 images a step; 0.0025 for 2, by its linear scaling rule)."""
    return lambda p: torch.optim.SGD(p, lr=lr, momentum=0.9, weight_decay=1e-4)


def test_the_models_own_loss_is_the_sum_of_its_loss_dict():
    model, batch = fasterrcnn(), detection_batch()
    h = Harness(model, batch, None, seed=0)
    model.train()
    torch.manual_seed(0)
    losses = model(*batch)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    torch.manual_seed(0)
    assert torch.allclose(h.loss(h.forward()), sum(losses.values()))
    assert h.batch_size == 2  # the list's length, not an image's 3 channels


def test_a_loss_fn_weights_the_losses():
    weights = {"loss_classifier": 1.0, "loss_box_reg": 10.0, "loss_objectness": 1.0}

    def weighted(losses, targets):  # a loss left out leaves its head untrained: all 4 weighed
        return sum(weights.get(k, 1.0) * v for k, v in losses.items())

    model, batch = fasterrcnn(), detection_batch()
    result = nnsanity.assert_params_update(model, batch, weighted)
    assert result.passed
    nnsanity.assert_loss_decreases(model, batch, weighted)
    # checks that read the loss with dropout off or in eval mode read it in train mode here
    nnsanity.assert_no_dying_units(model, batch, weighted)
    nnsanity.assert_finite(model, batch, weighted)
    nnsanity.assert_loss_stable(model, batch, weighted)


@pytest.mark.parametrize(
    "bug",
    ["frozen_box_head", "detached_box_head"],
)
def test_params_update_names_a_box_head_cut_from_training(bug):
    model = fasterrcnn(DetachedHead()) if bug == "detached_box_head" else fasterrcnn()
    if bug == "frozen_box_head":
        for p in model.roi_heads.box_head.parameters():
            p.requires_grad_(False)
    with pytest.raises(SanityError, match=r"roi_heads\.box_head\.fc6\.weight"):
        nnsanity.assert_params_update(model, detection_batch())
    # the healthy twin, and the frozen head once it is declared frozen
    nnsanity.assert_params_update(fasterrcnn(), detection_batch())
    if bug == "frozen_box_head":
        nnsanity.assert_params_update(model, detection_batch(), frozen="roi_heads.box_head.*")


def adam(lr: float):
    return lambda p: torch.optim.Adam(p, lr=lr)


@pytest.mark.parametrize(
    ("healthy", "too_high"), [(sgd(0.0025), sgd(2.5)), (adam(3e-4), adam(0.3))], ids=["sgd", "adam"]
)
def test_a_learning_rate_1000x_too_high_fails_update_ratio(healthy, too_high):
    batch = detection_batch()
    nnsanity.assert_update_ratio(fasterrcnn(), batch, optimizer=healthy)
    with pytest.raises(SanityError, match="update"):
        nnsanity.assert_update_ratio(fasterrcnn(), batch, optimizer=too_high)


def test_adam_1000x_too_fast_makes_the_loss_unstable():
    batch = detection_batch()
    nnsanity.assert_loss_stable(fasterrcnn(), batch, optimizer=adam(3e-4))
    nnsanity.assert_loss_stable(fasterrcnn(), batch, optimizer=sgd(0.0025))
    with pytest.raises(SanityError):
        nnsanity.assert_loss_stable(fasterrcnn(), batch, optimizer=adam(0.3))


def test_batch_independence_reads_each_images_detections():
    model, batch = fasterrcnn(), detection_batch()
    healthy = nnsanity.assert_batch_independence(model, batch)
    assert healthy.batch_size == 2 and healthy.method == "gradient"
    mixing = fasterrcnn()
    mixing.backbone = BatchMixingBackbone(mixing.backbone)
    with pytest.raises(SanityError, match="depend"):
        nnsanity.assert_batch_independence(mixing, batch)


def test_batch_independence_in_train_mode_says_the_losses_have_no_samples():
    with pytest.raises(ValueError, match="returns only its losses in train mode"):
        nnsanity.measure_batch_independence(fasterrcnn(), detection_batch(), train_mode=True)


def test_checks_of_the_logits_say_they_do_not_apply():
    model, batch = fasterrcnn(), detection_batch()
    reason = get("init_loss").applies(Subject(model=model, batch=batch))
    assert reason is not None and "returns only its losses in train mode" in reason
    with pytest.raises(ValueError, match=r"returns only its losses in train mode.*does not apply"):
        nnsanity.measure_init_loss(model, batch)
    leak = nnsanity.measure_target_leak(model, batch)
    assert leak.passed and not leak.applies and "only in train mode" in (leak.reason or "")


def test_checks_leave_the_detector_as_they_found_it():
    model, batch = fasterrcnn(), detection_batch()
    model.eval()
    before = snapshot(model)
    nnsanity.assert_params_update(model, batch)
    nnsanity.assert_batch_independence(model, batch)
    nnsanity.assert_finite(model, batch)
    assert_same(before, snapshot(model))


def test_learns_signal_permutes_the_holdouts_targets_among_its_images():
    # the list of per-image targets is reordered (the two images swap their boxes), not the
    # first dimension of each image's boxes
    result = nnsanity.measure_learns_signal(
        fasterrcnn(), detection_batch(1), holdout=detection_batch(2), steps=2
    )
    assert result.steps <= 2
