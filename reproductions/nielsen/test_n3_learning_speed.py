"""N3: the speed of learning of each hidden layer during training (the log-axis figures).

Source: Nielsen, NNDL ch. 5, "The vanishing gradient problem", from ``fig/generate_gradient.py``:
the first 1,000 training images, batch gradient descent (one full-batch step per epoch) for 500
epochs, eta = 0.1, lambda = 5.0 with n = 1,000 (decay 0.9995 per step); before each step, each
hidden layer's speed = the norm of its bias gradient of the mean cost (entry 0 is the untrained
net); separate default-init networks with 2, 3 and 4 hidden layers of 30. The book: with two
hidden layers the speeds "start out learning at very different speeds", drop quickly and then
rebound, the first layer always slower; with three and four "the early layers are always slower";
with four "the first hidden layer is learning roughly 100 times slower than the final hidden
layer".

Measured: exactly that run (nnsanity.repro.network2.gradient_descent_speeds, float64 as the book)
for several seeds at once (seeds from --nnsanity-seed).

Criteria (per seed, then across seeds):
- first-slower: the first hidden layer's speed is below the last hidden layer's at >= 99% of the
  500 epochs (2 hidden layers), and it is the slowest hidden layer at >= 99% of epochs (3 and 4);
  reproduced when every seed shows it. Measured (2026-12-07) as a margin: per seed, the 1%
  quantile over epochs of log10(slowest other layer's speed / first layer's), which is > 0
  exactly when the first layer is slowest at >= 99% of epochs (the share itself, capped at 1,
  gave no spread to estimate a flip from);
- drop-and-rebound (2 hidden layers): per seed and layer, the minimum speed after epoch 0 is at
  most half the initial speed (a drop) and the speed at epoch 500 at least twice that minimum (a
  rebound); measured per seed: the smaller of log2(start/min) and log2(end/min) over both
  layers; reproduced when every seed exceeds 1;
- roughly 100x (4 hidden layers): per seed, the median over epochs of last/first; TOST on its
  log10 around log10(100) = 2 with margin log10(2): reproduced when the geometric mean's 90% CI
  lies within [50, 200]. Changed 2026-11-29 from "every seed in [50, 200]" (issue 10: a fresh
  seed set flipped it with probability about 0.34, and more seeds would only make it fail).

Smoke budget: the faithful 500 epochs with 12 seeds instead of 16. Changed 2026-11-30 from 4
and 8 seeds (the criteria unchanged): smoke runs with seeds 0-3 and 1000-1003 disagreed on two
claims. With 2 hidden layers, seeds 1000 and 1002 had the first layer slower at only 89% and 60%
of epochs (0-3: every epoch), so an every-seed verdict on 4 seeds depends on which seeds are
drawn. Does not reproduce (measured 2026-11-30, seeds 0-11 and 1000-1011 at smoke):
N3.2-hidden.first-slowest, the first hidden layer slower than the second at only 70% and 54%
(seeds 8, 10) and 89%, 60% and 48% (seeds 1000, 1002, 1007) of the epochs; the other 19 seeds at
every epoch. The book's single run is one of the majority; "always" holds for about 4 inits in 5.
The 100x TOST was reproduced with 0-3 and inconclusive with 1000-1003 (90% CI of log10
[1.64, 1.97], the margin's edge at 1.70). More seeds settle both.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from nnsanity.repro.claims import equivalence_claim, every_seed_claim
from nnsanity.repro.network2 import gradient_descent_speeds
from nnsanity.repro.parallel import map_processes, processes_for
from nnsanity.repro.plots import learning_speed
from nnsanity.repro.plugin import not_reproduced

SOURCE = "Nielsen, NNDL ch. 5, 'The vanishing gradient problem' (generate_gradient.py)"
MOST_EPOCHS = 0.99
BOOK_START = {2: (0.07, 0.31), 3: (0.012, 0.060, 0.283), 4: (0.003, 0.017, 0.070, 0.285)}  # N2
SEEDS_CHANGE = (
    "2026-11-30: 5 seeds at full (the 2026-11-26 run) became 16, and 4 at smoke 12, after seed "
    "sets 0 and 1000 disagreed at 4 seeds (issue 10)"
)


@dataclasses.dataclass(frozen=True)
class Budget:
    seeds: int = 16
    epochs: int = 500
    images: int = 1000
    eta: float = 0.1
    lmbda: float = 5.0
    hidden: int = 30


FULL = Budget()
SMOKE = dataclasses.replace(FULL, seeds=12)


@pytest.fixture(scope="module")
def speeds(budget, seeds, nnsanity_mnist, nnsanity_device, nnsanity_progress):
    """hidden layers -> (seeds, epochs, hidden layers) speeds of learning; the three depths run
    in two processes."""
    b, run_seeds = budget, seeds(budget.seeds)
    x, y = nnsanity_mnist.train_x[: b.images], nnsanity_mnist.train_y[: b.images]
    depths = [2, 3, 4]

    def run(depth: int, tick) -> torch.Tensor:
        done = [0]

        def per_epoch(epoch: int, _total: int) -> None:
            tick(epoch - done[0])
            done[0] = epoch

        return gradient_descent_speeds(
            (784, *[b.hidden] * depth, 10),
            x,
            y,
            seeds=run_seeds,
            epochs=b.epochs,
            eta=b.eta,
            lmbda=b.lmbda,
            device=nnsanity_device,
            progress=per_epoch,
        ).cpu()

    def progress(done: int) -> None:
        nnsanity_progress("N3 gradient descent, 3 depths", done, len(depths) * b.epochs, "epochs")

    results = map_processes(
        run,
        depths,
        groups=[[2], [0, 1]],  # about equal work: 4 hidden layers against 2 + 3
        processes=processes_for(nnsanity_device),
        progress=progress,
    )
    return dict(zip(depths, results))


@pytest.mark.parametrize(
    "depth",
    [
        pytest.param(
            2,
            marks=not_reproduced(
                "with 2 hidden layers 5 of 24 seeds have the first layer slower at only 48-89% "
                "of epochs (the book's one run: always)"
            ),
        ),
        3,
        4,
    ],
)
def test_the_first_hidden_layer_is_always_the_slowest(depth, speeds, claim):
    v = speeds[depth].double()
    others = v[:, :, 1:].min(dim=2).values  # (seeds, epochs): the slowest other hidden layer
    log_ratio = (others / v[:, :, 0]).log10()  # > 0 where the first layer is the slowest
    margin = torch.quantile(log_ratio, 1 - MOST_EPOCHS, dim=1)  # per seed
    fraction = (log_ratio > 0).double().mean(dim=1)  # per seed: share of epochs it is slowest
    claim(
        every_seed_claim(
            margin.tolist(),
            low=0.0,
            id=f"N3.{depth}-hidden.first-slowest",
            source=SOURCE,
            statement=f"with {depth} hidden layers the first hidden layer learns slowest "
            f"throughout (at >= {MOST_EPOCHS:.0%} of the {v.shape[1]} epochs): the 1% quantile "
            "over epochs of log10(slowest other layer / first layer) is above 0",
            published="always slower",
            details={"share_of_epochs_first_slowest": fraction.tolist()},
            changed=SEEDS_CHANGE + "; 2026-12-07: the same criterion measured as a margin, the "
            "1% quantile of a log ratio (was: the share of epochs, which gave no flip estimate)",
        )
    )


def test_two_hidden_layers_drop_quickly_then_rebound(speeds, claim):
    v = speeds[2]  # (seeds, epochs, 2)
    start, low, end = v[:, 0], v[:, 1:].min(dim=1).values, v[:, -1]
    # per seed: how many halvings the drop and the rebound span, the smaller, both layers
    margin = torch.minimum((start / low).log2(), (end / low).log2()).min(dim=1).values
    claim(
        every_seed_claim(
            margin.tolist(),
            low=1.0,
            id="N3.2-hidden.drop-and-rebound",
            source=SOURCE,
            statement="with 2 hidden layers both speeds drop quickly (to half or less), then "
            "rebound (to twice the minimum or more); measured in factors of 2",
            published="drop, then rebound",
            details={
                "start": start.tolist(),
                "min": low.tolist(),
                "argmin_epoch": (v[:, 1:].argmin(dim=1) + 1).tolist(),
                "end": end.tolist(),
            },
            changed="2026-11-29: the same criterion, now measured as a margin in factors of "
            "2 (was: a pass/fail per seed); " + SEEDS_CHANGE,
        )
    )


def test_with_four_hidden_layers_the_first_learns_roughly_100x_slower(speeds, claim):
    v = speeds[4]
    ratio = (v[:, :, -1] / v[:, :, 0]).median(dim=1).values  # per seed, median over epochs
    claim(
        equivalence_claim(
            ratio.log10().tolist(),
            target=2.0,
            margin=math.log10(2),
            id="N3.4-hidden.100x-slower",
            source=SOURCE,
            statement="with 4 hidden layers the first hidden layer learns roughly 100x slower "
            "than the last during training (within a factor of 2): log10 of the per-seed "
            "median ratio",
            published=2.0,
            details={"median_ratio_per_seed": ratio.tolist()},
            changed="2026-11-29, after a near miss (the lowest of 5 seeds at 50.4 against the "
            "bound 50): was 'every seed's median ratio in [50, 200]' (flip about 0.34; the only "
            "fresh seed set run under it, seeds 1000-1003, had seeds at 47.6 and 48.5, so the "
            "old rule fails there); now TOST on log10, which loosened it (issue 10); "
            + SEEDS_CHANGE,
        )
    )


def test_figure(speeds, figures):
    """Nielsen's three log-axis figures."""
    for depth, v in speeds.items():
        path = learning_speed(
            v,
            figures / f"N3_learning_speed_{depth}_hidden.png",
            f"N3: speed of learning, {depth} hidden layers (geometric mean of {v.shape[0]} seeds)",
            published=BOOK_START[depth],
        )
        assert path.stat().st_size > 0
