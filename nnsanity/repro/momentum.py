"""Momentum as Sutskever, Martens, Dahl & Hinton (2013) wrote it: the schedule and both updates.

- classical momentum (CM), eqs. (1)-(2): v <- mu v - eps grad f(theta); theta <- theta + v
- Nesterov (NAG), eqs. (3)-(4):  v <- mu v - eps grad f(theta + mu v); theta <- theta + v

``torch.optim.SGD(nesterov=True)`` implements NAG in Bengio et al.'s reparametrisation: its
parameters are this module's ``theta + mu v`` (the look-ahead point), which is the same method
with a constant ``mu`` but not once ``mu`` follows a schedule. Here the paper's own variables are
kept, so a schedule means exactly what eq. (5) says.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

__all__ = ["momentum_step", "sutskever_momentum"]

BLOCK = 250  # eq. (5): mu changes every 250 updates


def sutskever_momentum(
    t: int,
    mu_max: float,
    *,
    total_updates: int | None = None,
    final_mu: float = 0.9,
    final_updates: int = 1000,
) -> float:
    """The momentum of update ``t`` (counted from 0): eq. (5) and the final low-momentum phase.

    mu_t = min(1 - 2^(-1 - log2(floor(t/250) + 1)), mu_max), computed in its closed form
    1 - 1/(2(k + 1)) with k = floor(t/250): 0.5, 0.75, 0.833.., 0.875, 0.9, ... in successive
    blocks of 250 updates. With ``total_updates`` given, the last ``final_updates`` updates use
    min(mu_t, final_mu): the paper's "for the last 1000 updates ... reduced to 0.9", which never
    raises a lower momentum (mu_max = 0 stays plain SGD).
    """
    if isinstance(t, bool) or not isinstance(t, int) or t < 0:
        raise ValueError(f"t must be a non-negative int (updates counted from 0), got {t!r}.")
    if not 0.0 <= mu_max < 1.0:
        raise ValueError(f"mu_max must be in [0, 1), got {mu_max!r}.")
    if total_updates is not None and not 0 <= t < total_updates:
        raise ValueError(f"t={t} is outside the run's updates 0..{total_updates - 1}.")
    k = t // BLOCK
    mu = min(1.0 - 1.0 / (2.0 * (k + 1)), mu_max)
    if total_updates is not None and t >= total_updates - final_updates:
        mu = min(mu, final_mu)
    return mu


def eq5(t: int, mu_max: float) -> float:
    """Eq. (5) written as printed, with log2; equal to the closed form up to rounding."""
    return min(1.0 - 2.0 ** (-1.0 - math.log2(math.floor(t / BLOCK) + 1)), mu_max)


@torch.no_grad()
def momentum_step(
    params: Sequence[torch.Tensor],
    velocities: Sequence[torch.Tensor],
    grad_fn: Callable[[list[torch.Tensor]], Sequence[torch.Tensor]],
    *,
    lr: float | torch.Tensor,
    mu: float | torch.Tensor,
    nesterov: bool,
) -> None:
    """One CM or NAG update of ``params`` and ``velocities``, in place.

    ``grad_fn(point)`` returns the gradient of the objective at ``point``, a list of fresh
    tensors shaped like ``params`` (``theta`` for CM, ``theta + mu v`` for NAG); it may call
    ``requires_grad_()`` on them and use autograd (grad mode is on inside it). ``mu = 0`` is
    plain SGD. ``lr`` and ``mu`` may be tensors that broadcast against every parameter, e.g.
    shaped ``(runs, 1, 1)`` for runs stacked along a leading dimension.
    """
    if len(params) != len(velocities):
        raise ValueError(f"{len(params)} params but {len(velocities)} velocities.")
    if nesterov:
        point = [p + mu * v for p, v in zip(params, velocities, strict=True)]
    else:
        point = [p.detach().clone() for p in params]
    with torch.enable_grad():
        grads = list(grad_fn(point))
    if len(grads) != len(params):
        raise ValueError(f"grad_fn returned {len(grads)} gradients for {len(params)} params.")
    for p, v, g in zip(params, velocities, grads, strict=True):
        v.mul_(mu).sub_(lr * g)
        p.add_(v)
