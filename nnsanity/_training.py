"""Reading a training trace: run steps, find where it diverged, and what change of a loss counts.

Losses before and after training are means of ``N_EVALS`` train-mode evaluations (see
``Harness.evaluate``), whose spread is the noise floor of any comparison of two.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from nnsanity._harness import N_EVALS

# A difference of two means of N_EVALS evaluations counts when it exceeds NOISE_Z of its standard
# deviations, sd * sqrt(2 / N_EVALS): with N_EVALS = 8 that is 1.5 sd of one evaluation.
NOISE_Z = 3.0
NOISE_FACTOR = NOISE_Z * math.sqrt(2 / N_EVALS)


def train(run: Callable[[], float], steps: int, stop_at: float = -math.inf) -> list[float]:
    """Losses returned by up to ``steps`` calls; stops at a non-finite loss or at ``stop_at``."""
    trace: list[float] = []
    for _ in range(steps):
        trace.append(run())
        if not math.isfinite(trace[-1]) or trace[-1] <= stop_at:
            break
    return trace


def divergence(trace: Sequence[float], threshold: float) -> int | None:
    """The first step whose loss was NaN/Inf or above ``threshold``."""
    return next((k for k, v in enumerate(trace) if not math.isfinite(v) or v > threshold), None)


def required_change(fraction: float, initial: float, sd: float) -> float:
    """The change of a mean loss that counts: ``fraction`` of ``initial``, and beyond the noise
    (``NOISE_Z`` standard deviations of a difference of two means of ``N_EVALS`` evaluations)."""
    if not math.isfinite(sd):
        return 0.0
    return max(fraction * abs(initial), NOISE_FACTOR * sd)


def excerpt(trace: Sequence[float], n: int = 6) -> str:
    """``0: 2.3, 5: 2.1, ...``: ``n`` evenly spaced entries of a loss trace."""
    idx = sorted({round(i * (len(trace) - 1) / (n - 1)) for i in range(n)}) if trace else []
    return ", ".join(f"{i}: {trace[i]:.4g}" for i in idx)
