"""N9: "better than 98 percent" with a single hidden layer of 100 neurons (ch. 3).

Source: Nielsen, NNDL ch. 3, end of "Regularization": ``net = network2.Network([784, 100, 10],
cost=network2.CrossEntropyCost); net.large_weight_initializer(); net.SGD(training_data, 30, 10,
0.5, lmbda=5.0, evaluation_data=validation_data, ...)`` gives 97.92% on the validation data, and
"60 epochs at eta = 0.1 and lambda = 5.0 ... 98.04 percent" (the notes' "we could still classify
stuff to 98% accuracy"). The listing uses the large init (weights and biases N(0, 1)); the
60-epoch sentence does not restate the init, so both inits are run.

Measured: the faithful network2 (nnsanity.repro.network2: sigmoid, summed binary cross-entropy,
plain SGD on mini-batches of 10, L2 on the weights with n = 50,000) in float32 where network2.py
used float64 (reproductions/studies/final_epoch.py: float64 moved the 60-epoch accuracies by
0.02-0.04 points, p > 0.4), several seeds (from --nnsanity-seed; seed s gives both inits the
same data order) trained as batched populations; validation accuracy after every epoch.

Criteria (declared 2026-11-29 before the runs with these settings):
- each published number is ONE run: it reproduces when it lies in the 95% prediction interval of
  one of our runs (final epoch; best epochs in details), not when it lies outside, inconclusive
  when it lies inside an interval wider than ±1 point (as N1);
- "better than 98 percent": at least one of our 60-epoch runs (both inits) ends above 98%: the
  share's 95% Wilson interval then lies above 0 (reproduced); with none, inconclusive (our runs
  cannot show that no run ever does);
- which init gave 98.04%: reproduced when exactly one init's 95% prediction interval holds
  98.04 (the number then points to that init); inconclusive when both or neither do.

Changed after seeing data (disclosed): better-than-98 was "the upper end of a prediction
interval reaches 98%" until 2026-11-26 (it could pass a mean of 97.5%).

Measured at the full budget (2026-11-30, 8 seeds per init, commit 8982f0b): N9.which-init is
inconclusive: 98.04 lies in the 95% prediction interval of one run for both inits, [97.53,
98.10] (large) and [97.69, 98.12] (default), so the published number cannot say which init the
book ran.

Budgets: FULL below (6 seeds for the 30-epoch run, 8 per init for the 60-epoch runs). SMOKE =
None: the full budget only (at smoke 3 seeds decided nothing, and the runs cost more than the
whole 6-minute smoke budget here).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from scipy import stats

from nnsanity.repro.claims import (
    FLIP_DRAWS,
    Claim,
    Verdict,
    proportion_claim,
    single_run_claim,
)
from nnsanity.repro.network2 import Network2Config
from nnsanity.repro.plugin import inconclusive
from nnsanity.repro.population import train_population
from nnsanity.repro.stats import prediction_interval

SOURCE = "Nielsen, NNDL ch. 3, 'Regularization' (end of section)"
SIZES = (784, 100, 10)
PUBLISHED_30 = 97.92  # large init, eta 0.5, lambda 5, 30 epochs
PUBLISHED_60 = 98.04  # eta 0.1, lambda 5, 60 epochs, init not restated
INITS = ("large", "default")


@dataclasses.dataclass(frozen=True)
class Budget:
    seeds_30: int = 6
    seeds_60: int = 8  # per init
    lmbda: float = 5.0


FULL = Budget()
SMOKE = None
NOT_AT_SMOKE = "60 epochs x 50,000 images per run: minutes per seed on 2 CPU cores"

MAX_HALF_WIDTH = 1.0  # points: a wider prediction interval is inconclusive
LEVEL = 0.95


def train(configs, epochs, eta, budget, mnist, device, progress, label) -> torch.Tensor:
    """(K, epochs) validation accuracy in %, the configs trained as one population."""
    result = train_population(
        configs,
        mnist.train_x,
        mnist.train_y,
        epochs=epochs,
        eta=eta,
        lmbda=budget.lmbda,
        eval_x=mnist.validation_x,
        eval_y=mnist.validation_y,
        device=device,
        progress=lambda done, total: progress(label, done, total),
        processes=2,
    )
    return 100 * result.accuracy


def details(acc: torch.Tensor) -> dict:
    return {
        "best_epoch_accuracy": acc.max(dim=1).values.tolist(),
        "best_epoch": (acc.argmax(dim=1) + 1).tolist(),
        "per_epoch_mean": acc.mean(dim=0).tolist(),
    }


@pytest.fixture(scope="module")
def thirty_epochs(budget, seeds, nnsanity_mnist, nnsanity_device, nnsanity_progress):
    """(seeds, 30) accuracy of the listing's run: large init, eta 0.5."""
    configs = [Network2Config(SIZES, s, "large") for s in seeds(budget.seeds_30)]
    args = (budget, nnsanity_mnist, nnsanity_device, nnsanity_progress, "N9 30 epochs")
    return train(configs, 30, 0.5, *args)


@pytest.fixture(scope="module")
def sixty_epochs(budget, seeds, nnsanity_mnist, nnsanity_device, nnsanity_progress):
    """init -> (seeds, 60) accuracy at eta 0.1, both inits in one population."""
    configs = [Network2Config(SIZES, s, init) for init in INITS for s in seeds(budget.seeds_60)]
    args = (budget, nnsanity_mnist, nnsanity_device, nnsanity_progress, "N9 60 epochs")
    acc = train(configs, 60, 0.1, *args)
    n = budget.seeds_60
    return {"large": acc[:n], "default": acc[n:]}


def test_large_init_eta_05_reaches_97_92_in_30_epochs(thirty_epochs, claim):
    acc = thirty_epochs
    claim(
        single_run_claim(
            PUBLISHED_30,
            acc[:, -1].tolist(),  # final-epoch accuracy of each seed
            max_half_width=MAX_HALF_WIDTH,
            id="N9.30-epochs-large-init",
            source=SOURCE,
            statement="[784,100,10], large init, eta 0.5, lambda 5, 30 epochs: 97.92% on "
            "validation",
            unit="%",
            details=details(acc),
        )
    )


@pytest.mark.parametrize("init", INITS)
def test_sixty_epochs_at_eta_01_reach_98_04(init, sixty_epochs, claim):
    acc = sixty_epochs[init]
    claim(
        single_run_claim(
            PUBLISHED_60,
            acc[:, -1].tolist(),  # final-epoch accuracy of each seed
            max_half_width=MAX_HALF_WIDTH,
            id=f"N9.60-epochs-{init}-init",
            source=SOURCE,
            statement=f"[784,100,10], {init} init, eta 0.1, lambda 5, 60 epochs: 98.04%",
            unit="%",
            details=details(acc),
        )
    )


def test_a_single_hidden_layer_network_can_exceed_98_percent(sixty_epochs, claim):
    final = torch.cat([sixty_epochs[init][:, -1] for init in INITS])  # both inits' runs
    above = int((final > 98.0).sum())
    claim(
        proportion_claim(
            above,
            len(final),
            above=0.0,
            level=LEVEL,
            measured=final.tolist(),
            id="N9.better-than-98",
            source=SOURCE,
            statement="one hidden layer of 100 classifies MNIST better than 98 percent: some of "
            "our single 60-epoch runs (both inits) end above 98%",
            published=98.0,
            unit="%",
            details={
                "runs_above_98": above,
                "runs": len(final),
                "best_epoch_runs_above_98": int(
                    sum(int((sixty_epochs[i].max(dim=1).values > 98.0).sum()) for i in INITS)
                ),
            },
        )
    )


def consistent(runs: np.ndarray) -> np.ndarray:
    """Row-wise: does 98.04 lie in the 95% prediction interval of one run? runs: (sets, n)."""
    n = runs.shape[-1]
    half = stats.t.ppf((1 + LEVEL) / 2, n - 1) * runs.std(-1, ddof=1) * np.sqrt(1 + 1 / n)
    return np.abs(PUBLISHED_60 - runs.mean(-1)) <= half


def which_init(large: np.ndarray, default: np.ndarray) -> np.ndarray:
    return np.where(consistent(large) != consistent(default), "reproduced", "inconclusive")


@inconclusive(
    "98.04 lies in both inits' 95% prediction intervals of one 60-epoch run: [97.53, 98.10] "
    "large, [97.69, 98.12] default"
)
def test_the_published_98_04_points_to_one_init(sixty_epochs, claim):
    large, default = (sixty_epochs[i][:, -1].double().numpy() for i in INITS)
    verdict = Verdict(which_init(large[None], default[None])[0])
    rng = np.random.default_rng(0)
    fresh = [rng.normal(v.mean(), v.std(ddof=1), (FLIP_DRAWS, v.size)) for v in (large, default)]
    holds = {i: bool(consistent(v[None])[0]) for i, v in zip(INITS, (large, default))}
    claim(
        Claim(
            id="N9.which-init",
            source=SOURCE,
            statement="the published 98.04% lies in the single-run interval of exactly one of "
            "the two inits, so it points to the init the book ran",
            published=PUBLISHED_60,
            measured=[*large, *default],
            statistic="reproduced if exactly one init's 95% prediction interval of one run "
            "holds 98.04, inconclusive if both or neither do",
            verdict=verdict,
            estimate=float(sum(holds.values())),
            estimator="inits consistent with 98.04:",
            interval_kind="95% prediction interval of one run, per init",
            flip=float(np.mean(which_init(*fresh) != verdict)),
            unit="",
            details={
                "consistent": holds,
                "prediction_interval_large": prediction_interval(large),
                "prediction_interval_default": prediction_interval(default),
            },
        )
    )
