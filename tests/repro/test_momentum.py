"""nnsanity.repro.momentum: eq. (5)'s schedule and the CM / NAG updates, against exact values."""

from __future__ import annotations

import pytest
import torch

from nnsanity.repro.momentum import BLOCK, eq5, momentum_step, sutskever_momentum


def test_first_blocks_of_250_updates_get_0_5_0_75_0_833_0_875_0_9():
    values = [sutskever_momentum(t, 0.99) for t in (0, 250, 500, 750, 1000)]
    assert values == [0.5, 0.75, 1 - 1 / 6, 0.875, 0.9]
    assert sutskever_momentum(249, 0.99) == 0.5 and sutskever_momentum(499, 0.99) == 0.75


def test_closed_form_agrees_with_eq_5_as_printed():
    for t in range(0, 50_000, 13):
        assert abs(sutskever_momentum(t, 0.999) - eq5(t, 0.999)) <= 4 * 2**-53


def test_momentum_is_capped_at_mu_max():
    assert sutskever_momentum(0, 0.3) == 0.3
    assert sutskever_momentum(10**6, 0.99) == 0.99
    assert sutskever_momentum(49 * BLOCK - 1, 0.99) < 0.99 <= sutskever_momentum(49 * BLOCK, 0.995)


def test_momentum_drops_to_0_9_for_the_last_1000_updates():
    total = 20_000
    mu = [sutskever_momentum(t, 0.999, total_updates=total) for t in range(total)]
    assert mu[total - 1001] > 0.99
    assert set(mu[-1000:]) == {0.9}


def test_final_phase_never_raises_a_lower_momentum():
    assert sutskever_momentum(4_999, 0.0, total_updates=5_000) == 0.0
    assert sutskever_momentum(100, 0.99, total_updates=500) == 0.5


@pytest.mark.parametrize(
    ("t", "mu_max", "total", "match"),
    [
        (-1, 0.9, None, "non-negative"),
        (1.0, 0.9, None, "non-negative"),
        (0, 1.0, None, "mu_max"),
        (0, -0.1, None, "mu_max"),
        (10, 0.9, 10, "outside"),
    ],
)
def test_schedule_rejects_bad_arguments(t, mu_max, total, match):
    with pytest.raises(ValueError, match=match):
        sutskever_momentum(t, mu_max, total_updates=total)


def quadratic_grad(a, b):
    return lambda point: [a @ point[0] + b]


def test_zero_momentum_is_plain_gradient_descent():
    a, b = (
        torch.diag(torch.tensor([1.0, 3.0], dtype=torch.float64)),
        torch.ones(2, dtype=torch.float64),
    )
    for nesterov in (False, True):
        theta, v = (
            torch.tensor([1.0, -2.0], dtype=torch.float64),
            torch.zeros(2, dtype=torch.float64),
        )
        expected = theta - 0.1 * (a @ theta + b)
        momentum_step([theta], [v], quadratic_grad(a, b), lr=0.1, mu=0.0, nesterov=nesterov)
        torch.testing.assert_close(theta, expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("nesterov", [False, True])
def test_matches_torch_sgd_with_momentum_on_a_quadratic(nesterov):
    """torch's SGD keeps buf = -v / lr and, with nesterov, the look-ahead theta + mu v."""
    g = torch.Generator().manual_seed(0)
    m = torch.randn(5, 5, generator=g, dtype=torch.float64)
    a, b = (
        m @ m.T / 5 + torch.eye(5, dtype=torch.float64),
        torch.randn(5, generator=g, dtype=torch.float64),
    )
    theta0 = torch.randn(5, generator=g, dtype=torch.float64)
    lr, mu = 0.05, 0.9
    theta, v = theta0.clone(), torch.zeros(5, dtype=torch.float64)
    p = torch.nn.Parameter(theta0.clone())
    opt = torch.optim.SGD([p], lr=lr, momentum=mu, nesterov=nesterov)
    for _ in range(50):
        momentum_step([theta], [v], quadratic_grad(a, b), lr=lr, mu=mu, nesterov=nesterov)
        opt.zero_grad()
        p.grad = a @ p.detach() + b
        opt.step()
    torch.testing.assert_close(
        p.detach(), theta + mu * v if nesterov else theta, rtol=1e-12, atol=1e-12
    )


def test_nesterov_evaluates_the_gradient_at_the_look_ahead_point():
    seen = []

    def grad_fn(point):
        seen.append(point[0].clone())
        return [torch.zeros_like(point[0])]

    theta, v = torch.tensor([1.0]), torch.tensor([2.0])
    momentum_step([theta], [v], grad_fn, lr=0.1, mu=0.5, nesterov=True)
    assert seen[0].item() == 2.0  # 1 + 0.5 * 2
    assert v.item() == 1.0 and theta.item() == 2.0


def test_tensor_lr_and_mu_update_stacked_runs_independently():
    theta, v = torch.ones(3, 1, 2), torch.ones(3, 1, 2)
    lr, mu = (
        torch.tensor([0.0, 0.1, 0.2]).view(3, 1, 1),
        torch.tensor([0.0, 0.5, 0.9]).view(3, 1, 1),
    )
    momentum_step([theta], [v], lambda p: [torch.ones_like(p[0])], lr=lr, mu=mu, nesterov=False)
    torch.testing.assert_close(v[:, 0, 0], torch.tensor([0.0, 0.4, 0.7]))
    torch.testing.assert_close(theta[:, 0, 0], torch.tensor([1.0, 1.4, 1.7]))


def test_grad_fn_may_use_autograd_on_the_point():
    w, v = torch.tensor([3.0]), torch.zeros(1)

    def grad_fn(point):
        for q in point:
            q.requires_grad_()
        return torch.autograd.grad((point[0] ** 2).sum(), point)

    with torch.no_grad():
        momentum_step([w], [v], grad_fn, lr=0.25, mu=0.9, nesterov=True)
    assert w.item() == 1.5 and not w.requires_grad


def test_rejects_mismatched_lists():
    with pytest.raises(ValueError, match="velocities"):
        momentum_step([torch.zeros(1)], [], lambda p: p, lr=0.1, mu=0.0, nesterov=False)
    with pytest.raises(ValueError, match="gradients"):
        momentum_step(
            [torch.zeros(1)], [torch.zeros(1)], lambda p: [], lr=0.1, mu=0.0, nesterov=False
        )
