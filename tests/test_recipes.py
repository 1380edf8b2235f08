"""Three public projects' recipes, each with its own training step, pass every applicable check
with default arguments at five run seeds (tests/recipes.py builds them):

- a nanoGPT-style GPT that takes its targets, ``model(idx, targets) -> (logits, loss)``, with
  ``train.py``'s AdamW step and no ``loss_fn`` (its own loss);
- word_language_model's time-first Transformer LM, ``(T, B)`` tokens in, log-probabilities out,
  with ``main.py``'s hand-written SGD step and its NLL criterion;
- the same example's LSTM LM, its hidden state passed explicitly, carried by the step from batch
  to batch and detached before each (``repackage_hidden``).

Each check gets a fresh step (``step_factory=``), as one test file's checks would. The seed is
the model's init and the check's ``seed=``. The only arguments given are the ones that say what
the data are: ``batch_dim=1`` for a lone time-first tensor (batch independence, learning the
signal), ``dim=0`` for causality along
time-first positions, the inputs alone for causality.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import recipes
import torch

import nnsanity

pytestmark = pytest.mark.usefixtures("one_thread")

SEEDS = range(5)


@dataclass(frozen=True)
class Recipe:
    build: Callable[[int], torch.nn.Module]
    batch: Callable[[int], Any]
    loss_fn: Callable[[Any, Any], torch.Tensor] | None
    step_factory: Callable[[torch.nn.Module], Callable[[Any], Any]]
    causal: Callable[[Any], Any]  # the inputs (or the pair) causality is checked on
    causal_dim: int = 1
    batch_dim: int | None = None


RECIPES = {
    "nanogpt": Recipe(
        lambda s: recipes.GPT(seed=s), recipes.gpt_batch, None, recipes.gpt_step,
        causal=lambda b: b,  # the pair: its full logits need the targets
    ),
    "word_transformer": Recipe(
        lambda s: recipes.WordTransformer(seed=s), recipes.word_batch, recipes.word_loss,
        recipes.transformer_step, causal=lambda b: b[0], causal_dim=0, batch_dim=1,
    ),
    "word_lstm": Recipe(
        lambda s: recipes.WordLSTM(seed=s), recipes.lstm_batch, recipes.lstm_loss,
        recipes.lstm_step, causal=lambda b: b[0], causal_dim=0,
    ),
}  # fmt: skip

WITH_STEP = (
    "loss_decrease", "overfit", "params_update", "params_registered", "update_ratio",
    "uses_inputs", "dying_units", "loss_stability", "learns_signal",
)  # fmt: skip
WITH_LOSS = ("init_loss", "finite", "gradient_ratio")
OUTPUTS_ONLY = ("batch_independence", "causal", "eval_mode", "activation_growth", "input_scale")
CHECKS = (*WITH_STEP, *WITH_LOSS, *OUTPUTS_ONLY)


def run(check: str, recipe: Recipe, seed: int) -> Any:
    model, batch = recipe.build(seed), recipe.batch(seed)
    measure = getattr(nnsanity, f"measure_{check}")
    if check == "batch_independence":
        return measure(model, batch, batch_dim=recipe.batch_dim, seed=seed)
    if check == "causal":
        return measure(model, recipe.causal(batch), dim=recipe.causal_dim, seed=seed)
    if check in ("eval_mode", "activation_growth", "input_scale"):
        return measure(model, batch, seed=seed)
    if check in WITH_LOSS:
        return measure(model, batch, recipe.loss_fn, seed=seed)
    kw = (
        {"holdout": recipe.batch(seed + 100), "batch_dim": recipe.batch_dim}
        if check == "learns_signal"
        else {}
    )
    return measure(model, batch, recipe.loss_fn, step_factory=recipe.step_factory, seed=seed, **kw)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("check", CHECKS)
@pytest.mark.parametrize("name", list(RECIPES))
def test_every_applicable_check_passes_on_the_recipe_with_its_own_step(name, check, seed):
    result = run(check, RECIPES[name], seed)
    assert result.passed, result


# -- the same recipes with a classic bug planted: a check fails, naming it ---------------------


def test_nanogpt_step_that_never_zeroes_its_gradients_is_caught():
    def factory(model):
        return recipes.gpt_step(model, zero_grad=False)

    r = nnsanity.measure_loss_decrease(recipes.GPT(), recipes.gpt_batch(), step_factory=factory)
    assert not r.passed and r.accumulates_gradients


def test_word_transformer_without_its_causal_mask_is_caught():
    class Unmasked(recipes.WordTransformer):
        def forward(self, src):
            return super().forward(src, has_mask=False)

    data, _ = recipes.word_batch()
    assert not nnsanity.measure_causal(Unmasked(), data, dim=0).passed
    assert nnsanity.measure_causal(recipes.WordTransformer(), data, dim=0).passed


def test_word_lstm_step_that_never_detaches_its_hidden_state_is_a_clear_error():
    with pytest.raises(ValueError, match=r"still holds that call's autograd graph.*Detach"):
        nnsanity.assert_loss_decreases(
            recipes.WordLSTM(), recipes.lstm_batch(), recipes.lstm_loss,
            step_factory=lambda m: recipes.lstm_step(m, detach=False),
        )  # fmt: skip
