"""N9: "better than 98 percent" with a single hidden layer of 100 neurons (ch. 3).

Source: Nielsen, NNDL ch. 3, end of "Regularization": ``net = network2.Network([784, 100, 10],
cost=network2.CrossEntropyCost); net.large_weight_initializer(); net.SGD(training_data, 30, 10,
0.5, lmbda=5.0, evaluation_data=validation_data, ...)`` gives 97.92% on the validation data, and
"60 epochs at eta = 0.1 and lambda = 5.0 ... 98.04 percent" (the notes' "we could still classify
stuff to 98% accuracy"). The listing uses the large init (weights and biases N(0, 1)); the
60-epoch sentence does not restate the init, so both inits are run and the report says which one
the published number is consistent with.

Measured: the faithful network2 (nnsanity.repro.network2: sigmoid, summed binary cross-entropy,
plain SGD on mini-batches of 10, L2 on the weights with n = 50,000), several seeds (following
--nnsanity-seed) trained as one batched population; validation accuracy after every epoch.

Pass criteria, declared before the runs: each published number is ONE run, so it reproduces when
it lies in the 95% prediction interval of one run of ours (final epoch; the best epoch is kept in
details, as the book does not say which one it quotes). "Better than 98 percent" reproduces when
the upper end of that interval reaches 98% (a single run can exceed 98%) for the 60-epoch run.

Smoke budget: the faithful epochs and rates with fewer seeds: 3 instead of 8 for the 30-epoch
run and 3 per init instead of 8 for the 60-epoch runs (so the smoke intervals are wide, through t
with 2 degrees of freedom).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from nnsanity.repro.claims import Claim, Verdict, single_run_claim
from nnsanity.repro.network2 import Network2Config
from nnsanity.repro.population import train_population
from nnsanity.repro.stats import binomial_se

SOURCE = "Nielsen, NNDL ch. 3, 'Regularization' (end of section)"
SIZES = (784, 100, 10)
PUBLISHED_30 = 97.92  # large init, eta 0.5, lambda 5, 30 epochs
PUBLISHED_60 = 98.04  # eta 0.1, lambda 5, 60 epochs, init not restated


@dataclasses.dataclass(frozen=True)
class Budget:
    seeds_30: int = 8
    seeds_60: int = 8  # per init
    lmbda: float = 5.0


FULL = Budget()
SMOKE = dataclasses.replace(FULL, seeds_30=3, seeds_60=3)

# Verdicts the evidence gave (reproductions/README.md); a moved verdict fails the test.
R, N = Verdict.REPRODUCED, Verdict.NOT_REPRODUCED
EXPECTED = {
    "smoke": {
        "N9.30-epochs-large-init": R,
        "N9.60-epochs-large-init": N,
        "N9.60-epochs-default-init": R,
        "N9.better-than-98": R,
    },
    "full": {
        "N9.30-epochs-large-init": R,
        "N9.60-epochs-large-init": R,
        "N9.60-epochs-default-init": R,
        "N9.better-than-98": R,
    },
}


def train(configs, epochs, eta, lmbda, mnist, device, progress, label) -> torch.Tensor:
    """(K, epochs) validation accuracy in %, the configs trained as one population."""
    result = train_population(
        configs,
        mnist.train_x,
        mnist.train_y,
        epochs=epochs,
        eta=eta,
        lmbda=lmbda,
        eval_x=mnist.validation_x,
        eval_y=mnist.validation_y,
        device=device,
        progress=lambda done, total: progress(label, done, total),
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
    configs = [Network2Config(SIZES, seed, "large") for seed in seeds(budget.seeds_30)]
    return train(
        configs,
        30,
        0.5,
        budget.lmbda,
        nnsanity_mnist,
        nnsanity_device,
        nnsanity_progress,
        "N9 30 ep",
    )


@pytest.fixture(scope="module")
def sixty_epochs(budget, seeds, nnsanity_mnist, nnsanity_device, nnsanity_progress):
    """init -> (seeds, 60) accuracy at eta 0.1, both inits in one population."""
    configs = [
        Network2Config(SIZES, seed, init)
        for init in ("large", "default")
        for seed in seeds(budget.seeds_60)
    ]
    acc = train(
        configs,
        60,
        0.1,
        budget.lmbda,
        nnsanity_mnist,
        nnsanity_device,
        nnsanity_progress,
        "N9 60 ep",
    )
    n = budget.seeds_60
    return {"large": acc[:n], "default": acc[n:]}


def test_large_init_eta_05_reaches_97_92_in_30_epochs(thirty_epochs, claim, nnsanity_budget):
    acc = thirty_epochs
    c = single_run_claim(
        PUBLISHED_30,
        acc[:, -1].tolist(),  # final-epoch accuracy of each seed
        id="N9.30-epochs-large-init",
        source=SOURCE,
        statement="[784,100,10], large init, eta 0.5, lambda 5, 30 epochs: 97.92% on validation",
        unit="%",
        details=details(acc),
    )
    claim(c, EXPECTED[nnsanity_budget][c.id])


@pytest.mark.parametrize("init", ["large", "default"])
def test_sixty_epochs_at_eta_01_reach_98_04(init, sixty_epochs, claim, nnsanity_budget):
    acc = sixty_epochs[init]
    c = single_run_claim(
        PUBLISHED_60,
        acc[:, -1].tolist(),  # final-epoch accuracy of each seed
        id=f"N9.60-epochs-{init}-init",
        source=SOURCE,
        statement=f"[784,100,10], {init} init, eta 0.1, lambda 5, 60 epochs: 98.04%",
        unit="%",
        details=details(acc),
    )
    claim(c, EXPECTED[nnsanity_budget][c.id])


def test_a_single_hidden_layer_network_can_exceed_98_percent(sixty_epochs, claim, nnsanity_budget):
    final = torch.cat([acc[:, -1] for acc in sixty_epochs.values()])  # both inits' runs
    above = int((final > 98.0).sum())
    c = Claim(
        id="N9.better-than-98",
        source=SOURCE,
        statement="one hidden layer of 100 classifies MNIST better than 98 percent (one run)",
        published=98.0,
        measured=final.tolist(),
        statistic="share of our single 60-epoch runs (both inits) above 98% at the final epoch, "
        "with its binomial SE; reproduced if at least one run exceeds 98%",
        verdict=Verdict.REPRODUCED if above > 0 else Verdict.NOT_REPRODUCED,
        unit="%",
        details={
            "runs_above_98": above,
            "runs": len(final),
            "share_above_98": above / len(final),
            "share_se": binomial_se(above, len(final)),
            "best_epoch_runs_above_98": int(
                sum(int((acc.max(dim=1).values > 98.0).sum()) for acc in sixty_epochs.values())
            ),
        },
    )
    claim(c, EXPECTED[nnsanity_budget][c.id])
