"""Reproducibility: a seeded training run repeats bit for bit; unseeded randomness is caught."""

from __future__ import annotations

import dataclasses
import itertools
import os
import random

import numpy as np
import pytest
import torch
import zoo
from state_oracle import assert_same, snapshot
from torch import nn
from torch.nn import functional as F

from nnsanity import assert_reproducible, measure_reproducibility, seeded
from nnsanity.errors import SanityError

# --- a short training run, healthy and with planted bugs ----------------------------------------


def train(model: nn.Module, steps: int = 8) -> dict:
    """Adam on random minibatches of a fixed data set; returns everything a run produces."""
    x, y = zoo.classification_batch(64)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, 64, (16,))
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return {"model": model, "optimizer": opt, "losses": losses}


def seeded_mlp() -> nn.Module:
    """zoo.mlp seeds itself; draw its seed from the global RNG so the outer seed decides it."""
    return zoo.mlp(seed=int(torch.randint(0, 2**31, ())))


class EntropyNoise(nn.Module):
    """Gaussian noise from a generator seeded by the OS, not by torch.manual_seed."""

    def __init__(self):
        super().__init__()
        self.generator = torch.Generator()
        self.generator.seed()

    def forward(self, x):
        return x + 0.1 * torch.randn(x.shape, generator=self.generator)


class NumpyNoise(nn.Module):
    """Noise from numpy's default_rng() created without a seed."""

    def forward(self, x):
        noise = np.random.default_rng().normal(size=tuple(x.shape)).astype(np.float32)
        return x + 0.1 * torch.from_numpy(noise)


def with_noise(noise: nn.Module) -> nn.Module:
    model = seeded_mlp()
    return nn.Sequential(model[0], noise, *model[1:])


# --- bit-identical runs ---------------------------------------------------------------------------


def test_a_short_training_run_of_a_zoo_mlp_is_bit_identical_on_cpu():
    result = assert_reproducible(lambda: train(seeded_mlp()))
    assert result.passed and result.n_differences == 0 and result.same_under_other_seed is False


def test_dropout_and_python_and_numpy_randomness_are_reproducible_when_seeded():
    def run():
        model = nn.Sequential(seeded_mlp(), nn.Dropout(0.5))
        shuffle = random.sample(range(10), 10)
        return {
            "out": model(zoo.classification_batch()[0]),
            "order": shuffle,
            "np": np.random.rand(3),
        }

    assert_reproducible(run)


def test_a_function_that_draws_no_random_numbers_passes_and_says_so():
    # the forward pass of a model without dropout: no seed can change it (0.1 failed it with
    # "fn ignores the seed")
    model, (x, _) = seeded_mlp(), zoo.classification_batch()
    result = assert_reproducible(lambda: model(x).detach())
    assert result.draws_randomness is False and result.same_under_other_seed is None


def test_objects_inside_a_result_are_compared_by_their_attributes():
    class Cache:  # a key/value cache inside a ModelOutput, as transformers returns
        def __init__(self, keys):
            self.keys, self.device = keys, torch.device("cpu")

    assert assert_reproducible(lambda: {"logits": torch.randn(3), "cache": Cache([torch.randn(2)])})
    result = measure_reproducibility(lambda: {"cache": Cache([torch.randn(2), torch.rand(1)])})
    assert result.passed
    leaky = iter(range(10))
    result = measure_reproducibility(lambda: {"cache": Cache([torch.tensor(float(next(leaky)))])})
    assert result.differences == ("result['cache'].keys[0]: 0.0 vs 1.0",)


def test_differences_in_a_large_tensor_are_counted_without_listing_every_index():
    big = torch.zeros(11_000_000)
    calls = iter([big, big + 1])
    result = measure_reproducibility(lambda: next(calls), check_different=False)
    assert result.differences == ("result[0]: 0.0 vs 1.0 (11000000 of 11000000 elements differ)",)


def test_fails_on_noise_from_a_generator_seeded_by_the_os():
    with pytest.raises(
        SanityError, match=r"(?s)Two runs under seed 0 differ at .*\n  result\['model'\]"
    ):
        assert_reproducible(lambda: train(with_noise(EntropyNoise())))


def test_fails_on_noise_from_numpys_unseeded_default_rng():
    with pytest.raises(SanityError, match=r"(?s)Not reproducible!.*1\. unseeded randomness"):
        assert_reproducible(lambda: train(with_noise(NumpyNoise())))


def test_fails_on_a_data_order_shuffled_with_os_urandom():
    def run():
        order = random.Random(os.urandom(8)).sample(range(64), 64)
        return zoo.classification_batch(64)[0][order]

    with pytest.raises(SanityError, match=r"  result\[\d+, \d+\]: "):
        assert_reproducible(run)


def test_fails_when_the_model_is_built_outside_fn_and_keeps_training():
    model = seeded_mlp()
    with pytest.raises(SanityError, match=r"(?s)result\['model'\]\['0\.weight'\].*state carried"):
        assert_reproducible(lambda: train(model, steps=2))


def test_fails_when_fn_seeds_itself_and_ignores_the_seed():
    with pytest.raises(
        SanityError,
        match=r"(?s)fn ignores the seed!.*under seed 1: bit-identical.*check_different=False",
    ):
        assert_reproducible(lambda: train(zoo.mlp(), steps=2))
    assert assert_reproducible(lambda: train(zoo.mlp(), steps=2), check_different=False).passed


# --- what counts as the same result -------------------------------------------------------------


def runs_returning(*values):
    """An fn whose calls return the given values in turn (then repeat the last)."""
    it = itertools.chain(values, itertools.repeat(values[-1]))
    return lambda: next(it)


@dataclasses.dataclass
class Summary:
    weights: torch.Tensor
    loss: float


nan = float("nan")


@pytest.mark.parametrize(
    ("first", "second", "message"),
    [
        (
            {"m": {"w": torch.eye(3)}},
            {"m": {"w": torch.eye(3).index_fill(1, torch.tensor([2]), 5)}},
            r"result\['m'\]\['w'\]\[0, 2\]: 0\.0 vs 5\.0 \(3 of 9 elements differ\)",
        ),
        (torch.tensor([1.0, nan]), torch.tensor([nan, 1.0]), r"result\[0\]: 1\.0 vs nan"),
        (torch.tensor([0.0]), torch.tensor([-0.0]), r"result\[0\]: 0\.0 vs -0\.0"),
        (torch.zeros(2), torch.zeros(2, dtype=torch.float64), r"result: dtype torch.float32 vs"),
        (torch.zeros(2), torch.zeros(3), r"result: shape \(2,\) vs \(3,\)"),
        (np.array([1.0, 2.0]), np.array([1.0, 2.5]), r"result\[1\]: 2\.0 vs 2\.5"),
        ([1, (2, 3.0)], [1, (2, 3.5)], r"result\[1\]\[1\]: 3\.0 vs 3\.5"),
        (Summary(torch.ones(2), 0.5), Summary(torch.ones(2), 0.25), r"result\.loss: 0\.5 vs 0\.25"),
        ({"a": 1}, {"b": 1}, r"result: keys \['a'\] vs \['b'\]"),
        ([1, 2], (1, 2), r"result: a list vs a tuple"),
    ],
)
def test_names_the_first_differing_path_and_values(first, second, message):
    with pytest.raises(SanityError, match=message):
        assert_reproducible(runs_returning(first, second), check_different=False)


def test_equal_nan_positions_and_nested_containers_count_as_identical():
    value = {"t": torch.tensor([nan, 1.0]), "a": np.array([nan]), "f": nan, "l": [None, "x", 3]}
    assert assert_reproducible(lambda: value, check_different=False).passed


def test_modules_are_compared_by_their_state_dicts_at_return_time():
    model = zoo.mlp()

    def nudge():  # the same object each call, changed each call: the snapshot must catch it
        with torch.no_grad():
            model[0].bias += 1
        return model

    with pytest.raises(SanityError, match=r"result\['0\.bias'\]\[0\]"):
        assert_reproducible(nudge, check_different=False)


def test_deterministic_turns_on_deterministic_algorithms_only_during_the_runs():
    seen = []
    assert_reproducible(
        lambda: seen.append(torch.are_deterministic_algorithms_enabled()) or 0,
        deterministic=True,
        check_different=False,
    )
    assert seen == [True, True] and not torch.are_deterministic_algorithms_enabled()


# --- seeding and side effects ---------------------------------------------------------------------


def test_seeded_takes_every_seed_torch_takes_even_beyond_numpys_32_bits():
    big = 2**64 - 1
    with seeded(big):
        a = (torch.rand(2), np.random.rand(2), random.random())
    with seeded(big):
        b = (torch.rand(2), np.random.rand(2), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_seeded_queues_no_seed_for_cuda_where_cuda_is_not_available():
    if torch.cuda.is_available():
        pytest.skip("with CUDA available seeded() initialises and seeds it, then restores it")
    torch.manual_seed(1234)
    queued = list(torch.cuda._lazy_seed_tracker.get_calls())
    with seeded(5):
        pass
    assert torch.cuda._lazy_seed_tracker.get_calls() == queued


def test_seeded_seeds_torch_numpy_and_random_and_restores_their_states():
    before = (torch.get_rng_state(), np.random.get_state(), random.getstate())
    with seeded(3) as seed:
        drawn = (torch.rand(2), np.random.rand(2), random.random())
    assert seed == 3
    assert torch.equal(before[0], torch.get_rng_state()) and before[2] == random.getstate()
    assert np.array_equal(before[1][1], np.random.get_state()[1])
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    assert torch.equal(drawn[0], torch.rand(2)) and np.array_equal(drawn[1], np.random.rand(2))
    assert drawn[2] == random.random()
    torch.set_rng_state(before[0]), np.random.set_state(before[1]), random.setstate(before[2])


def test_assert_reproducible_leaves_every_rng_state_as_it_found_it():
    torch.manual_seed(123)
    before = snapshot()
    assert_reproducible(lambda: train(seeded_mlp(), steps=2))
    assert_same(before, snapshot())


@pytest.mark.parametrize(
    ("fn", "kwargs", "error", "match"),
    [
        (42, {}, TypeError, "fn must be a callable"),
        (lambda seed: seed, {}, TypeError, "callable with no arguments"),
        (lambda: 0, {"seed": -1}, ValueError, r"outside \[0, 2\*\*64\)"),
        (lambda: 0, {"seed": 2**64}, ValueError, r"outside \[0, 2\*\*64\)"),
        (lambda: None, {}, TypeError, r"fn returned nothing comparable \(None\)"),
        (lambda: 0, {"seed": 1.0}, TypeError, "seed must be an int"),
        (lambda: 0, {"other_seed": 0}, ValueError, "other_seed must differ"),
        (lambda: 0, {"deterministic": "yes"}, TypeError, "deterministic must be a bool"),
        (lambda: object(), {}, TypeError, "fn returned a value of type object at result"),
    ],
)
def test_rejects_bad_arguments(fn, kwargs, error, match):
    with pytest.raises(error, match=match):
        measure_reproducibility(fn, **kwargs)
