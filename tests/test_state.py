"""Every public check leaves the state it found: grad mode, RNGs, flags, parameters, modes.

Callers often run checks from evaluation code, inside ``torch.no_grad()`` or
``torch.inference_mode()``: the checks that train must still train there, and leave it as it was.
"""

from __future__ import annotations

import pytest
import torch
import zoo
from state import assert_restores
from torch.nn import functional as F

import nnsanity

pytestmark = pytest.mark.usefixtures("one_thread")


def _forward_with_noise(model, batch):
    x, _ = batch
    return model(x + torch.randn_like(x))  # seeded by the check, so reproducible


# Each public check, called on the zoo MLP and a batch made by the caller under the grad mode
# being tested. Causality needs a sequence model: the zoo's causal LM and its tokens.
CALLS = {
    "assert_batch_independence": lambda m, b: nnsanity.assert_batch_independence(m, b),
    "assert_can_overfit": lambda m, b: nnsanity.assert_can_overfit(m, b, F.cross_entropy),
    "assert_causal": lambda m, b: nnsanity.assert_causal(m, zoo.token_batch()[0]),
    "assert_finite": lambda m, b: nnsanity.assert_finite(m, b, F.cross_entropy),
    "assert_gradient_ratio": lambda m, b: nnsanity.assert_gradient_ratio(m, b, F.cross_entropy),
    "assert_init_loss": lambda m, b: nnsanity.assert_init_loss(m, b, F.cross_entropy),
    "assert_loss_decreases": lambda m, b: nnsanity.assert_loss_decreases(m, b, F.cross_entropy),
    "assert_params_update": lambda m, b: nnsanity.assert_params_update(m, b, F.cross_entropy),
    "assert_reproducible": lambda m, b: nnsanity.assert_reproducible(
        lambda: _forward_with_noise(m, b)
    ),
    "assert_uses_inputs": lambda m, b: nnsanity.assert_uses_inputs(m, b, F.cross_entropy),
}


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
@pytest.mark.parametrize("name", [n for n in nnsanity.__all__ if n.startswith("assert_")])
def test_every_public_check_works_without_grad_and_leaves_global_state_and_the_model_alone(
    name, mode
):
    assert name in CALLS, f"add nnsanity.{name} to CALLS"
    model = (zoo.TinyCausalLM() if name == "assert_causal" else zoo.mlp()).eval()
    first = next(model.parameters())
    first.grad = torch.ones_like(first)  # a gradient the caller left must survive too
    # Grad mode is off before the call, so it must be off after it; the batch is the caller's,
    # made under the same mode (under inference_mode it cannot enter autograd as it is).
    assert_restores(lambda: CALLS[name](model, zoo.classification_batch()), model, mode)
    assert not first.grad.is_inference()  # or the caller's next backward cannot accumulate into it


def test_a_model_built_under_inference_mode_is_rejected_with_a_clear_error():
    with torch.inference_mode():
        model = zoo.mlp()
    with pytest.raises(ValueError, match=r"created under torch\.inference_mode\(\).*outside"):
        nnsanity.assert_loss_decreases(model, zoo.classification_batch(), F.cross_entropy)
