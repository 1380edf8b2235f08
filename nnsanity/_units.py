"""Dead units: rows of a Linear/Conv layer whose gradient is exactly zero on a batch.

A unit (an output feature or channel) learns from the gradient of its weight row and bias. A
ReLU whose input is negative for every example of the batch passes back exactly zero, and so do
a saturated sigmoid (its float32 derivative underflows to 0) and a ReLU6 above 6: the unit is
dead on the batch. The gradient is read rather than the activation, so functional activations
(``F.relu``) count too. The bias gradient is the unit's summed error, so a layer fed all-zero
inputs (weight rows zero, bias alive) is not counted; without a bias only the weight row is read.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from nnsanity._harness import Harness
from nnsanity._state import autograd
from nnsanity.seeding import seed_torch

UNIT_LAYERS = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
TRANSPOSED = (torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)
_BATCHNORM = torch.nn.modules.batchnorm._BatchNorm


def dead_units(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Per Linear/Conv layer with a gradient, which units get exactly zero gradient in weight
    row and bias (a bool tensor over its units)."""
    found = {}
    for name, m in model.named_modules():
        if not isinstance(m, UNIT_LAYERS + TRANSPOSED):
            continue
        w, b = m.weight, m.bias
        if not w.requires_grad or w.grad is None:
            continue
        g = w.grad.detach().transpose(0, 1) if isinstance(m, TRANSPOSED) else w.grad.detach()
        zero = (g.reshape(g.shape[0], -1) == 0).all(1)
        if b is not None and b.grad is not None and b.shape[0] == zero.shape[0]:
            zero &= b.grad.detach() == 0
        found[name or type(m).__name__] = zero
    return found


@contextlib.contextmanager
def _deterministic_mode(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode (dropout, stochastic depth off) with BatchNorm left in train mode, so a unit's
    activity on the batch is read without random masks; modes come back on exit."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    for m in model.modules():
        if isinstance(m, _BATCHNORM):
            m.train()
    try:
        yield
    finally:
        for m, mode in modes.items():
            m.training = mode


def probe(h: Harness) -> tuple[dict[str, torch.Tensor], str | None]:
    """One seeded forward/backward of the batch without dropout: the dead units per layer, and
    the name of the output layer (the last Linear/Conv to run), whose units go quiet when the
    loss saturates rather than when they die. Gradients are cleared afterwards."""
    order: list[str] = []
    names: dict[torch.nn.Module, str] = {
        m: n for n, m in h.model.named_modules() if isinstance(m, UNIT_LAYERS + TRANSPOSED)
    }

    def ran(module: torch.nn.Module, args: Any, out: Any) -> None:
        order.append(names[module] or type(module).__name__)

    handles = [m.register_forward_hook(ran) for m in names]
    params = list(h.model.parameters())
    try:
        with _deterministic_mode(h.model), autograd():
            for p in params:
                p.grad = None
            seed_torch(h.seed)
            h.loss(h.forward()).backward()
            dead = dead_units(h.model)
    finally:
        for handle in handles:
            handle.remove()
        for p in params:
            p.grad = None
    return dead, order[-1] if order else None
