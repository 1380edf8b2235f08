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

Criteria (declared 2026-11-29, revised 2026-12-07 before the confirmatory run; frozen at the
tag criteria-v1):
- each published number is ONE run, quoted at an epoch the book does not name: as N1, each
  reading (final and best epoch) by the 95% prediction interval of one of our runs, inconclusive
  when it holds the number only by being wider than ±1 point; reproduced when either reading
  reproduces, not reproduced when both exclude it;
- "better than 98 percent" (the notes' "we could still classify stuff to 98% accuracy"): a single
  60-epoch run above 98% is a plausible outcome: the upper end of the 95% prediction interval of
  one run (final epoch, both inits pooled) reaches 98 (reproduced) or not (not reproduced);
  inconclusive when that interval is wider than ±1 point;
- which init gave 98.04% (paired: seed s gives both inits one data order): reproduced when
  exactly one init's 95% prediction interval (final epoch) holds 98.04 and the inits differ (a
  two-sided paired t-test at 0.05); not reproduced when the inits are equivalent (TOST on the
  per-seed difference, margin ±0.2 points: then no number can point to one of them) or neither
  interval holds 98.04; inconclusive otherwise.

Changed after seeing data (disclosed in each claim's `changed`): better-than-98 was "the upper
end of a prediction interval reaches 98%" until 2026-11-26 (it could pass a mean of 97.5%), then
"some run ends above 98%, else inconclusive" (it could not fail), now the interval rule above
again, with the ±1 rule; which-init ignored the pairing and could not fail until 2026-12-07; the
30-epoch run went from 8 seeds to 6 on 2026-11-29 (cost), which dropped a 97.04% run, and is
back at 8; the ±1-point rule (2026-11-29); both readings (2026-12-07).

Measured at the full budget (2026-11-30, 8 seeds per init, commit 8982f0b, old criteria): 98.04
lay in both inits' 95% prediction intervals, [97.53, 98.10] (large) and [97.69, 98.12] (default).

Budgets: FULL below (8 seeds for the 30-epoch run, 8 per init for the 60-epoch runs). SMOKE =
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
    single_run_claim,
    single_run_readings_claim,
)
from nnsanity.repro.network2 import Network2Config
from nnsanity.repro.population import train_population
from nnsanity.repro.stats import prediction_interval

SOURCE = "Nielsen, NNDL ch. 3, 'Regularization' (end of section)"
SIZES = (784, 100, 10)
PUBLISHED_30 = 97.92  # large init, eta 0.5, lambda 5, 30 epochs
PUBLISHED_60 = 98.04  # eta 0.1, lambda 5, 60 epochs, init not restated
INITS = ("large", "default")


@dataclasses.dataclass(frozen=True)
class Budget:
    seeds_30: int = 8
    seeds_60: int = 8  # per init
    lmbda: float = 5.0


FULL = Budget()
SMOKE = None
NOT_AT_SMOKE = "60 epochs x 50,000 images per run: minutes per seed on 2 CPU cores"

MAX_HALF_WIDTH = 1.0  # points: a wider prediction interval is inconclusive
LEVEL = 0.95
ALPHA = 0.05
SAME_MARGIN = 0.2  # points: inits this close cannot be told apart by one published run
HALF_WIDTH_RULE = (
    "2026-11-29 (after the 2026-11-26 run): inconclusive when the prediction interval is wider "
    "than ±1 point; 2026-12-07: judged on the final and the best epoch (either reproduces)"
)


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
    return {"best_epoch": (acc.argmax(dim=1) + 1).tolist(), "per_epoch_mean": acc.mean(0).tolist()}


def readings(acc: torch.Tensor) -> dict[str, list[float]]:
    return {"final epoch": acc[:, -1].tolist(), "best epoch": acc.max(dim=1).values.tolist()}


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
        single_run_readings_claim(
            PUBLISHED_30,
            readings(acc),
            max_half_width=MAX_HALF_WIDTH,
            id="N9.30-epochs-large-init",
            source=SOURCE,
            statement="[784,100,10], large init, eta 0.5, lambda 5, 30 epochs: 97.92% on "
            "validation",
            unit="%",
            details=details(acc),
            changed=HALF_WIDTH_RULE + "; 2026-11-29: 8 seeds cut to 6 (cost), which dropped "
            "a 97.04% run; 2026-12-07: back to 8 (issue 17)",
        )
    )


@pytest.mark.parametrize("init", INITS)
def test_sixty_epochs_at_eta_01_reach_98_04(init, sixty_epochs, claim):
    acc = sixty_epochs[init]
    claim(
        single_run_readings_claim(
            PUBLISHED_60,
            readings(acc),
            max_half_width=MAX_HALF_WIDTH,
            id=f"N9.60-epochs-{init}-init",
            source=SOURCE,
            statement=f"[784,100,10], {init} init, eta 0.1, lambda 5, 60 epochs: 98.04%",
            unit="%",
            details=details(acc),
            changed=HALF_WIDTH_RULE,
        )
    )


def test_a_single_hidden_layer_network_can_exceed_98_percent(sixty_epochs, claim):
    final = torch.cat([sixty_epochs[init][:, -1] for init in INITS]).double().numpy()
    c = single_run_claim(
        98.0,
        final,
        max_half_width=MAX_HALF_WIDTH,
        id="N9.better-than-98",
        source=SOURCE + "; the notes ('we could still classify stuff to 98% accuracy')",
        statement="one hidden layer of 100 classifies MNIST better than 98 percent: a single "
        "60-epoch run above 98% is within the spread of our runs (both inits pooled)",
        unit="%",
        details={
            "runs_above_98": int((final > 98.0).sum()),
            "runs": len(final),
            "best_epoch_runs_above_98": int(
                sum(int((sixty_epochs[i].max(dim=1).values > 98.0).sum()) for i in INITS)
            ),
        },
        changed="2026-11-26: was 'the upper end of a prediction interval reaches 98%' (it could "
        "pass a mean of 97.5%), then 'some run ends above 98%, else inconclusive', which could "
        "not fail; 2026-12-07: the upper end of one run's 95% prediction interval reaches 98 "
        "(reproduced) or not (not reproduced), inconclusive wider than ±1 point (issue 17)",
    )
    x = final
    half = stats.t.ppf((1 + LEVEL) / 2, x.size - 1) * x.std(ddof=1) * np.sqrt(1 + 1 / x.size)

    def judge(v: np.ndarray) -> np.ndarray:
        n = v.shape[-1]
        h = stats.t.ppf((1 + LEVEL) / 2, n - 1) * v.std(-1, ddof=1) * np.sqrt(1 + 1 / n)
        reach = v.mean(-1) + h >= 98.0
        return np.where(
            h > MAX_HALF_WIDTH, "inconclusive", np.where(reach, "reproduced", "not reproduced")
        )

    verdict = Verdict(judge(x[None])[0])
    fresh = np.random.default_rng(0).normal(x.mean(), x.std(ddof=1), (FLIP_DRAWS, x.size))
    c.verdict, c.flip = verdict, float(np.mean(judge(fresh) != verdict))
    c.statistic = (
        "reproduced if the upper end of the 95% prediction interval of one run reaches 98 "
        "(inconclusive if that interval is wider than ±1 point), else not reproduced"
    )
    c.estimate, c.estimator = float(x.mean() + half), "upper end of one run's 95% interval"
    claim(c)


def consistent(runs: np.ndarray) -> np.ndarray:
    """Row-wise: does 98.04 lie in the 95% prediction interval of one run? runs: (sets, n)."""
    n = runs.shape[-1]
    half = stats.t.ppf((1 + LEVEL) / 2, n - 1) * runs.std(-1, ddof=1) * np.sqrt(1 + 1 / n)
    return np.abs(PUBLISHED_60 - runs.mean(-1)) <= half


def which_init(large: np.ndarray, default: np.ndarray) -> np.ndarray:
    """Row-wise verdicts of N9.which-init from paired (sets, seeds) final accuracies."""
    d = default - large
    n = d.shape[-1]
    mean, se = d.mean(-1), d.std(-1, ddof=1) / np.sqrt(n)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = 2 * stats.t.sf(np.abs(mean / se), n - 1)
    half = stats.t.ppf(1 - ALPHA, n - 1) * se  # the TOST's 90% CI
    same = (mean - half >= -SAME_MARGIN) & (mean + half <= SAME_MARGIN)
    a, b = consistent(large), consistent(default)
    one = a != b
    reproduced = one & (p < ALPHA)
    not_reproduced = same | (~a & ~b)
    return np.where(
        reproduced, "reproduced", np.where(not_reproduced, "not reproduced", "inconclusive")
    )


def test_the_published_98_04_points_to_one_init(sixty_epochs, claim):
    large, default = (sixty_epochs[i][:, -1].double().numpy() for i in INITS)
    d = default - large  # per seed: the same data order for both inits
    verdict = Verdict(which_init(large[None], default[None])[0])
    rng = np.random.default_rng(0)
    # Fresh paired sets: seeds drawn jointly, keeping the pairs' correlation.
    cov = np.cov(np.stack([large, default]))
    pairs = rng.multivariate_normal([large.mean(), default.mean()], cov, (FLIP_DRAWS, large.size))
    holds = {i: bool(consistent(v[None])[0]) for i, v in zip(INITS, (large, default))}
    best = {i: sixty_epochs[i].max(dim=1).values.double().numpy() for i in INITS}
    best_d = best["default"] - best["large"]
    p_final = float(stats.ttest_1samp(d, 0.0).pvalue)
    ci = stats.ttest_1samp(d, 0.0).confidence_interval(1 - 2 * ALPHA)
    claim(
        Claim(
            id="N9.which-init",
            source=SOURCE,
            statement="the published 98.04% points to one init: it lies in the single-run "
            "interval of exactly one of the two inits, which differ (paired by seed)",
            published=PUBLISHED_60,
            measured=d.tolist(),
            statistic="reproduced if exactly one init's 95% prediction interval of one run holds "
            "98.04 and the paired difference is significant (two-sided, 0.05); not reproduced if "
            f"the inits are equivalent (TOST, ±{SAME_MARGIN} points) or neither interval holds "
            "98.04; else inconclusive",
            verdict=verdict,
            interval=(float(ci.low), float(ci.high)),
            interval_kind="90% CI of the per-seed difference default - large (final epoch)",
            estimate=float(d.mean()),
            estimator="mean paired difference",
            unit=" pts",
            flip=float(np.mean(which_init(pairs[..., 0], pairs[..., 1]) != verdict)),
            details={
                "consistent_with_98.04": holds,
                "prediction_interval_large": prediction_interval(large),
                "prediction_interval_default": prediction_interval(default),
                "p_paired_final": p_final,
                "best_epoch_difference_mean": float(best_d.mean()),
                "p_paired_best_epoch": float(stats.ttest_1samp(best_d, 0.0).pvalue),
            },
            changed="2026-12-07: was 'exactly one init's interval holds 98.04, else "
            "inconclusive' (it could not fail and ignored that the inits are paired by seed); "
            "now with the paired test and an equivalence outcome (issue 17)",
        )
    )
