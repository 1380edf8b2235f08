"""The batched population trainer is network2 trained K times: each model gets what the plain
one-model loop gives it, to float rounding; plus network2's init, decay and data-order rules."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from nnsanity.repro.network2 import (
    Network2,
    Network2Config,
    bias_gradient_norms,
    gradient_descent_speeds,
    init_parameters,
    network2_cost,
    order_generator,
    train_single,
)
from nnsanity.repro.population import grid, train_population

DEPTHS = [(784, 30, 10), (784, 30, 30, 10), (784, 30, 30, 30, 10), (784, 30, 30, 30, 30, 10)]
pytestmark = pytest.mark.usefixtures("one_thread")

TIGHT = {"rtol": 1e-10, "atol": 1e-12}  # float64; measured differences are at most 1e-14


def synthetic(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST-shaped data with a learnable rule: each class is a fixed template plus noise,
    quantised like MNIST (uint8 / 256)."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.rand(10, 784, generator=torch.Generator().manual_seed(1234))
    y = torch.randint(0, 10, (n,), generator=g)
    pixels = 0.5 * templates[y] + 0.5 * torch.rand(n, 784, generator=g)
    return (pixels * 256).floor().clamp(max=255) / 256, y


TRAIN = synthetic(305, seed=1)  # 305 = 30 batches of 10 and a last batch of 5
VALID = synthetic(200, seed=2)
HYPER = {"eta": 0.5, "lmbda": 5.0, "eval_x": VALID[0], "eval_y": VALID[1]}


def assert_same_model(single, pop_model) -> None:
    for a, b in zip(
        single.weights + single.biases, pop_model.weights + pop_model.biases, strict=True
    ):
        assert_close(b, a, **TIGHT)
    assert torch.equal(pop_model.correct, single.correct)
    assert_close(pop_model.evaluation_cost, single.evaluation_cost, **TIGHT)


def test_population_gives_each_model_what_training_it_alone_gives():
    configs = [*grid(DEPTHS, [0, 1]), Network2Config((784, 30, 30, 10), 7, "large")]
    pop = train_population(
        configs, *TRAIN, epochs=2, monitor_training_cost=True, dtype=torch.float64, **HYPER
    )
    assert pop.correct.shape == (len(configs), 2)
    for k, config in enumerate(configs):
        single = train_single(
            config, *TRAIN, epochs=2, monitor_training_cost=True, dtype=torch.float64, **HYPER
        )
        assert_same_model(single, pop.model(k))
        assert_close(pop.training_cost[k], single.training_cost, **TIGHT)
    assert pop.accuracy[0].max() > 0.25  # the shallow model left chance (0.1) behind


@pytest.mark.parametrize("width", [12, 70])  # padded to 16 in the first layer; not padded
def test_population_matches_the_plain_loop_at_other_hidden_widths(width):
    configs = grid([(784, width, 10), (784, width, width, 10)], [0])
    pop = train_population(configs, *TRAIN, epochs=1, dtype=torch.float64, **HYPER)
    for k, config in enumerate(configs):
        single = train_single(config, *TRAIN, epochs=1, dtype=torch.float64, **HYPER)
        assert_same_model(single, pop.model(k))


@pytest.mark.parametrize("depth", [0, 1])  # a population of one shallow model has no stages
def test_a_models_result_does_not_depend_on_the_population_around_it(depth):
    config = Network2Config(DEPTHS[depth], 3)
    alone = train_population([config], *TRAIN, epochs=1, dtype=torch.float64, **HYPER)
    crowd = [
        Network2Config(DEPTHS[0], 5),
        Network2Config(DEPTHS[3], 9),
        config,
        Network2Config(DEPTHS[2], 3),
    ]
    among = train_population(crowd, *TRAIN, epochs=1, dtype=torch.float64, **HYPER)
    assert_same_model(alone.model(0), among.model(2))
    single = train_single(config, *TRAIN, epochs=1, dtype=torch.float64, **HYPER)
    assert_same_model(single, alone.model(0))


def test_each_models_data_order_differs_and_depends_only_on_its_seed():
    first = [torch.randperm(100, generator=order_generator(s)) for s in range(5)]
    again = [torch.randperm(100, generator=order_generator(s)) for s in range(5)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert len({tuple(p.tolist()) for p in first}) == 5
    # the init stream is not the order stream: seed s's order is no other seed's init draw
    g = torch.Generator().manual_seed(0)
    assert not torch.equal(torch.randperm(100, generator=g), first[0])


def test_default_init_has_network2_statistics():
    weights, biases = init_parameters(
        Network2Config((784, 200, 200, 10), seed=0), dtype=torch.float64
    )
    for w in weights:
        n_in = w.shape[1]
        assert abs(float(w.mean())) < 4 / math.sqrt(w.numel() * n_in)
        assert float(w.std() * math.sqrt(n_in)) == pytest.approx(1.0, abs=5 / math.sqrt(w.numel()))
    allb = torch.cat(biases)
    assert float(allb.std()) == pytest.approx(1.0, abs=0.1)
    large, _ = init_parameters(Network2Config((784, 200, 10), seed=0, init="large"))
    assert float(large[0].std()) == pytest.approx(1.0, abs=0.01)


def test_init_is_the_same_numbers_in_float32_and_float64_and_shared_across_depths():
    w64, b64 = init_parameters(Network2Config(DEPTHS[0], 4), dtype=torch.float64)
    w32, _ = init_parameters(Network2Config(DEPTHS[3], 4), dtype=torch.float32)
    assert torch.equal(w32[0], w64[0].float())  # same seed: same first layer at every depth
    net = Network2(Network2Config(DEPTHS[0], 4), dtype=torch.float64)
    assert torch.equal(net.layers[0].weight, w64[0]) and torch.equal(net.layers[1].bias, b64[1])


@pytest.mark.parametrize("trainer", ["population", "single"])
def test_biases_get_no_weight_decay_and_weights_get_one_minus_eta_lambda_over_n(trainer):
    x, y = TRAIN[0][:10], TRAIN[1][:10]  # n = m = 10: one step from the init
    config = Network2Config(DEPTHS[2], 2)
    runs = {}
    for lmbda in (0.0, 1.0):
        kw = {"epochs": 1, "eta": 0.5, "lmbda": lmbda, "dtype": torch.float64}
        runs[lmbda] = (
            train_population([config], x, y, **kw).model(0)
            if trainer == "population"
            else train_single(config, x, y, **kw)
        )
    w0, _ = init_parameters(config, dtype=torch.float64)
    for b0, b1 in zip(runs[0.0].biases, runs[1.0].biases):
        assert_close(b1, b0, **TIGHT)
    for w_init, wa, wb in zip(w0, runs[0.0].weights, runs[1.0].weights):
        assert_close(wb - wa, -(0.5 * 1.0 / 10) * w_init, **TIGHT)


def test_population_learns_in_float32_and_reports_progress():
    x, y = synthetic(1000, seed=3)
    calls = []
    pop = train_population(
        grid(DEPTHS[:2], [0, 1]),
        x,
        y,
        epochs=2,
        eta=0.5,
        lmbda=1.0,
        eval_x=VALID[0],
        eval_y=VALID[1],
        progress=lambda done, total: calls.append((done, total)),
    )
    assert calls == [(4, 8), (8, 8)]
    assert pop.final_accuracy.min() > 0.9
    assert (pop.best_accuracy >= pop.final_accuracy).all()
    assert pop.best_epoch.shape == (4,) and pop.weights[0][0].dtype == torch.float32


def test_float32_population_stays_close_to_the_float64_reference():
    config = Network2Config(DEPTHS[1], 0)
    pop = train_population([config], *TRAIN, epochs=1, **HYPER)
    ref = train_single(config, *TRAIN, epochs=1, dtype=torch.float64, **HYPER)
    assert_close(pop.weights[0][0].double(), ref.weights[0], rtol=0, atol=1e-4)


def _reference_bias_norms(net, x, y) -> torch.Tensor:
    cost = network2_cost(net(x), y)
    grads = torch.autograd.grad(cost, [layer.bias for layer in net.layers[:-1]])
    return torch.stack([g.norm() for g in grads])


def test_bias_gradient_norms_match_autograd_on_each_fresh_network():
    x, y = TRAIN[0][:100].double(), TRAIN[1][:100]
    norms = bias_gradient_norms(DEPTHS[3], x, y, seeds=[0, 1, 2])
    assert norms.shape == (3, 4)
    for s in range(3):
        net = Network2(Network2Config(DEPTHS[3], s), dtype=torch.float64)
        assert_close(norms[s], _reference_bias_norms(net, x, y), **TIGHT)


def test_gradient_descent_speeds_record_before_each_full_batch_step():
    x, y = TRAIN[0][:100].double(), TRAIN[1][:100]
    speeds = gradient_descent_speeds(DEPTHS[1], x, y, seeds=[0, 1], epochs=2, eta=0.1, lmbda=5.0)
    assert speeds.shape == (2, 2, 2)
    assert_close(speeds[:, 0], bias_gradient_norms(DEPTHS[1], x, y, seeds=[0, 1]), **TIGHT)
    # one full-batch network2 step (m = n) with the plain trainer, then the same measurement
    one = train_single(
        Network2Config(DEPTHS[1], 1),
        x,
        y,
        epochs=1,
        eta=0.1,
        lmbda=5.0,
        mini_batch_size=len(x),
        dtype=torch.float64,
    )
    assert_close(speeds[1, 1], _reference_bias_norms(one.network(), x, y), **TIGHT)


@pytest.mark.parametrize(
    ("configs", "match"),
    [
        ([Network2Config((784, 30, 10)), Network2Config((784, 20, 10))], "one hidden width"),
        ([Network2Config((784, 30, 20, 10))], "one hidden width"),
        ([Network2Config((784, 10))], "at least one hidden layer"),
        ([Network2Config((784, 30, 10)), Network2Config((784, 30, 5))], "output sizes"),
        ([Network2Config((100, 30, 10))], r"training x must be floats of shape \(N, 100\)"),
    ],
)
def test_bad_sizes_raise_value_error(configs, match):
    with pytest.raises(ValueError, match=match):
        train_population(configs, *TRAIN, epochs=1, eta=0.1)


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: Network2Config((784,)), ValueError, "input and an output"),
        (lambda: Network2Config((784, 0, 10)), ValueError, ">= 1"),
        (lambda: Network2Config("784"), TypeError, "sequence of ints"),
        (lambda: Network2Config((784, 30, 10), init="xavier"), ValueError, "init must be"),
        (lambda: Network2Config((784, 30, 10), seed=-1), ValueError, "seed"),
        (lambda: train_population([], *TRAIN, epochs=1, eta=0.1), TypeError, "non-empty"),
        (
            lambda: train_population(Network2Config(DEPTHS[0]), *TRAIN, epochs=1, eta=0.1),
            TypeError,
            "sequence of Network2Config",
        ),
        (
            lambda: train_population(
                grid(DEPTHS[:1], [0]), TRAIN[0], TRAIN[1] + 10, epochs=1, eta=0.1
            ),
            ValueError,
            "labels must lie",
        ),
        (
            lambda: train_population(
                grid(DEPTHS[:1], [0]), *TRAIN, epochs=1, eta=0.1, eval_x=VALID[0]
            ),
            ValueError,
            "both eval_x and eval_y",
        ),
        (
            lambda: train_population(
                grid(DEPTHS[:1], [0]), *TRAIN, epochs=1, eta=0.1, mini_batch_size=0
            ),
            ValueError,
            "mini_batch_size",
        ),
        (
            lambda: train_population(
                grid(DEPTHS[:1], [0]), *TRAIN, epochs=1, eta=0.1, dtype=torch.float16
            ),
            ValueError,
            "dtype",
        ),
        (
            lambda: train_single(
                Network2Config(DEPTHS[0]), TRAIN[0], TRAIN[1].int(), epochs=1, eta=0.1
            ),
            ValueError,
            "int64",
        ),
        (lambda: bias_gradient_norms(DEPTHS[0], *TRAIN, seeds=[]), ValueError, "seeds"),
    ],
)
def test_bad_arguments_raise_before_any_work(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_a_training_set_smaller_than_one_mini_batch_is_one_short_step_per_epoch():
    x, y = TRAIN[0][:7], TRAIN[1][:7]
    config = Network2Config(DEPTHS[1], 1)
    pop = train_population([config], x, y, epochs=2, eta=0.3, dtype=torch.float64)
    single = train_single(config, x, y, epochs=2, eta=0.3, dtype=torch.float64)
    for a, b in zip(single.weights, pop.weights[0]):
        assert_close(b, a, **TIGHT)


def test_training_draws_nothing_from_the_global_rng():
    state = torch.get_rng_state()
    config = Network2Config(DEPTHS[0], 0)
    train_single(config, *TRAIN, epochs=1, eta=0.1)
    train_population([config], *TRAIN, epochs=1, eta=0.1)
    bias_gradient_norms(DEPTHS[0], *TRAIN, seeds=[0])
    assert torch.equal(torch.get_rng_state(), state)
