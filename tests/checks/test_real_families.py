"""Real families built from configs (tests/architectures.py): what their defaults needed, each
beside a planted bug of the same kind that must still fail."""

from __future__ import annotations

import pytest
import torch
from architectures import ZOO
from torch import nn
from torch.nn import functional as F

import nnsanity
from nnsanity.errors import SanityError

pytestmark = pytest.mark.usefixtures("one_thread")


def _built(name):
    arch = ZOO[name]
    return arch.build(), arch.batch()


# -- logits made after the last module: Gemma2's soft-cap, BART's final_logits_bias ------------


@pytest.mark.parametrize("name", ["gemma2", "bart"])
def test_init_loss_reads_logits_made_after_the_last_module(name):
    model, batch = _built(name)
    r = nnsanity.assert_init_loss(model, batch)
    assert r.zero_output_loss == pytest.approx(float(torch.log(torch.tensor(96.0))), rel=1e-4)


def test_init_loss_still_fails_a_gemma2_whose_head_starts_100x_too_large():
    model, batch = _built("gemma2")
    with torch.no_grad():
        model.lm_head.weight.mul_(100)  # tied to the embedding, as Gemma2 ties them
    with pytest.raises(SanityError):
        nnsanity.assert_init_loss(model, batch)


def test_init_loss_still_fails_a_bart_whose_final_logits_bias_favours_one_token():
    model, batch = _built("bart")
    with torch.no_grad():
        model.final_logits_bias[0, 5] = 20.0
    with pytest.raises(SanityError):
        nnsanity.assert_init_loss(model, batch)


# -- parameters the library freezes ------------------------------------------------------------


def test_whispers_own_frozen_positions_are_frozen_by_design():
    model, batch = _built("whisper")
    r = nnsanity.assert_params_update(model, batch)
    assert r.frozen_by_model == ("model.encoder.embed_positions.weight",)


def test_a_freeze_loop_over_whisper_still_fails_naming_what_it_froze():
    model, batch = _built("whisper")
    for name, p in model.named_parameters():
        if name.startswith("model.decoder.layers.0.fc"):
            p.requires_grad = False
    with pytest.raises(SanityError, match=r"(?s)are frozen.*decoder\.layers\.0\.fc1\.weight"):
        nnsanity.assert_params_update(model, batch)


def test_a_freeze_loop_that_freezes_berts_classifier_head_fails():
    model, batch = _built("bert_classifier")
    for name, p in model.named_parameters():
        if "classifier" in name:  # meant to freeze everything but the head
            p.requires_grad = False
    with pytest.raises(SanityError, match=r"(?s)2 of \d+ parameters are frozen.*classifier"):
        nnsanity.assert_params_update(model, batch)


class FrozenInInit(nn.Module):
    """A fixed sinusoidal table frozen in __init__ beside a trainable head: frozen by design."""

    def __init__(self):
        super().__init__()
        self.table = nn.Parameter(torch.sin(torch.arange(20.0)), requires_grad=False)
        self.head = nn.Linear(20, 10)

    def forward(self, x):
        return self.head(x + self.table)


def test_a_parameter_frozen_in_the_models_own_init_passes():
    x, y = torch.randn(16, 20), torch.randint(0, 10, (16,))
    r = nnsanity.assert_params_update(FrozenInInit(), (x, y), F.cross_entropy)
    assert r.frozen_by_model == ("table",)


# -- LayerDrop: a layer skipped at random in one step trains in the next -----------------------


def test_wav2vec2_with_layerdrop_passes_and_a_layer_never_called_fails():
    model, batch = _built("wav2vec2_ctc")
    assert model.config.layerdrop > 0
    nnsanity.assert_params_update(model, batch)
    skip = model.wav2vec2.encoder.layers[1].register_forward_hook(
        lambda m, args, out: (args[0].detach(), *out[1:]) if isinstance(out, tuple) else args[0]
    )  # planted: the layer's output thrown away, every step
    with pytest.raises(SanityError, match=r"(?s)encoder\.layers\.1\."):
        nnsanity.assert_params_update(model, batch)
    skip.remove()


# -- inputs set to require grad inside forward -------------------------------------------------


class InputGrad(nn.Module):
    """wav2vec2's feature encoder: ``input_values[:, None]`` set to require grad (for gradient
    checkpointing); ``leak`` plants the bug, a weight created in forward."""

    def __init__(self, leak=False):
        super().__init__()
        self.leak = leak
        self.conv = nn.Conv1d(1, 4, 5, stride=5)
        self.head = nn.Linear(4, 10)

    def forward(self, x):
        h = x[:, None]
        h.requires_grad = True
        if self.leak:
            h = h * torch.ones(1, requires_grad=True)
        return self.head(self.conv(h).mean(-1))


def test_a_view_of_the_inputs_set_to_require_grad_is_no_parameter():
    batch = (torch.randn(8, 40), torch.randint(0, 10, (8,)))
    nnsanity.assert_params_registered(InputGrad(), batch, F.cross_entropy)
    nnsanity.assert_params_registered(ZOO["wav2vec2_ctc"].build(), ZOO["wav2vec2_ctc"].batch())
    with pytest.raises(SanityError, match=r"(?s)created in forward.*\(1,\)"):
        nnsanity.assert_params_registered(InputGrad(leak=True), batch, F.cross_entropy)


# -- CLIP: a loss asked for with return_loss=True, no label key --------------------------------


def test_clip_trains_on_its_own_contrastive_loss_without_labels():
    model, batch = _built("clip")
    assert not any(k in batch for k in ("labels", "label"))
    nnsanity.assert_loss_decreases(model, batch)
    nnsanity.assert_batch_independence(model, batch, output="image_embeds")


def test_clip_without_return_loss_says_it_returned_no_loss_and_has_no_labels():
    model, batch = _built("clip")
    batch.pop("return_loss")
    with pytest.raises(ValueError, match=r"returned no loss.*the batch holds none of"):
        nnsanity.assert_loss_decreases(model, batch)


# -- SegFormer: a learning rate 1000x too high --------------------------------------------------


def test_segformer_with_a_learning_rate_1000x_too_high_is_unstable_within_the_default_steps():
    model, batch = _built("segformer")
    nnsanity.assert_loss_stable(model, batch)
    too_high = 1000 * 3e-4  # the check's default Adam lr, times 1000
    with pytest.raises(SanityError) as e:
        nnsanity.assert_loss_stable(
            model, batch, optimizer=lambda p: torch.optim.Adam(p, lr=too_high)
        )
    assert e.value.result.first_over is not None and e.value.result.first_over < 5
