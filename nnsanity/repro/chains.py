"""Nielsen's simplest deep network: a chain of single sigmoid neurons (ch. 5, eq. 122).

Layer j holds one neuron: z_j = w_j a_{j-1} + b_j and a_j = sigma(z_j), for j = 1..L, and the
cost is a function of a_L alone. Many independent chains run at once as the rows of a
(chains, L) tensor, so a Monte Carlo over a million chains is one autograd call: the chains
share no parameter, so the gradient of the summed cost is each chain's own gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

Cost = Callable[[torch.Tensor], torch.Tensor]  # a_L (chains,) -> per-chain cost (chains,)


def sigmoid_prime(z: torch.Tensor) -> torch.Tensor:
    """sigma'(z) = sigma(z) (1 - sigma(z)), the factor every layer adds to the gradient."""
    s = torch.sigmoid(z)
    return s * (1 - s)


@dataclass(frozen=True)
class ChainGradients:
    """One forward and backward pass through a batch of chains; every tensor is detached."""

    z: torch.Tensor  # (chains, L) weighted inputs z_j
    a: torch.Tensor  # (chains, L) activations a_j
    dC_db: torch.Tensor  # (chains, L) dC/db_j, by autograd
    dC_da: torch.Tensor  # (chains, L) dC/da_j, by autograd; the last column is dC/da_L


def chain_gradients(
    weights: torch.Tensor, biases: torch.Tensor, inputs: torch.Tensor, cost: Cost
) -> ChainGradients:
    """Run the chains forward and let autograd compute dC/db_j and dC/da_j for every layer.

    ``weights`` and ``biases`` are (chains, L), ``inputs`` (a_0) is (chains,), all of one
    floating dtype; ``cost`` maps a_L to one cost per chain. Nothing here uses the product
    formula of eq. (122): the reproductions compare it with what this returns.
    """
    if not all(isinstance(t, torch.Tensor) for t in (weights, biases, inputs)):
        raise TypeError("weights, biases and inputs must be torch tensors.")
    if weights.ndim != 2 or weights.shape != biases.shape:
        raise ValueError(
            f"weights and biases must both be (chains, layers), got {tuple(weights.shape)} "
            f"and {tuple(biases.shape)}."
        )
    if inputs.shape != weights.shape[:1]:
        raise ValueError(
            f"inputs must be (chains,) = {tuple(weights.shape[:1])}, got {tuple(inputs.shape)}."
        )
    if not weights.is_floating_point() or len({weights.dtype, biases.dtype, inputs.dtype}) > 1:
        raise TypeError(
            "weights, biases and inputs must share one floating dtype "
            "(use float64 for exact comparisons)."
        )
    with torch.enable_grad():
        b = biases.detach().clone().requires_grad_(True)
        a = inputs.detach()
        zs, activations = [], []
        for j in range(weights.shape[1]):
            z = weights[:, j].detach() * a + b[:, j]  # product, then sum: b = -(w a) gives 0
            a = torch.sigmoid(z)
            zs.append(z)
            activations.append(a)
        total = cost(a).sum()
        grads = torch.autograd.grad(total, [b, *activations])
    return ChainGradients(
        z=torch.stack(zs, 1).detach(),
        a=torch.stack(activations, 1).detach(),
        dC_db=grads[0],
        dC_da=torch.stack(grads[1:], 1),
    )
