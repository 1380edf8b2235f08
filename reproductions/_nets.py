"""The models and training loops the claim files share.

- ``mlp``: PyTorch's default-init ReLU MLP on MNIST (784 inputs), as the Karpathy claims use it;
- ``train_minibatches``: one model, mini-batches from a fresh permutation per epoch;
- ``stacked_params`` and ``stacked_batches``: many runs (one per seed) stacked along a leading
  dimension, so one ``bmm`` per layer trains them all (G1's and S1's loops). Every run draws
  its init and its data order from its own generator, so run r is what training it alone gives.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn
from torch.nn import functional as F

MNIST_PIXELS = 784


def mlp(
    depth: int = 1,
    *,
    seed: int | None = None,
    width: int = 100,
    n_out: int = 10,
    batchnorm: bool = False,
    dropout: float = 0.0,
) -> nn.Sequential:
    """784 -> ``depth`` x (Linear(width) [BatchNorm] ReLU [Dropout]) -> Linear(n_out).

    With ``seed`` the init is that seed's (``torch.manual_seed(seed)`` then PyTorch's default
    init), and the global RNG is given back as it was; without it the init draws from the global
    RNG as it stands.
    """
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return mlp(depth, width=width, n_out=n_out, batchnorm=batchnorm, dropout=dropout)
    layers: list[nn.Module] = []
    n_in = MNIST_PIXELS
    for _ in range(depth):
        layers.append(nn.Linear(n_in, width))
        layers += [nn.BatchNorm1d(width)] if batchnorm else []
        layers.append(nn.ReLU())
        layers += [nn.Dropout(dropout)] if dropout else []
        n_in = width
    return nn.Sequential(*layers, nn.Linear(n_in, n_out))


def train_minibatches(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    steps: int,
    batch: int,
    seed: int,
    after_step: Callable[[], object] | None = None,
) -> bool:
    """``steps`` steps of softmax cross-entropy on mini-batches of ``batch``, taken in order
    from a fresh permutation (from ``seed``'s generator) whenever the last one runs out, calling
    ``after_step()`` after each (a scheduler's ``step``, say). Returns False, and stops, at the
    first non-finite loss."""
    g = torch.Generator().manual_seed(seed)
    order = torch.empty(0, dtype=torch.long)
    for _ in range(steps):
        if len(order) < batch:
            order = torch.randperm(len(x), generator=g)
        idx, order = order[:batch], order[batch:]
        loss = F.cross_entropy(net(x[idx]), y[idx])
        if not torch.isfinite(loss):
            return False
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if after_step is not None:
            after_step()
    return True


Init = Callable[..., torch.Tensor]  # init(weight (n_out, n_in), generator=g) -> weight


def stacked_params(
    widths: Sequence[int],
    inits: Sequence[Init],
    generators: Sequence[torch.Generator],
    device: torch.device | str | None = None,
) -> list[torch.Tensor]:
    """[W1, b1, W2, b2, ...] for one run per generator: W (runs, n_in, n_out) from run r's
    ``inits[r]`` with its own generator, layer by layer; biases (runs, 1, n_out) zero."""
    params = []
    for n_in, n_out in itertools.pairwise(widths):
        w = torch.stack(
            [init(torch.empty(n_out, n_in), generator=g).T for init, g in zip(inits, generators)]
        )
        params += [w.contiguous().to(device), torch.zeros(len(generators), 1, n_out, device=device)]
    return params


def stacked_batches(
    n: int,
    batch: int,
    generators: Sequence[torch.Generator],
    updates: int,
    device: torch.device | str | None = None,
) -> Iterator[torch.Tensor]:
    """(runs, batch) row indices for each of ``updates`` updates: run r takes consecutive
    slices of its own fresh permutation of the n rows each epoch (a short last slice is
    dropped)."""
    per_epoch = n // batch
    for t in range(updates):
        pos = t % per_epoch
        if pos == 0:
            order = torch.stack([torch.randperm(n, generator=g) for g in generators]).to(device)
        yield order[:, pos * batch : (pos + 1) * batch]


_RUNS: dict[object, object] = {}


def shared_run(key: object, make: Callable[[], object]) -> object:
    """``make()`` once per process and ``key``: a training that several claim files read (N1's
    populations feed Karpathy's regularisation claims too) runs once per session."""
    if key not in _RUNS:
        _RUNS[key] = make()
    return _RUNS[key]
