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

from nnsanity.repro.claims import every_seed_claim
from nnsanity.repro.network2 import gradient_descent_speeds
from nnsanity.repro.plots import learning_speed

SOURCE = "Nielsen, NNDL ch. 5, 'The vanishing gradient problem' (generate_gradient.py)"
ABOUT_100 = (50.0, 200.0)
MOST_EPOCHS = 0.99


@dataclasses.dataclass(frozen=True)
class Budget:
    seeds: int = 5
    epochs: int = 500
    images: int = 1000
    eta: float = 0.1
    lmbda: float = 5.0
    hidden: int = 30


FULL = Budget()
SMOKE = dataclasses.replace(FULL, seeds=3)


@pytest.fixture(scope="module")
def speeds(budget, seeds, nnsanity_mnist, nnsanity_device, nnsanity_progress):
    """hidden layers -> (seeds, epochs, hidden layers) speeds of learning."""
    b = budget
    x, y = nnsanity_mnist.train_x[: b.images], nnsanity_mnist.train_y[: b.images]
    out = {}
    for depth in (2, 3, 4):
        out[depth] = gradient_descent_speeds(
            (784, *[b.hidden] * depth, 10),
            x,
            y,
            seeds=seeds(b.seeds),
            epochs=b.epochs,
            eta=b.eta,
            lmbda=b.lmbda,
            device=nnsanity_device,
            progress=lambda done, total, d=depth: nnsanity_progress(
                f"N3 {d} hidden layers", done * b.seeds, total * b.seeds
            ),
        ).cpu()
    return out


@pytest.mark.parametrize("depth", [2, 3, 4])
def test_the_first_hidden_layer_is_always_the_slowest(depth, speeds, claim):
    v = speeds[depth]
    slowest = v[:, :, 0] < v[:, :, -1] if depth == 2 else v.argmin(dim=2) == 0
    fraction = slowest.double().mean(dim=1)  # per seed: share of epochs it is slowest
    claim(
        every_seed_claim(
            (fraction >= MOST_EPOCHS).tolist(),
            fraction.tolist(),
            id=f"N3.{depth}-hidden.first-slowest",
            source=SOURCE,
            statement=f"with {depth} hidden layers the first hidden layer learns slowest "
            "throughout",
            published="always slower",
            statistic=f"per seed, fraction of the {v.shape[1]} epochs where the first hidden "
            f"layer is slowest; reproduced if >= {MOST_EPOCHS} for every seed",
        )
    )


def test_two_hidden_layers_drop_quickly_then_rebound(speeds, claim):
    v = speeds[2]  # (seeds, epochs, 2)
    start, low, end = v[:, 0], v[:, 1:].min(dim=1).values, v[:, -1]
    drop = (low <= start / 2).all(dim=1)
    rebound = (end >= 2 * low).all(dim=1)
    claim(
        every_seed_claim(
            (drop & rebound).tolist(),
            (end / low).min(dim=1).values.tolist(),
            id="N3.2-hidden.drop-and-rebound",
            source=SOURCE,
            statement="with 2 hidden layers both speeds drop quickly, then rebound",
            published="drop, then rebound",
            statistic="per seed: min after epoch 0 <= start/2 and end >= 2 x min, both layers; "
            "measured = the smaller end/min ratio of the two layers",
            details={
                "start": start.tolist(),
                "min": low.tolist(),
                "argmin_epoch": (v[:, 1:].argmin(dim=1) + 1).tolist(),
                "end": end.tolist(),
            },
        )
    )


def test_with_four_hidden_layers_the_first_learns_roughly_100x_slower(speeds, claim):
    v = speeds[4]
    ratio = (v[:, :, -1] / v[:, :, 0]).median(dim=1).values  # per seed, median over epochs
    claim(
        every_seed_claim(
            ((ratio >= ABOUT_100[0]) & (ratio <= ABOUT_100[1])).tolist(),
            ratio.tolist(),
            id="N3.4-hidden.100x-slower",
            source=SOURCE,
            statement="with 4 hidden layers the first hidden layer learns roughly 100x slower "
            "than the last during training",
            published=100.0,
            statistic="per seed, median over epochs of speed(4th)/speed(1st); reproduced if "
            "every seed lies in [50, 200]",
            interval=ABOUT_100,
        )
    )


def test_figure(speeds, figures):
    """Nielsen's three log-axis figures."""
    for depth, v in speeds.items():
        path = learning_speed(
            v,
            figures / f"N3_learning_speed_{depth}_hidden.png",
            f"N3: speed of learning, {depth} hidden layers (geometric mean of {v.shape[0]} seeds)",
        )
        assert path.stat().st_size > 0
