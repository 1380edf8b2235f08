"""Seeding: one home for putting the global RNGs in a known state and giving them back.

``seeded`` is public (the ``nnsanity_seed`` fixture and ``assert_reproducible`` use it);
``seed_torch`` and ``preserved_rng`` are what every check uses internally.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch

from nnsanity._arguments import check_seed

__all__ = ["preserved_rng", "seed_torch", "seeded"]


def seed_torch(seed: int) -> None:
    """Seed torch's CPU generator, and the CUDA ones only if CUDA is already initialised.

    ``torch.manual_seed`` would also queue a lazy CUDA seed when CUDA is not initialised yet, so
    the caller's first CUDA use later would start from the check's seed: a leak that
    ``preserved_rng`` cannot undo. A check on a CUDA model has initialised CUDA already.
    """
    torch.default_generator.manual_seed(seed)
    if torch.cuda.is_initialized():
        torch.cuda.manual_seed_all(seed)


@contextlib.contextmanager
def preserved_rng(*, all_cuda: bool = False) -> Iterator[None]:
    """Restore the torch (CPU and every CUDA device), numpy and ``random`` RNG states on exit.

    The CUDA states are saved if CUDA is initialised, or with ``all_cuda`` whenever it is
    available (initialising it): for a block that seeds CUDA even before its first use.
    """
    py_state = random.getstate()
    np_state = np.random.get_state()
    torch_state = torch.get_rng_state()
    save_cuda = torch.cuda.is_initialized() or (all_cuda and torch.cuda.is_available())
    cuda_states = torch.cuda.get_rng_state_all() if save_cuda else None
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[int]:
    """Seed torch (CPU and every CUDA device), numpy's global RNG and ``random`` with ``seed``.

    The previous states come back on exit, so the seeding does not leak into later code. Only
    the global generators are seeded: a ``torch.Generator()`` or ``np.random.default_rng()``
    that the code creates itself is not. Where CUDA is available its generators are seeded (and
    their states saved and restored) even if CUDA is not initialised yet, which initialises it:
    code that first uses CUDA inside the block must draw from ``seed`` too. (The checks, which
    seed only what the model uses, leave an uninitialised CUDA alone instead.)
    """
    seed = check_seed(seed)
    with preserved_rng(all_cuda=True):
        random.seed(seed)
        # numpy takes 32-bit seeds; a larger one goes in as its two 32-bit words
        np.random.seed(seed if seed < 2**32 else [seed & 0xFFFFFFFF, seed >> 32])
        seed_torch(seed)
        if torch.cuda.is_available():
            torch.cuda.manual_seed_all(seed)
        yield seed
