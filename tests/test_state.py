"""Every public check leaves the state it found: grad mode, RNGs, flags, parameters, modes.

Callers often run checks from evaluation code, inside ``torch.no_grad()`` or
``torch.inference_mode()``: the checks that train must still train there, and leave it as it was.
"""

from __future__ import annotations

import learnable
import pytest
import torch
import zoo
from state_oracle import assert_restores
from torch.nn import functional as F

import nnsanity

pytestmark = pytest.mark.usefixtures("one_thread")


def _forward_with_noise(model, batch):
    x, _ = batch
    return model(x + torch.randn_like(x))  # seeded by the check, so reproducible


def _padded(model):
    """``model`` applied per token behind an embedding with padding_idx=0, and a right-padded
    batch of ids and tags: the padding checks need padding. Nothing drawn from the global RNG."""
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode(False):  # the caller may be inside inference_mode
        table = torch.randn(9, 20, generator=g)
    emb = torch.nn.Embedding.from_pretrained(table, freeze=False, padding_idx=0)
    ids = torch.randint(1, 9, (4, 6), generator=g)
    ids[1:, 4:] = 0
    tags = torch.randint(0, 10, (4, 6), generator=g).masked_fill(ids == 0, 0)
    return torch.nn.Sequential(emb, model), (ids, tags)


def _tag_loss(logits, tags):
    return F.cross_entropy(logits.transpose(1, 2), tags, ignore_index=0)


# Each public check, called on the zoo MLP and a batch made by the caller under the grad mode
# being tested. Causality needs a sequence model: the zoo's causal LM and its tokens; the padding
# checks a padded batch: the MLP behind an embedding, on padded token ids.
_SEQUENCE_CHECKS = ("assert_causal", "assert_uses_order")  # on the zoo's causal LM
CALLS = {
    "assert_batch_independence": lambda m, b, **kw: nnsanity.assert_batch_independence(m, b, **kw),
    "assert_can_overfit": lambda m, b, **kw: nnsanity.assert_can_overfit(
        m, b, F.cross_entropy, **kw
    ),
    "assert_causal": lambda m, b, **kw: nnsanity.assert_causal(m, zoo.token_batch()[0], **kw),
    "assert_uses_order": lambda m, b, **kw: nnsanity.assert_uses_order(
        m, zoo.token_batch()[0], **kw
    ),
    "assert_finite": lambda m, b, **kw: nnsanity.assert_finite(m, b, F.cross_entropy, **kw),
    "assert_no_target_leak": lambda m, b, **kw: nnsanity.assert_no_target_leak(
        m, b, F.cross_entropy, **kw
    ),
    "assert_gradient_ratio": lambda m, b, **kw: nnsanity.assert_gradient_ratio(
        m, b, F.cross_entropy, **kw
    ),
    "assert_init_loss": lambda m, b, **kw: nnsanity.assert_init_loss(m, b, F.cross_entropy, **kw),
    "assert_loss_decreases": lambda m, b, **kw: nnsanity.assert_loss_decreases(
        m, b, F.cross_entropy, **kw
    ),
    "assert_params_update": lambda m, b, **kw: nnsanity.assert_params_update(
        m, b, F.cross_entropy, **kw
    ),
    "assert_reproducible": lambda m, b, **kw: nnsanity.assert_reproducible(
        lambda: _forward_with_noise(m, b), **kw
    ),
    "assert_uses_inputs": lambda m, b, **kw: nnsanity.assert_uses_inputs(
        m, b, F.cross_entropy, **kw
    ),
    "assert_eval_mode": lambda m, b, **kw: nnsanity.assert_eval_mode(m, b, **kw),
    "assert_params_registered": lambda m, b, **kw: nnsanity.assert_params_registered(
        m, b, F.cross_entropy, **kw
    ),
    "assert_ignores_padding": lambda m, b, **kw: nnsanity.assert_ignores_padding(*_padded(m), **kw),
    "assert_loss_masks_padding": lambda m, b, **kw: nnsanity.assert_loss_masks_padding(
        *_padded(m), _tag_loss, **kw
    ),
    "assert_update_ratio": lambda m, b, **kw: nnsanity.assert_update_ratio(
        m, b, F.cross_entropy, **kw
    ),
    "assert_activation_growth": lambda m, b, **kw: nnsanity.assert_activation_growth(m, b, **kw),
    "assert_no_dying_units": lambda m, b, **kw: nnsanity.assert_no_dying_units(
        m, b, F.cross_entropy, **kw
    ),
    "assert_loss_stable": lambda m, b, **kw: nnsanity.assert_loss_stable(
        m, b, F.cross_entropy, **kw
    ),
    "assert_input_scale": lambda m, b, **kw: nnsanity.assert_input_scale(m, b, **kw),
    # random labels carry no signal: two batches of a learnable relation, made in the same mode
    "assert_learns_signal": lambda m, b, **kw: nnsanity.assert_learns_signal(
        m, learnable.batches("mlp")[0], F.cross_entropy, holdout=learnable.batches("mlp")[1], **kw
    ),
}


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
@pytest.mark.parametrize("name", [n for n in nnsanity.__all__ if n.startswith("assert_")])
def test_every_public_check_works_without_grad_and_leaves_global_state_and_the_model_alone(
    name, mode
):
    assert name in CALLS, f"add nnsanity.{name} to CALLS"
    model = (zoo.TinyCausalLM() if name in _SEQUENCE_CHECKS else zoo.mlp()).eval()
    first = next(model.parameters())
    first.grad = torch.ones_like(first)  # a gradient the caller left must survive too
    # Grad mode is off before the call, so it must be off after it; the batch is the caller's,
    # made under the same mode (under inference_mode it cannot enter autograd as it is).
    assert_restores(lambda: CALLS[name](model, zoo.classification_batch()), model, mode)
    assert not first.grad.is_inference()  # or the caller's next backward cannot accumulate into it


class _CountingMLP(torch.nn.Module):
    """The zoo MLP with a forward-call counter in a non-persistent buffer (not in state_dict)."""

    def __init__(self):
        super().__init__()
        self.net = zoo.mlp()
        self.register_buffer("calls", torch.zeros((), dtype=torch.long), persistent=False)

    def forward(self, x):
        self.calls += 1
        return self.net(x)


@pytest.mark.parametrize(
    "name", [n for n in CALLS if n not in (*_SEQUENCE_CHECKS, "assert_reproducible")]
)
def test_every_check_restores_buffers_registered_with_persistent_false(name):
    model = _CountingMLP()
    assert "calls" not in model.state_dict()
    CALLS[name](model, zoo.classification_batch())
    assert int(model.calls) == 0


PUBLIC_ASSERTS = [n for n in nnsanity.__all__ if n.startswith("assert_")]


@pytest.mark.parametrize("name", PUBLIC_ASSERTS)
def test_every_public_check_rejects_a_non_integer_seed_with_a_type_error(name):
    model = zoo.TinyCausalLM() if name in _SEQUENCE_CHECKS else zoo.mlp()
    with pytest.raises(TypeError, match="seed must be an int, got str"):
        CALLS[name](model, zoo.classification_batch(), seed="x")


@pytest.mark.parametrize("seed", [-1, 2**64])
@pytest.mark.parametrize("name", PUBLIC_ASSERTS)
def test_every_public_check_rejects_a_seed_torch_cannot_take_with_a_value_error(name, seed):
    model = zoo.TinyCausalLM() if name in _SEQUENCE_CHECKS else zoo.mlp()
    with pytest.raises(ValueError, match=r"outside \[0, 2\*\*64\)"):
        CALLS[name](model, zoo.classification_batch(), seed=seed)


@pytest.mark.parametrize("name", PUBLIC_ASSERTS)
def test_no_check_queues_its_seed_for_a_cuda_that_is_not_initialised_yet(name):
    if torch.cuda.is_initialized():
        pytest.skip("CUDA is initialised: seeding it is then undone on exit")
    model = zoo.TinyCausalLM() if name in _SEQUENCE_CHECKS else zoo.mlp()
    torch.manual_seed(1234)  # the caller's seed, queued for CUDA's first use
    queued = list(torch.cuda._lazy_seed_tracker.get_calls())
    CALLS[name](model, zoo.classification_batch(), seed=5)
    # torch.manual_seed(5) would replace it: CUDA would later start from the check's seed
    assert torch.cuda._lazy_seed_tracker.get_calls() == queued


def test_a_model_built_under_inference_mode_is_rejected_with_a_clear_error():
    with torch.inference_mode():
        model = zoo.mlp()
    with pytest.raises(ValueError, match=r"created under torch\.inference_mode\(\).*outside"):
        nnsanity.assert_loss_decreases(model, zoo.classification_batch(), F.cross_entropy)


def _mixing_step(model):
    """A step that augments its batch in place, as timm's Mixup does (x.mul_(lam).add_(...))."""
    opt = torch.optim.Adam(model.parameters(), 1e-3)

    def step(batch):
        x, y = batch
        x.mul_(0.5).add_(x.flip(0), alpha=0.5)
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    return step


def test_a_step_that_augments_in_place_sees_a_fresh_batch_and_leaves_the_callers_alone():
    model, batch, _ = zoo.healthy("mlp")
    kept = batch[0].clone()
    seen = []

    def step(b):
        seen.append(b[0].clone())
        return _mixing_step(model)(b)

    nnsanity.measure_loss_decrease(model, batch, F.cross_entropy, step=step)
    assert torch.equal(batch[0], kept)  # the caller's batch is untouched
    assert all(torch.equal(s, kept) for s in seen)  # and no mixing compounds across steps
