"""K10-K14: Karpathy's recipe on failing silently, the data, learning-rate decay, regularising
and training longer, on real MNIST with the faithful network2 and the recipe's MLP.

Source: A. Karpathy, "A Recipe for Training Neural Networks" (2019), and the lecture notes:
"neural network training fails silently" (the network still trains, sometimes works);
"become one with the data ... outliers almost always exist"; "don't trust learning rate decay
defaults" (a schedule keyed to epochs of another dataset); "Regularize: get more data ...
decrease model size ... increase the penalty for weight decay"; "train your network for
longer". Real MNIST in network2's split; seeds from --nnsanity-seed.

Measured, reusing N1's runs (reproductions/nielsen/test_n1_depth_vs_accuracy.py: network2
[784,30,10], 30 epochs, eta 0.1, lambda 5, mini-batches of 10, on all 50,000 training images)
and adding, at that setting, the same nets on the first 1,000 and 10,000 training images
(network2's L2 uses n = the training-set size), the 10,000-image nets without L2 (lambda 0), and
[784,100,10] on 10,000 images; each seed shares its init across these arms (network2's seeding),
so comparisons are paired by seed (final epoch; validation accuracy on the 10,000 validation
images; training accuracy on the images trained on).

Criteria (declared 2026-12-07 before the first run of this file; frozen at criteria-v1):
- K10.more-data-1k-to-10k and K10.more-data-10k-to-50k: validation accuracy is higher with the
  larger training set (one-sided paired t-test at 0.05, three outcomes);
- K10.weight-decay-hurts-training: lambda 5 ends with a lower training accuracy than lambda 0
  (10,000 images), and K10.weight-decay-helps-validation: with a higher validation accuracy
  (each a one-sided paired t-test);
- K10.smaller-model: the [784,30,10] net has a smaller generalisation gap (training minus
  validation accuracy) than [784,100,10] on 10,000 images (one-sided paired t-test);
- K3.capacity-lowers-training-error: the [784,100,10] net ends with a higher training accuracy
  than [784,30,10] on the same 10,000 images (one-sided paired t-test; "verify decreasing
  training loss" as capacity grows; added 2026-12-07 after the file's first smoke run, whose
  training accuracies were recorded but not read);
- K12.outliers-exist: some training images are misclassified by every seed's trained N1
  [784,30,10] net (an image no net fits: a label error or an outlier); reproduced when at least
  one is, not reproduced when none is (the count is reported, with the first few);
- K14.train-longer: N1's [784,30,10] nets are more accurate on validation after 30 epochs than
  after 15 (one-sided paired t-test);
- K13.lr-decay-default: torch's StepLR(step_size=30, gamma=0.1), ImageNet's "divide by 10 every
  30 epochs", stepped once per mini-batch as per-iteration loops do, ends a 784-100-10 ReLU MLP
  (SGD 0.1, batches of 64, 2 epochs of the first 10,000 images) at a validation loss at least
  twice that of the same run at a constant rate, every seed;
- K11.fails-silently: with a planted preprocessing bug (20% of the training labels off by one,
  (y + 1) mod 10), the same MLP (Adam 3e-4, 2 epochs of 10,000 images) still "works": every
  seed's validation accuracy is at least 80% (measured: the lowest seed), while it is below the
  correct run's (one-sided paired t-test): reproduced when both hold.

Budgets: FULL as N1's (10 seeds); SMOKE: N1's smoke seeds (5; 3 until 2026-12-07), the same
settings otherwise.

Measured at smoke (2026-12-07, the first runs of this file): with seeds 0-2 weight decay did
not help validation (lambda 5 ended 0.31 points below lambda 0, 90% CI [-0.42, -0.20]), the
30-unit net's gap was larger than the 100-unit net's, not smaller (by 0.41 points, [-0.76,
-0.07]) and train-longer was inconclusive (+0.21, [-0.03, 0.45]); with seeds 0-4 (the smoke
budget since) weight decay is inconclusive (-0.16 points, [-0.36, 0.03]: at 10,000 images
lambda 5 is five times network2's 50,000-image decay per image), the smaller model's gap is
larger by 0.31 points ([-0.51, -0.12]: not reproduced) and train-longer reproduces (+0.25,
[0.12, 0.39]). Marked as known at smoke only; the full budget's verdicts are whatever its 10
seeds give.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch.nn import functional as F

from nnsanity.repro.claims import Claim, Verdict, every_seed_claim, ordering_claim
from nnsanity.repro.network2 import Network2, Network2Config
from nnsanity.repro.parallel import map_processes
from nnsanity.repro.plugin import inconclusive, not_reproduced
from nnsanity.repro.population import train_population
from reproductions._nets import mlp, train_minibatches
from reproductions.nielsen.test_n1_depth_vs_accuracy import n1_runs

SOURCE = "Karpathy, 'A Recipe for Training Neural Networks' (2019)"


@dataclasses.dataclass(frozen=True)
class Budget:
    seeds: int = 10  # as N1's, whose runs are reused
    epochs: int = 30
    eta: float = 0.1
    lmbda: float = 5.0
    small_sets: tuple[int, ...] = (1_000, 10_000)  # training images (N1 has 50,000)
    mlp_train: int = 10_000  # K11, K13: training images of the MLP runs
    mlp_epochs: int = 2
    mlp_seeds: int = 3


FULL = Budget()
SMOKE = dataclasses.replace(FULL, seeds=5, mlp_seeds=2)

MIDDLE = 10_000  # the training set of the weight-decay and model-size arms
LONGER = (15, 30)  # epochs compared by K14
WRONG_SHARE = 0.2  # K11: share of training labels off by one
WORKS = 80.0  # K11: % validation accuracy a buggy run still reaches ("sometimes works")
FAR_WORSE = 2.0  # K13: validation loss of the mis-stepped schedule over the constant rate's
SGD_LR, BATCH = 0.1, 64


pytestmark = pytest.mark.usefixtures("one_thread")


@dataclasses.dataclass(frozen=True)
class Arm:
    validation: list[float]  # per seed: final-epoch validation accuracy, %
    training: list[float]  # per seed: accuracy on the images trained on, %


def network2_arm(sizes, images: int, lmbda: float, b: Budget, run_seeds, data, device, progress):
    x, y = data.train_x[:images], data.train_y[:images]
    result = train_population(
        [Network2Config(sizes, s) for s in run_seeds],
        x,
        y,
        epochs=b.epochs,
        eta=b.eta,
        lmbda=lmbda,
        eval_x=data.validation_x,
        eval_y=data.validation_y,
        device=device,
        progress=lambda done, total: progress(f"K10 {sizes[1]} hidden, {images}", done, total),
        processes=2,
    )
    training = []
    with torch.no_grad():
        for k in range(len(run_seeds)):
            net = Network2.from_parameters(result.weights[k], result.biases[k])
            training.append(float((net(x).argmax(1) == y).double().mean() * 100))
    return Arm((100 * result.final_accuracy).tolist(), training)


@pytest.fixture(scope="module")
def arms(budget, nnsanity_budget, seeds, nnsanity_mnist, nnsanity_device, nnsanity_progress):
    """name -> Arm: N1's 50,000-image nets and the new arms, every one over the same seeds."""
    n1 = n1_runs(nnsanity_budget, seeds, nnsanity_mnist, nnsanity_device, nnsanity_progress)
    args = (budget, n1.seeds, nnsanity_mnist, nnsanity_device, nnsanity_progress)
    out = {"50000": Arm(n1.accuracy[1][:, -1].tolist(), [])}
    for n in budget.small_sets:
        out[str(n)] = network2_arm((784, 30, 10), n, budget.lmbda, *args)
    out["10000, lambda 0"] = network2_arm((784, 30, 10), MIDDLE, 0.0, *args)
    out["10000, 100 hidden"] = network2_arm((784, 100, 10), MIDDLE, budget.lmbda, *args)
    return out


@pytest.mark.parametrize(("small", "large"), [("1000", "10000"), ("10000", "50000")])
def test_more_data_gives_higher_validation_accuracy(small, large, arms, claim):
    claim(
        ordering_claim(
            arms[large].validation,
            arms[small].validation,
            paired=True,
            id=f"K10.more-data-{int(small) // 1000}k-to-{int(large) // 1000}k",
            source=SOURCE + ", 'Regularize: get more data'",
            statement=f"network2 [784,30,10] trained on {large} images is more accurate on "
            f"validation than on {small} (30 epochs, eta 0.1, lambda 5)",
            published="more data is the best regulariser",
            unit=" pts",
        )
    )


def test_weight_decay_lowers_training_accuracy(arms, claim):
    claim(
        ordering_claim(
            arms["10000, lambda 0"].training,
            arms["10000"].training,
            paired=True,
            id="K10.weight-decay-hurts-training",
            source=SOURCE + ", 'Overfit' and 'Regularize: weight decay'",
            statement="L2 (lambda 5) lowers network2's training accuracy against lambda 0 "
            "([784,30,10], 10,000 images)",
            published="regularisation hurts the training loss",
            unit=" pts",
        )
    )


@inconclusive(
    "lambda 5 ends 0.16 points below lambda 0 on 10,000 images, 90% CI [-0.36, 0.03] (seeds 0-4)",
    budget="smoke",
)
def test_weight_decay_raises_validation_accuracy(arms, claim):
    claim(
        ordering_claim(
            arms["10000"].validation,
            arms["10000, lambda 0"].validation,
            paired=True,
            id="K10.weight-decay-helps-validation",
            source=SOURCE + ", 'Overfit' and 'Regularize: weight decay'",
            statement="L2 (lambda 5) raises network2's validation accuracy against lambda 0 "
            "([784,30,10], 10,000 images)",
            published="regularisation helps the validation loss",
            unit=" pts",
        )
    )


@not_reproduced(
    "the 30-unit net's gap is 0.31 points larger than the 100-unit net's (seeds 0-4)",
    budget="smoke",
)
def test_a_smaller_model_has_a_smaller_generalisation_gap(arms, claim):
    def gap(a: Arm) -> list[float]:
        return [t - v for t, v in zip(a.training, a.validation)]

    claim(
        ordering_claim(
            gap(arms["10000, 100 hidden"]),
            gap(arms["10000"]),
            paired=True,
            id="K10.smaller-model",
            source=SOURCE + ", 'Regularize: decrease model size'",
            statement="network2 with 30 hidden units has a smaller generalisation gap "
            "(training minus validation accuracy) than with 100 (10,000 images, lambda 5)",
            published="a smaller model regularises",
            unit=" pts",
            details={
                "validation_30": arms["10000"].validation,
                "validation_100": arms["10000, 100 hidden"].validation,
            },
        )
    )


def test_more_capacity_fits_the_training_set_better(arms, claim):
    claim(
        ordering_claim(
            arms["10000, 100 hidden"].training,
            arms["10000"].training,
            paired=True,
            id="K3.capacity-lowers-training-error",
            source=SOURCE + ", 'Set up the end-to-end training/evaluation skeleton: verify "
            "decreasing training loss'",
            statement="increasing capacity lowers the training error: network2 [784,100,10] "
            "fits its 10,000 training images better than [784,30,10] (training accuracy)",
            published="increase capacity just a bit and the training loss goes down",
            unit=" pts",
        )
    )


def test_some_training_images_no_trained_net_fits(
    nnsanity_budget, seeds, nnsanity_mnist, nnsanity_device, nnsanity_progress, claim
):
    n1 = n1_runs(nnsanity_budget, seeds, nnsanity_mnist, nnsanity_device, nnsanity_progress)
    x, y = nnsanity_mnist.train_x, nnsanity_mnist.train_y
    wrong = torch.ones(len(x), dtype=torch.bool)
    with torch.no_grad():
        for w, b in zip(n1.weights[1], n1.biases[1]):
            wrong &= Network2.from_parameters(w, b)(x).argmax(1) != y
    count = int(wrong.sum())
    first = wrong.nonzero().flatten()[:10].tolist()
    claim(
        Claim(
            id="K12.outliers-exist",
            source=SOURCE + ", 'Become one with the data' (the notes: 'outliers almost always "
            "exist')",
            statement=f"some MNIST training images are misclassified by every one of "
            f"{len(n1.seeds)} trained [784,30,10] nets (label errors or outliers)",
            published="outliers almost always exist",
            measured=[count],
            statistic="count of training images every seed's net misclassifies; reproduced "
            "if at least one, not reproduced if none",
            verdict=Verdict.REPRODUCED if count >= 1 else Verdict.NOT_REPRODUCED,
            estimate=count,
            estimator="images",
            interval=(1, math.inf),
            interval_kind="the count must reach",
            seeds=n1.seeds,
            details={"first_indices": first, "their_labels": y[first].tolist()},
        )
    )


def test_training_longer_helps(
    nnsanity_budget, seeds, nnsanity_mnist, nnsanity_device, nnsanity_progress, claim
):
    n1 = n1_runs(nnsanity_budget, seeds, nnsanity_mnist, nnsanity_device, nnsanity_progress)
    acc = n1.accuracy[1]  # (seeds, epochs)
    short, long = LONGER
    claim(
        ordering_claim(
            acc[:, long - 1].tolist(),
            acc[:, short - 1].tolist(),
            paired=True,
            id="K14.train-longer",
            source=SOURCE + ", 'Squeeze out the juice: train longer'",
            statement=f"N1's [784,30,10] nets are more accurate on validation after {long} "
            f"epochs than after {short}",
            published="leave it training for way longer",
            unit=" pts",
            seeds=n1.seeds,
        )
    )


# -- the MLP claims ------------------------------------------------------------------------------
def mlp_run(job, data, budget: Budget) -> tuple[float, float]:
    """(validation loss, validation accuracy %) of one MLP run: job = (kind, seed)."""
    kind, seed = job
    x, y = data.train_x[: budget.mlp_train], data.train_y[: budget.mlp_train].clone()
    net = mlp(1, seed=seed)
    steps = budget.mlp_epochs * (len(x) // BATCH)
    after_step = None
    if kind in ("step-per-batch", "constant"):
        opt = torch.optim.SGD(net.parameters(), lr=SGD_LR)
        if kind == "step-per-batch":  # the per-iteration loop that calls scheduler.step()
            after_step = torch.optim.lr_scheduler.StepLR(opt, step_size=30, gamma=0.1).step
    else:
        opt = torch.optim.Adam(net.parameters(), lr=3e-4)
        if kind == "wrong-labels":
            g = torch.Generator().manual_seed(seed)
            bad = torch.rand(len(y), generator=g) < WRONG_SHARE
            y[bad] = (y[bad] + 1) % 10  # the planted preprocessing bug
    train_minibatches(net, opt, x, y, steps=steps, batch=BATCH, seed=seed, after_step=after_step)
    with torch.no_grad():
        out = net(data.validation_x)
    loss = float(F.cross_entropy(out, data.validation_y))
    return loss, float((out.argmax(1) == data.validation_y).double().mean() * 100)


@pytest.fixture(scope="module")
def mlp_runs(budget, seeds, nnsanity_mnist, nnsanity_progress) -> dict[tuple, tuple]:
    kinds = ("step-per-batch", "constant", "wrong-labels", "correct")
    jobs = [(k, s) for k in kinds for s in seeds(budget.mlp_seeds)]

    def run(job, tick):
        out = mlp_run(job, nnsanity_mnist, budget)
        tick(1)
        return out

    def progress(done: int) -> None:
        nnsanity_progress("K11, K13 MLP runs", done, len(jobs), "runs")

    return dict(zip(jobs, map_processes(run, jobs, progress=progress)))


def test_an_epoch_schedule_stepped_per_batch_stalls_training(budget, seeds, mlp_runs, claim):
    runs = seeds(budget.mlp_seeds)
    ratio = [mlp_runs["step-per-batch", s][0] / mlp_runs["constant", s][0] for s in runs]
    claim(
        every_seed_claim(
            ratio,
            low=FAR_WORSE,
            id="K13.lr-decay-default",
            source=SOURCE + ", 'Overfit: don't trust learning rate decay defaults'",
            statement="ImageNet's StepLR(30, 0.1) stepped per mini-batch ends an MLP at a "
            "validation loss at least twice the constant rate's (it decays 10x every 30 "
            "batches)",
            published="be very careful with learning rate decay",
            details={
                "loss_step_per_batch": [mlp_runs["step-per-batch", s][0] for s in runs],
                "loss_constant": [mlp_runs["constant", s][0] for s in runs],
            },
        )
    )


def test_a_preprocessing_bug_still_trains_and_sometimes_works(budget, seeds, mlp_runs, claim):
    runs = seeds(budget.mlp_seeds)
    bugged = [mlp_runs["wrong-labels", s][1] for s in runs]
    correct = [mlp_runs["correct", s][1] for s in runs]
    parts = {"id": "", "source": "", "statement": "", "published": None}
    works = every_seed_claim(bugged, low=WORKS, **parts)
    worse = ordering_claim(correct, bugged, paired=True, **parts)
    both = works.verdict is Verdict.REPRODUCED and worse.verdict is Verdict.REPRODUCED
    verdict = Verdict.REPRODUCED if both else Verdict.NOT_REPRODUCED
    if works.verdict is Verdict.REPRODUCED and worse.verdict is Verdict.INCONCLUSIVE:
        verdict = Verdict.INCONCLUSIVE
    flips = [f for f in (works.flip, worse.flip) if f is not None]
    claim(
        Claim(
            id="K11.fails-silently",
            source=SOURCE + ", 'Neural net training fails silently'",
            statement=f"with {WRONG_SHARE:.0%} of the training labels off by one, an MLP still "
            f"trains and works (>= {WORKS:g}% validation accuracy in every seed) while it is "
            "worse than the correct run",
            published="still trains, sometimes works",
            measured=bugged,
            statistic=f"every seed >= {WORKS:g}% (the lowest seed is the estimate) and "
            "correct > bugged by a one-sided paired t-test at 0.05: reproduced if both, "
            "inconclusive if the ordering is, else not reproduced",
            verdict=verdict,
            estimate=min(bugged),
            estimator="lowest seed",
            interval=worse.interval,
            interval_kind="90% CI of the paired drop from the correct run",
            unit="%",
            flip=max(flips) if flips else None,
            details={"correct_%": correct, "drop_mean_pts": worse.estimate},
        )
    )
