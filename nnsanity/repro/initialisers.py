"""The weight initialisations that ch. 5's two papers compare, and the variances they imply.

- ``standard_``: U[-1/sqrt(n_in), 1/sqrt(n_in)], the "commonly used heuristic" of Glorot &
  Bengio (2010), eq. (1); it gives n_in Var[W] = 1/3, so back-propagated gradients shrink by
  about a third per layer (their eq. 15).
- ``normalised_``: U[-sqrt(6/(n_in+n_out)), +sqrt(6/(n_in+n_out))], their eq. (16), which gives
  Var[W] = 2/(n_in+n_out); the same distribution as ``torch.nn.init.xavier_uniform_`` (gain 1).
- ``sparse_``: Sutskever et al. (2013) section 3.1 (after Martens 2010): each unit gets exactly
  ``n_nonzero`` (15) non-zero incoming weights drawn from N(0, 1), optionally scaled.

All three act in place on an ``nn.Linear``-shaped weight ``(n_out, n_in)`` and return it; biases
are the caller's (all three papers set them to zero). ``generator`` makes them reproducible
without touching the global RNG.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "normalised_",
    "normalised_variance",
    "sparse_",
    "standard_",
    "standard_variance",
]


def _fans(weight: torch.Tensor) -> tuple[int, int]:
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}.")
    if weight.dim() != 2 or weight.numel() == 0:
        raise ValueError(
            f"weight must be a non-empty 2-D (n_out, n_in) tensor like nn.Linear.weight, "
            f"got shape {tuple(weight.shape)}."
        )
    n_out, n_in = weight.shape
    return n_in, n_out


def standard_variance(n_in: int) -> float:
    """Var[W] of the standard init: (1/sqrt(n_in))^2 / 3, so n_in Var[W] = 1/3."""
    return 1.0 / (3.0 * n_in)


def normalised_variance(n_in: int, n_out: int) -> float:
    """Var[W] of the normalised init: 6/(n_in+n_out) / 3 = 2/(n_in+n_out)."""
    return 2.0 / (n_in + n_out)


@torch.no_grad()
def standard_(weight: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Fill ``weight`` from U[-1/sqrt(n_in), 1/sqrt(n_in)] (Glorot & Bengio eq. 1)."""
    n_in, _ = _fans(weight)
    bound = 1.0 / math.sqrt(n_in)
    return weight.uniform_(-bound, bound, generator=generator)


@torch.no_grad()
def normalised_(weight: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Fill ``weight`` from U[-sqrt(6/(n_in+n_out)), sqrt(6/(n_in+n_out))] (eq. 16, "Xavier")."""
    n_in, n_out = _fans(weight)
    bound = math.sqrt(6.0 / (n_in + n_out))
    return weight.uniform_(-bound, bound, generator=generator)


@torch.no_grad()
def sparse_(
    weight: torch.Tensor,
    n_nonzero: int = 15,
    *,
    scale: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Give every unit (row) exactly ``n_nonzero`` non-zero incoming weights from N(0, scale^2).

    The connected inputs are chosen uniformly without replacement, independently per unit; a
    unit with fewer than ``n_nonzero`` inputs is connected to all of them. This is not
    ``torch.nn.init.sparse_``, which zeroes a *fraction* of each column instead.
    """
    n_in, n_out = _fans(weight)
    if isinstance(n_nonzero, bool) or not isinstance(n_nonzero, int) or n_nonzero < 1:
        raise ValueError(f"n_nonzero must be a positive int, got {n_nonzero!r}.")
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale!r}.")
    k = min(n_nonzero, n_in)
    # A random permutation of each row's inputs, cut after k: k distinct inputs per unit.
    keys = torch.rand(n_out, n_in, generator=generator, device=weight.device)
    chosen = keys.argsort(dim=1)[:, :k]
    values = torch.randn(n_out, k, generator=generator, device=weight.device, dtype=weight.dtype)
    weight.zero_()
    return weight.scatter_(1, chosen, values * scale)
