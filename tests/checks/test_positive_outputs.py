"""Losses of outputs that must be positive (a Poisson rate, an exponential or Gamma density's
parameters) and whose minimum is not 0: the references are read in the log domain (exp(0) = 1
is the no-preference output), the overfit target is measured from the loss's own floor, and a
badly scaled last layer still fails."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from nnsanity import assert_can_overfit, assert_init_loss, measure_init_loss
from nnsanity.errors import SanityError


class PositiveHead(nn.Module):
    """An MLP whose ``k`` outputs go through softplus: rates or scales, all > 0."""

    def __init__(self, k: int = 1, bias: float = 0.0):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, k))
        with torch.no_grad():
            self.net[-1].bias.fill_(bias)

    def forward(self, x):
        return F.softplus(self.net(x)).squeeze(-1) + 1e-3


def _data(kind: str):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 8, generator=g)
    if kind == "counts":
        return x, torch.poisson(torch.exp(0.5 * x[:, 0]), generator=g)
    return x, torch.exp(x[:, 0]) * (0.5 + torch.rand(32, generator=g))


def poisson(rate, y):  # log(0) and log of a negative rate: not finite at zero-centred outputs
    return F.poisson_nll_loss(rate, y, log_input=False, eps=0.0)


def poisson_eps(rate, y):  # torch's default eps: finite at 0, NaN at a negative rate
    return F.poisson_nll_loss(rate, y, log_input=False)


def exponential(rate, y):  # minimum 1 + mean(log y) at rate 1/y, not 0
    return -torch.distributions.Exponential(rate).log_prob(y).mean()


def gamma(params, y):
    return -torch.distributions.Gamma(params[:, 0], params[:, 1]).log_prob(y).mean()


CASES = {
    "poisson": (PositiveHead, "counts", poisson),
    "poisson_eps": (PositiveHead, "counts", poisson_eps),
    "exponential": (PositiveHead, "positive", exponential),
    "gamma": (lambda **kw: PositiveHead(k=2, **kw), "positive", gamma),
}


@pytest.mark.parametrize("name", list(CASES))
def test_a_healthy_positive_head_passes_init_loss_with_references_in_the_log_domain(name):
    build, data, loss_fn = CASES[name]
    r = assert_init_loss(build(), _data(data), loss_fn)
    assert r.output_kind == "positive"


# (a Gamma with both parameters at 20 has mean 1: a large bias alone is no bad start for it)
@pytest.mark.parametrize("name", ["poisson", "poisson_eps", "exponential"])
def test_a_positive_head_whose_last_layer_starts_far_too_large_fails_init_loss(name):
    build, data, loss_fn = CASES[name]
    with pytest.raises(SanityError, match="Loss at initialisation is too high"):
        assert_init_loss(build(bias=20.0), _data(data), loss_fn)


def test_an_exponential_density_overfits_to_its_own_floor_not_to_zero():
    r = assert_can_overfit(PositiveHead(), _data("positive"), exponential)
    assert r.floor is not None and r.floor > 0 and r.target > r.floor


def test_a_positive_output_with_a_loss_finite_at_zero_keeps_the_zero_reference():
    x, y = _data("positive")
    r = measure_init_loss(PositiveHead(), (x, y), F.mse_loss)  # softplus regression, MSE
    assert r.output_kind == "logits"
