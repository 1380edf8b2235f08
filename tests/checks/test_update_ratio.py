"""The update-to-weight ratio: one step moves no weight matrix by more than a tenth of its norm."""

from __future__ import annotations

import math

import mnist_recipe as recipes
import pytest
import torch
import word_lm
import zoo
from architectures import ZOO
from state_oracle import assert_restores
from torch import nn
from torch.nn import functional as F

from nnsanity import assert_update_ratio, measure_update_ratio
from nnsanity.errors import SanityError

pytestmark = pytest.mark.usefixtures("one_thread")

BATCH = zoo.classification_batch()


def adam(lr):
    return lambda p: torch.optim.Adam(p, lr=lr)


def sgd(lr):
    return lambda p: torch.optim.SGD(p, lr=lr)


@pytest.mark.parametrize("name", list(zoo.HEALTHY))
def test_passes_on_the_healthy_toy_models_with_defaults(name):
    r = assert_update_ratio(*zoo.healthy(name))
    assert r.layers and max(u.ratio for u in r.layers) < r.max_ratio


@pytest.mark.parametrize("name", list(ZOO))
def test_passes_on_the_real_architectures_with_defaults(name):
    arch = ZOO[name]
    assert measure_update_ratio(arch.build(), arch.batch(), arch.loss_fn).passed


@pytest.mark.parametrize("name", list(zoo.HEALTHY))
def test_fails_on_every_toy_model_with_a_learning_rate_100x_the_default(name):
    model, batch, loss_fn = zoo.healthy(name)
    with pytest.raises(
        SanityError,
        match=r"(?s)One step moves the weights too far!.*\(up to 0\.1 allowed\).*"
        r"1\. the learning rate is too high",
    ):
        assert_update_ratio(model, batch, loss_fn, optimizer=adam(3e-2))


@pytest.mark.parametrize("name", list(ZOO))
def test_fails_on_real_architectures_with_a_learning_rate_100x_the_default(name):
    arch = ZOO[name]
    r = measure_update_ratio(arch.build(), arch.batch(), arch.loss_fn, optimizer=adam(3e-2))
    # over the one-step bound, and carried past its own norm within the run (gcn: 0.25, then 1.6)
    assert not r.passed and r.too_large[0].ratio > r.max_ratio


def test_adams_first_step_moves_each_weight_by_the_learning_rate():
    # Adam's first update is lr x sign(gradient): lr for every weight whose gradient is not zero
    model = zoo.mlp()
    F.cross_entropy(model(BATCH[0]), BATCH[1]).backward()
    moving = {n: float((p.grad != 0).double().mean()) for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    r = measure_update_ratio(model, BATCH, F.cross_entropy, optimizer=adam(1e-3))
    for u in r.layers:
        # (up to Adam's eps = 1e-8 against the smallest gradients)
        assert u.update_rms == pytest.approx(1e-3 * math.sqrt(moving[u.name]), rel=1e-3)
        assert u.ratio == pytest.approx(u.update_rms / u.weight_rms, rel=1e-9)


def test_sgd_too_fast_fails_and_its_healthy_twin_passes():
    assert_update_ratio(zoo.mlp(), BATCH, F.cross_entropy, optimizer=sgd(0.1))
    with pytest.raises(SanityError, match=r"lower it at least \d"):
        assert_update_ratio(zoo.mlp(), BATCH, F.cross_entropy, optimizer=sgd(30.0))


def test_a_users_step_is_judged_by_what_it_does():
    model = zoo.mlp()
    assert_update_ratio(model, BATCH, F.cross_entropy, step=zoo.user_step(model))  # Adam 3e-4

    fast = zoo.mlp()
    opt = torch.optim.SGD(fast.parameters(), lr=30.0)

    def step(batch):
        opt.zero_grad()
        loss = F.cross_entropy(fast(batch[0]), batch[1])
        loss.backward()
        opt.step()
        return loss

    with pytest.raises(SanityError, match="One step moves the weights too far!"):
        assert_update_ratio(fast, BATCH, F.cross_entropy, step=step)


def test_the_bound_relaxes_the_check():
    model = zoo.mlp()
    worst = max(
        u.ratio
        for u in measure_update_ratio(model, BATCH, F.cross_entropy, optimizer=adam(3e-2)).layers
    )
    assert_update_ratio(model, BATCH, F.cross_entropy, optimizer=adam(3e-2), max_ratio=worst * 1.01)


class LoRALinear(nn.Module):
    """A frozen base layer plus a low-rank update whose B starts at zero (Hu et al. 2021)."""

    def __init__(self, d_in=20, d_out=10, rank=4):
        super().__init__()
        torch.manual_seed(0)
        self.base = nn.Linear(d_in, d_out).requires_grad_(False)
        self.a = nn.Parameter(torch.randn(rank, d_in) / math.sqrt(d_in))
        self.b = nn.Parameter(torch.zeros(d_out, rank))

    def forward(self, x):
        return self.base(x) + x @ self.a.T @ self.b.T


def test_matrices_starting_at_zero_are_listed_and_not_judged():
    r = assert_update_ratio(LoRALinear(), BATCH, F.cross_entropy)
    assert r.near_zero == ("b",) and [u.name for u in r.layers] == ["a"]


def test_tiny_tokens_and_vectors_are_not_judged():
    # ViT's cls token starts at std 1e-6 (near zero); biases and norm gains are vectors
    arch = ZOO["timm_vit_tiny"]
    r = measure_update_ratio(arch.build(), arch.batch(), arch.loss_fn)
    judged = {u.name for u in r.layers}
    assert r.near_zero == ("cls_token",) and {"pos_embed", "head.weight"} <= judged
    assert not any(n.endswith(("bias", "norm1.weight")) for n in judged)


def test_weights_made_non_finite_by_the_step_are_reported_as_such():
    model = zoo.mlp()

    def overflowing_step(batch):
        model.zero_grad()
        loss = F.cross_entropy(model(batch[0]), batch[1])
        (loss * 1e30).backward()
        with torch.no_grad():
            for p in model.parameters():
                p.sub_(1e30 * p.grad)  # lr x gradient overflows float32
        return loss

    with pytest.raises(SanityError, match=r"(?s)The step made weights NaN/Inf!.*far too high"):
        assert_update_ratio(model, BATCH, F.cross_entropy, step=overflowing_step)


def test_update_ratio_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"max_ratio must be a number > 0"):
        assert_update_ratio(zoo.mlp(), BATCH, F.cross_entropy, max_ratio=0)
    with pytest.raises(TypeError, match="max_ratio must be a number > 0"):
        assert_update_ratio(zoo.mlp(), BATCH, F.cross_entropy, max_ratio="0.1")
    model = zoo.mlp()
    with pytest.raises(ValueError, match=r"pass either optimizer= .* or step="):
        assert_update_ratio(model, BATCH, F.cross_entropy, optimizer=adam(1e-3), step=lambda b: 0)


def test_the_check_leaves_the_model_and_global_state_as_it_found_them():
    model = zoo.cnn()
    model.eval()
    assert_restores(lambda: measure_update_ratio(model, zoo.image_batch(), F.cross_entropy), model)


def test_results_are_the_same_run_after_run():
    first = measure_update_ratio(zoo.cnn(), zoo.image_batch(), F.cross_entropy).to_dict()
    assert measure_update_ratio(zoo.cnn(), zoo.image_batch(), F.cross_entropy).to_dict() == first


# pytorch/examples' MNIST CNN: a sign-like first step moves its 9216-input fc1 by 14-20% of its
# norm under Adadelta lr 1.0 and Adam/AdamW/Adagrad at their usual rates; ten steps then move it
# 0.3-0.7 of its norm, while a learning rate 100x too high carries it past its own norm.
@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("kind", ["adadelta", "adagrad", "sgd_momentum", "adamw"])
def test_the_mnist_example_recipe_passes_with_the_optimizers_people_use(kind, seed):
    model = recipes.mnist_net(seed)
    step = recipes.step_factory(kind)(model)
    assert_update_ratio(model, recipes.digits(64, 10 + seed), F.nll_loss, step=step)


@pytest.mark.parametrize(
    "make",
    [
        lambda m: torch.optim.Adadelta(m.parameters(), lr=100.0),
        lambda m: torch.optim.AdamW(m.parameters(), lr=0.1),
        lambda m: torch.optim.SGD(m.parameters(), lr=1.0, momentum=0.9, nesterov=True),
    ],
    ids=["adadelta", "adamw", "sgd_momentum"],
)
def test_the_mnist_example_recipe_fails_with_a_learning_rate_100x_too_high(make):
    model = recipes.mnist_net(0)
    opt = make(model)

    def step(batch):
        opt.zero_grad()
        loss = F.nll_loss(model(batch[0]), batch[1])
        loss.backward()
        opt.step()
        return loss

    with pytest.raises(
        SanityError, match=r"(?s)Then moved .* of its norm .* \(up to 1 allowed\).*too high"
    ) as e:
        assert_update_ratio(model, recipes.digits(64, 10), F.nll_loss, step=step)
    assert e.value.result.too_large[0].run_ratio > 1


def test_a_first_step_under_the_bound_takes_no_run():
    r = assert_update_ratio(*zoo.healthy("mlp"))
    assert r.run_steps == 0 and all(u.run_ratio is None for u in r.layers)


# pytorch/examples' word_language_model with its own step (SGD lr 20, clip 0.25) on a
# 50-token vocabulary: the decoder is small, so a clipped step moves a larger share of it
@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("batch_size", [20, 4])
def test_a_word_lm_with_a_small_vocabulary_passes_with_its_own_step(seed, batch_size):
    model = word_lm.word_lm(50, seed)
    step = word_lm.sgd_step()(model)
    batch = word_lm.corpus(50, seed, b=batch_size)
    assert_update_ratio(model, batch, word_lm.lm_loss, step=step)


def test_a_word_lm_with_a_small_vocabulary_at_100x_the_learning_rate_fails():
    model = word_lm.word_lm(50, 0)
    step = word_lm.sgd_step(lr=2000.0)(model)
    with pytest.raises(SanityError, match=r"(?s)Then moved .* \(up to 1 allowed\)"):
        assert_update_ratio(model, word_lm.corpus(50, 0), word_lm.lm_loss, step=step)


def test_an_embedding_table_is_judged_on_the_rows_the_step_moved():
    # 10,000 rows, a batch of 16 x 12 tokens looks up ~190: Adam 1e-2 moves each row looked
    # up by 17% of its norm, the whole table by 2.4%; the bound must not depend on the vocabulary
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(10_000, 32), nn.Flatten(), nn.Linear(12 * 32, 4))
    nn.init.uniform_(model[0].weight, -0.1, 0.1)
    batch = (torch.randint(0, 10_000, (16, 12)), torch.randint(0, 4, (16,)))
    r = measure_update_ratio(model, batch, F.cross_entropy, optimizer=adam(1e-2))
    table = next(u for u in r.layers if u.name == "0.weight")
    assert table.ratio == pytest.approx(1e-2 / table.weight_rms, rel=0.01) and not r.passed
    assert "0.weight" in {u.name for u in r.too_large}
