"""N1: accuracy vs depth on MNIST: more hidden layers do not keep helping; and what the early
layers of a deep network learn.

Source: Nielsen, "Neural Networks and Deep Learning", ch. 5, "The vanishing gradient problem":
``net.SGD(training_data, 30, 10, 0.1, lmbda=5.0, evaluation_data=validation_data)`` with the
default init gives, on the 10,000 validation images, [784,30,10] 96.48% ("or thereabouts, it'll
vary a bit from run to run"), [784,30,30,10] 96.90%, [784,30,30,30,10] 96.57% and
[784,30,30,30,30,10] 96.53% ("probably not a statistically significant drop"). The lecture notes
(after the chapter's "is this really a problem?"): "the weights in the early layers never change
much from their random initializations" and "with a random initialization, the first layer
throws away lots of information about the input image".

Measured: the faithful network2 (nnsanity.repro.network2; sigmoid everywhere, summed binary
cross-entropy, weights N(0, 1/n_in), biases N(0, 1), SGD eta=0.1 on mini-batches of 10, L2
lambda=5 on the weights with n=50,000, a fresh shuffle per epoch), in float32 where network2.py
used float64 (reproductions/studies/final_epoch.py: float64 changed no accuracy significantly),
30 epochs per seed, every depth and seed in one batched population (nnsanity.repro.population,
tested equal to one-at-a-time training). Seed s shares its data order and its first layers'
init across depths, so depth comparisons are paired by seed. Seeds follow --nnsanity-seed.

Criteria (declared 2026-11-29, before the runs with these settings):
- a published accuracy is ONE run: it reproduces when it lies in the 95% prediction interval of
  one of our runs (final epoch; best epochs are in details), not when it lies outside, and is
  inconclusive when it lies inside an interval wider than ±1 point (the book's depths differ by
  0.04-0.42 points; such an interval cannot tell its number from one a point worse);
- "two beat one" and "the third layer drops" are one-sided paired t-tests at alpha 0.05:
  reproduced, not reproduced (the reverse is significant) or inconclusive;
- "four vs three is not significant" is an equivalence: TOST on the per-seed difference with a
  margin of ±0.2 points (one run's spread at 1-3 hidden layers, 0.1-0.25 points in the
  2026-11-26 run): reproduced when the 90% CI of the mean difference lies inside ±0.2;
- early weights barely move: per seed, the rotation 1 - cos(W, W_init) of the first hidden
  layer's weights against the last hidden layer's, in the 4-hidden-layer net; reproduced when the
  first layer rotates less (one-sided paired t-test); cosines ignore the uniform shrinking by L2;
- a random first layer throws away information: per seed, the validation accuracy of a linear
  (softmax) classifier on the first hidden layer's 30 activations, at init against after
  training the [784,30,10] net (same width, same seed's init); reproduced when the random layer's
  probe is worse (one-sided paired t-test). The 4-hidden net's trained first layer is reported.
Flip probabilities are estimated per claim (nnsanity.repro.claims); 10 seeds keep the
orderings' flips below 5% by the 2026-11-26 spreads (paired differences of 0.4 ± 0.3 points).

Changed after seeing data (disclosed): N1.four-vs-three was "neither direction significant"
(an absence of significance, easier to pass with fewer seeds) until 2026-11-29.

Measured at the full budget (2026-11-30, seeds 0-9, commit 8982f0b): N1.accuracy-4-hidden is
inconclusive (one run's 95% prediction interval [94.70, 97.62] holds 96.53 only by being wider
than ±1 point); N1.four-vs-three is inconclusive (90% CI of the drop [-0.07, 0.63] points
against the margin ±0.2: the mean drop, 0.28 points, is larger than the book's 0.04); and
N1.early-weights-barely-move does not reproduce as measured: by direction, the first hidden
layer's weights end nearly orthogonal to their init (1 - cos 0.95-0.97), further than the last
hidden layer's (0.58-0.70), every seed. The notes' "never change much" may mean size, not
direction; cosines were declared to ignore L2's uniform shrinking.

Budgets: FULL below (10 seeds, about 5 minutes on 2 CPU cores). SMOKE = None: at smoke 4 seeds
decided none of these claims, and the runs alone cost more than the whole smoke budget here.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.nn import functional as F

from nnsanity.repro.claims import equivalence_claim, ordering_claim, single_run_claim
from nnsanity.repro.network2 import Network2Config, init_parameters
from nnsanity.repro.plots import accuracy_by_depth
from nnsanity.repro.plugin import inconclusive, not_reproduced
from nnsanity.repro.population import train_population

SOURCE = "Nielsen, NNDL ch. 5, 'The vanishing gradient problem'"
NOTES = "the lecture notes, after Nielsen ch. 5 ('is this really a problem?')"
PUBLISHED = {1: 96.48, 2: 96.90, 3: 96.57, 4: 96.53}  # % on validation, by hidden layers


@dataclasses.dataclass(frozen=True)
class Budget:
    seeds: int = 10
    epochs: int = 30
    eta: float = 0.1
    lmbda: float = 5.0
    mini_batch_size: int = 10
    hidden: int = 30


FULL = Budget()
SMOKE = None
NOT_AT_SMOKE = "30 epochs x 50,000 images x 4 depths per seed: minutes on 2 CPU cores"

MAX_HALF_WIDTH = 1.0  # points: a wider prediction interval is inconclusive
EQUIVALENCE_MARGIN = 0.2  # points: about one run's spread at 1-3 hidden layers
PROBE_ITERATIONS = 200  # L-BFGS iterations of the linear probe (converged well before)


def sizes(depth: int, hidden: int) -> tuple[int, ...]:
    return (784, *[hidden] * depth, 10)


@dataclasses.dataclass(frozen=True)
class Runs:
    seeds: list[int]
    accuracy: dict[int, torch.Tensor]  # hidden layers -> (seeds, epochs) validation accuracy, %
    weights: dict[int, list[tuple[torch.Tensor, ...]]]  # hidden layers -> per seed, per layer
    biases: dict[int, list[tuple[torch.Tensor, ...]]]
    seconds: float  # wall time of the one population that trained every depth


@pytest.fixture(scope="module")
def runs(budget, seeds, nnsanity_mnist, nnsanity_device, nnsanity_progress) -> Runs:
    """Every depth and seed trained as one batched population."""
    b, run_seeds = budget, seeds(budget.seeds)
    configs = [Network2Config(sizes(d, b.hidden), s) for d in PUBLISHED for s in run_seeds]
    result = train_population(
        configs,
        nnsanity_mnist.train_x,
        nnsanity_mnist.train_y,
        epochs=b.epochs,
        eta=b.eta,
        lmbda=b.lmbda,
        mini_batch_size=b.mini_batch_size,
        eval_x=nnsanity_mnist.validation_x,
        eval_y=nnsanity_mnist.validation_y,
        device=nnsanity_device,
        progress=lambda done, total: nnsanity_progress("N1 depth vs accuracy", done, total),
        processes=2,
    )
    acc = (100 * result.accuracy).reshape(len(PUBLISHED), b.seeds, b.epochs)
    per = len(run_seeds)
    return Runs(
        seeds=run_seeds,
        accuracy={d: acc[i] for i, d in enumerate(PUBLISHED)},
        weights={d: list(result.weights[i * per : (i + 1) * per]) for i, d in enumerate(PUBLISHED)},
        biases={d: list(result.biases[i * per : (i + 1) * per]) for i, d in enumerate(PUBLISHED)},
        seconds=result.seconds,
    )


@pytest.mark.parametrize(
    "depth",
    [
        1,
        2,
        3,
        pytest.param(
            4,
            marks=inconclusive(
                "the 95% prediction interval of one 4-hidden run, [94.70, 97.62], is wider than "
                "±1 point: its runs spread by seed (final epochs 96.16 on average)"
            ),
        ),
    ],
)
def test_published_accuracy_is_a_plausible_single_run(depth, runs, claim):
    acc = runs.accuracy[depth]  # one row per seed
    claim(
        single_run_claim(
            PUBLISHED[depth],
            acc[:, -1].tolist(),  # final-epoch accuracy of each seed
            max_half_width=MAX_HALF_WIDTH,
            id=f"N1.accuracy-{depth}-hidden",
            source=SOURCE,
            statement=f"[784,{','.join(['30'] * depth)},10] reaches {PUBLISHED[depth]}% on "
            "validation after 30 epochs",
            unit="%",
            seeds=runs.seeds,
            details={
                "best_epoch_accuracy": acc.max(dim=1).values.tolist(),
                "best_epoch": (acc.argmax(dim=1) + 1).tolist(),
                "per_epoch_mean": acc.mean(dim=0).tolist(),
                "train_seconds_all_depths": runs.seconds,
            },
        )
    )


def final(runs: Runs, depth: int) -> list[float]:
    return runs.accuracy[depth][:, -1].tolist()  # final-epoch accuracy of each seed


def test_two_hidden_layers_beat_one(runs, claim):
    claim(
        ordering_claim(
            final(runs, 2),
            final(runs, 1),
            paired=True,
            id="N1.two-beat-one",
            source=SOURCE,
            statement="a second hidden layer improves accuracy (96.90 vs 96.48)",
            published="96.90 > 96.48",
            unit=" pts",
            seeds=runs.seeds,
        )
    )


def test_a_third_hidden_layer_does_not_help(runs, claim):
    claim(
        ordering_claim(
            final(runs, 2),
            final(runs, 3),
            paired=True,
            id="N1.third-layer-drops",
            source=SOURCE,
            statement="accuracy drops from two to three hidden layers (96.90 to 96.57)",
            published="96.90 > 96.57",
            unit=" pts",
            seeds=runs.seeds,
        )
    )


@inconclusive(
    "the 90% CI of the per-seed drop from three to four hidden layers, [-0.07, 0.63] points, "
    "is neither inside ±0.2 nor outside it (10 seeds)"
)
def test_four_hidden_layers_are_as_accurate_as_three(runs, claim):
    diff = [a - b for a, b in zip(final(runs, 3), final(runs, 4))]  # per seed, 3 minus 4
    claim(
        equivalence_claim(
            diff,
            target=0.0,
            margin=EQUIVALENCE_MARGIN,
            id="N1.four-vs-three-not-significant",
            source=SOURCE,
            statement="the drop from three to four hidden layers (96.57 to 96.53) is not "
            "significant: equivalent within ±0.2 points",
            published="not significant (0.04 pts)",
            unit=" pts",
            seeds=runs.seeds,
            changed="2026-11-29: was 'neither one-sided paired test significant' (an absence "
            "of significance, which fewer seeds make easier to pass); now a TOST with a "
            "±0.2-point margin (issue 10)",
        )
    )


def rotation(w: torch.Tensor, w0: torch.Tensor) -> float:
    """1 - cos(w, w0) of two weight matrices flattened: 0 when w only shrank or grew."""
    return float(1 - F.cosine_similarity(w.flatten().double(), w0.flatten().double(), dim=0))


@not_reproduced(
    "the first hidden layer rotates more than the last: 1 - cos 0.95-0.97 against 0.58-0.70 "
    "(10 seeds, 4 hidden layers)"
)
def test_the_first_hidden_layers_weights_move_less_than_the_last_hidden_layers(runs, claim):
    deep = len(PUBLISHED)  # the 4-hidden-layer nets
    first, last = [], []  # per seed
    for s, weights in zip(runs.seeds, runs.weights[deep]):
        init, _ = init_parameters(Network2Config(sizes(deep, 30), s))
        first.append(rotation(weights[0], init[0]))
        last.append(rotation(weights[deep - 1], init[deep - 1]))  # into the last hidden layer
    claim(
        ordering_claim(
            last,
            first,
            paired=True,
            id="N1.early-weights-barely-move",
            source=NOTES,
            statement="in [784,30,30,30,30,10] the first hidden layer's weights stay closer to "
            "their random initialisation than the last hidden layer's (rotation 1 - cos)",
            published="early weights never change much",
            seeds=runs.seeds,
            details={"rotation_first": first, "rotation_last": last},
        )
    )


def probe_accuracy(features: tuple[torch.Tensor, torch.Tensor], data) -> float:
    """Validation accuracy (%) of softmax regression on a layer's activations: fit on the
    50,000 training images by L-BFGS (float64), then tested on the 10,000 validation images."""
    w_in, b_in = (t.double() for t in features)
    train = torch.sigmoid(data.train_x.double() @ w_in.T + b_in)  # (50000, 30)
    valid = torch.sigmoid(data.validation_x.double() @ w_in.T + b_in)
    mean, sd = train.mean(0), train.std(0) + 1e-12  # standardised: L-BFGS converges faster
    w = torch.zeros(train.shape[1] + 1, 10, dtype=torch.float64, requires_grad=True)
    x = torch.cat([(train - mean) / sd, torch.ones(len(train), 1, dtype=torch.float64)], 1)
    opt = torch.optim.LBFGS([w], max_iter=PROBE_ITERATIONS, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w, data.train_y)
        loss.backward()
        return loss

    opt.step(closure)
    xv = torch.cat([(valid - mean) / sd, torch.ones(len(valid), 1, dtype=torch.float64)], 1)
    with torch.no_grad():
        return float((xv @ w).argmax(1).eq(data.validation_y).double().mean() * 100)


def test_a_random_first_layer_throws_away_information_a_trained_one_keeps(
    runs, nnsanity_mnist, claim
):
    at_init, trained, deep = [], [], []  # per seed: probe accuracy, %
    for k, s in enumerate(runs.seeds):
        w0, b0 = init_parameters(Network2Config(sizes(1, 30), s))
        at_init.append(probe_accuracy((w0[0], b0[0]), nnsanity_mnist))
        trained.append(
            probe_accuracy((runs.weights[1][k][0], runs.biases[1][k][0]), nnsanity_mnist)
        )
        deep.append(probe_accuracy((runs.weights[4][k][0], runs.biases[4][k][0]), nnsanity_mnist))
    claim(
        ordering_claim(
            trained,
            at_init,
            paired=True,
            id="N1.random-first-layer-loses-information",
            source=NOTES,
            statement="a random first hidden layer keeps less information about the image than "
            "a trained one: a linear probe on its 30 activations classifies worse",
            published="throws away lots of information",
            unit=" pts",
            seeds=runs.seeds,
            details={
                "probe_at_init_%": at_init,
                "probe_trained_1_hidden_%": trained,
                "probe_trained_4_hidden_first_layer_%": deep,
            },
        )
    )


def test_figure(runs, figures):
    """Accuracy per epoch per depth with seed bands."""
    path = accuracy_by_depth(runs.accuracy, PUBLISHED, figures / "N1_accuracy_by_depth.png")
    assert path.stat().st_size > 0
