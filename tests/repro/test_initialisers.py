"""nnsanity.repro.initialisers: the inits of Glorot & Bengio (2010) and Sutskever et al. (2013)."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

from nnsanity.repro.initialisers import (
    normalised_,
    normalised_variance,
    sparse_,
    standard_,
    standard_variance,
)


@pytest.mark.parametrize("n_in", [1, 3, 784, 1000])
def test_standard_init_has_n_in_times_variance_exactly_one_third(n_in):
    assert Fraction(n_in * standard_variance(n_in)).limit_denominator(1000) == Fraction(1, 3)
    assert math.isclose(n_in * standard_variance(n_in), 1 / 3, rel_tol=1e-15)


@pytest.mark.parametrize(("n_in", "n_out"), [(784, 1000), (1000, 1000), (30, 10)])
def test_normalised_variance_is_two_over_the_sum_of_fans(n_in, n_out):
    assert normalised_variance(n_in, n_out) == 2 / (n_in + n_out)
    # The uniform's bound squared over 3, from the bound itself.
    assert math.isclose(6 / (n_in + n_out) / 3, normalised_variance(n_in, n_out), rel_tol=1e-15)


@pytest.mark.parametrize(
    ("init", "bound"),
    [(standard_, 1 / math.sqrt(784)), (normalised_, math.sqrt(6 / (784 + 300)))],
)
def test_uniform_inits_stay_within_their_bound_and_fill_it(init, bound):
    w = init(torch.empty(300, 784), generator=torch.Generator().manual_seed(0))
    assert float(w.abs().max()) <= bound
    assert float(w.abs().max()) > 0.99 * bound  # 235,200 draws reach the edge


def test_normalised_init_matches_torch_xavier_uniform_bound():
    ours = normalised_(torch.empty(200, 500), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(1)
    theirs = torch.nn.init.xavier_uniform_(torch.empty(200, 500))
    assert math.isclose(float(ours.abs().max()), float(theirs.abs().max()), rel_tol=1e-3)


@pytest.mark.parametrize(("n_out", "n_in"), [(250, 784), (30, 50), (784, 250)])
def test_sparse_init_gives_every_unit_exactly_15_nonzero_incoming_weights(n_out, n_in):
    w = sparse_(torch.empty(n_out, n_in), generator=torch.Generator().manual_seed(0))
    assert ((w != 0).sum(dim=1) == 15).all()


def test_sparse_init_connects_a_unit_with_few_inputs_to_all_of_them():
    w = sparse_(torch.empty(5, 10), generator=torch.Generator().manual_seed(0))
    assert (w != 0).all()


def test_sparse_init_draws_unit_gaussians_and_scale_multiplies_them():
    g = torch.Generator().manual_seed(0)
    w = sparse_(torch.empty(2000, 784, dtype=torch.float64), generator=g)
    values = w[w != 0]
    se = math.sqrt(2 / values.numel())  # sd of a normal sample's variance
    assert abs(float(values.var()) - 1) < 4 * se
    assert abs(float(values.mean())) < 4 / math.sqrt(values.numel())
    scaled = sparse_(
        torch.empty(2000, 784, dtype=torch.float64),
        scale=0.25,
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.equal(scaled, w * 0.25)


def test_sparse_init_chooses_the_connected_inputs_uniformly():
    w = sparse_(torch.empty(4000, 100), generator=torch.Generator().manual_seed(0))
    per_input = (w != 0).sum(dim=0).double()  # expected 4000 * 15/100 = 600 each
    assert abs(float(per_input.mean()) - 600) < 1e-9
    assert float(per_input.std()) < 3 * math.sqrt(600 * 0.85)  # binomial sd ~22.6


@pytest.mark.parametrize("init", [standard_, normalised_, sparse_])
def test_inits_are_reproducible_with_a_generator_and_leave_the_global_rng_alone(init):
    before = torch.get_rng_state()
    a = init(torch.empty(20, 30), generator=torch.Generator().manual_seed(3))
    b = init(torch.empty(20, 30), generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize("init", [standard_, normalised_, sparse_])
def test_inits_fill_in_place_without_recording_autograd_history(init):
    w = torch.nn.Linear(30, 20).weight
    out = init(w)
    assert out is w and w.requires_grad and w.grad_fn is None


@pytest.mark.parametrize("init", [standard_, normalised_, sparse_])
@pytest.mark.parametrize("shape", [(10,), (2, 3, 4), (0, 5)])
def test_inits_reject_weights_that_are_not_linear_matrices(init, shape):
    with pytest.raises(ValueError, match="2-D"):
        init(torch.empty(shape))


def test_inits_reject_non_tensors():
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        standard_([[0.0]])


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_sparse_init_rejects_a_bad_number_of_connections(bad):
    with pytest.raises(ValueError, match="n_nonzero"):
        sparse_(torch.empty(3, 3), bad)
