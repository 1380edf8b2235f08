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
for several seeds at once.

Pass criteria, declared before the runs (per seed, then "reproduced" when every seed agrees):
- first-slower: the first hidden layer's speed is below the last hidden layer's at >= 99% of the
  500 epochs (2 hidden layers), and it is the slowest hidden layer at >= 99% of epochs (3 and 4).
- drop-and-rebound (2 hidden layers): for each layer, the minimum speed after epoch 0 is at most
  half the initial speed (a drop), and the speed at epoch 500 is at least twice that minimum (a
  rebound).
- roughly 100x (4 hidden layers): the median over epochs of last/first lies in [50, 200], a
  factor of 2 around 100, as for N2.

Smoke budget: the faithful 500 epochs with 3 seeds instead of 5 (every-seed criteria are easier to
meet with fewer seeds; the full run is the one quoted in the README).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from nnsanity.repro.claims import Claim, Verdict
from nnsanity.repro.network2 import gradient_descent_speeds

SOURCE = "Nielsen, NNDL ch. 5, 'The vanishing gradient problem' (generate_gradient.py)"
ABOUT_100 = (50.0, 200.0)
MOST_EPOCHS = 0.99


@dataclasses.dataclass(frozen=True)
class Setting:
    seeds: int = 5
    epochs: int = 500
    images: int = 1000
    eta: float = 0.1
    lmbda: float = 5.0
    hidden: int = 30


FULL = Setting()
SMOKE = dataclasses.replace(FULL, seeds=3)


@pytest.fixture(scope="module")
def speeds(nnsanity_budget, nnsanity_mnist, nnsanity_device, nnsanity_progress):
    """hidden layers -> (seeds, epochs, hidden layers) speeds of learning."""
    s = FULL if nnsanity_budget == "full" else SMOKE
    x, y = nnsanity_mnist.train_x[: s.images], nnsanity_mnist.train_y[: s.images]
    out = {}
    for depth in (2, 3, 4):
        out[depth] = gradient_descent_speeds(
            (784, *[s.hidden] * depth, 10),
            x,
            y,
            seeds=range(s.seeds),
            epochs=s.epochs,
            eta=s.eta,
            lmbda=s.lmbda,
            device=nnsanity_device,
            progress=lambda done, total, d=depth: nnsanity_progress(
                f"N3 {d} hidden layers", done * s.seeds, total * s.seeds
            ),
        ).cpu()
    return out


def every_seed(per_seed: torch.Tensor) -> Verdict:
    return Verdict.REPRODUCED if bool(per_seed.all()) else Verdict.NOT_REPRODUCED


@pytest.mark.parametrize("depth", [2, 3, 4])
def test_the_first_hidden_layer_is_always_the_slowest(depth, speeds, nnsanity_claim):
    v = speeds[depth]
    slowest = v[:, :, 0] < v[:, :, -1] if depth == 2 else v.argmin(dim=2) == 0
    fraction = slowest.double().mean(dim=1)  # per seed
    claim = Claim(
        id=f"N3.{depth}-hidden.first-slowest",
        source=SOURCE,
        statement=f"with {depth} hidden layers the first hidden layer learns slowest throughout",
        published="always slower",
        measured=fraction.tolist(),
        statistic=f"per seed, fraction of the {v.shape[1]} epochs where the first hidden layer "
        f"is slowest; reproduced if >= {MOST_EPOCHS} for every seed",
        verdict=every_seed(fraction >= MOST_EPOCHS),
    )
    nnsanity_claim(claim)
    assert claim.verdict is Verdict.REPRODUCED, claim


def test_two_hidden_layers_drop_quickly_then_rebound(speeds, nnsanity_claim):
    v = speeds[2]  # (seeds, epochs, 2)
    start, low, end = v[:, 0], v[:, 1:].min(dim=1).values, v[:, -1]
    drop = (low <= start / 2).all(dim=1)
    rebound = (end >= 2 * low).all(dim=1)
    claim = Claim(
        id="N3.2-hidden.drop-and-rebound",
        source=SOURCE,
        statement="with 2 hidden layers both speeds drop quickly, then rebound",
        published="drop, then rebound",
        measured=(end / low).min(dim=1).values.tolist(),
        statistic="per seed: min after epoch 0 <= start/2 and end >= 2 x min, both layers; "
        "measured = the smaller end/min ratio of the two layers",
        verdict=every_seed(drop & rebound),
        details={
            "start": start.tolist(),
            "min": low.tolist(),
            "argmin_epoch": (v[:, 1:].argmin(dim=1) + 1).tolist(),
            "end": end.tolist(),
        },
    )
    nnsanity_claim(claim)
    assert claim.verdict is Verdict.REPRODUCED, claim


def test_with_four_hidden_layers_the_first_learns_roughly_100x_slower(speeds, nnsanity_claim):
    v = speeds[4]
    ratio = (v[:, :, -1] / v[:, :, 0]).median(dim=1).values  # per seed, median over epochs
    claim = Claim(
        id="N3.4-hidden.100x-slower",
        source=SOURCE,
        statement="with 4 hidden layers the first hidden layer learns roughly 100x slower than "
        "the last during training",
        published=100.0,
        measured=ratio.tolist(),
        statistic="per seed, median over epochs of speed(4th)/speed(1st); reproduced if every "
        "seed lies in [50, 200]",
        verdict=every_seed((ratio >= ABOUT_100[0]) & (ratio <= ABOUT_100[1])),
        interval=ABOUT_100,
    )
    nnsanity_claim(claim)
    assert claim.verdict is Verdict.REPRODUCED, claim


def test_learning_speed_figures(speeds, nnsanity_plots):
    """Nielsen's three log-axis figures (only with --nnsanity-plots)."""
    if nnsanity_plots is None:
        pytest.skip("figures only with --nnsanity-plots")
    from nnsanity.repro.plots import learning_speed

    for depth, v in speeds.items():
        path = learning_speed(
            v,
            nnsanity_plots / f"N3_learning_speed_{depth}_hidden.png",
            f"N3: speed of learning, {depth} hidden layers (geometric mean of {v.shape[0]} seeds)",
        )
        assert path.stat().st_size > 0
