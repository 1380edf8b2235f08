"""The few intervals the reproductions need, done right for small samples of seeds.

A published number from one run is compared with the distribution of single runs (a prediction
interval), not with the mean of ours; a mean gets its t interval; a Monte Carlo proportion its
Wilson interval. The tests behind the verdicts are in ``nnsanity.repro.claims``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Summary:
    mean: float
    sd: float
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.4g} ± {self.sd:.2g} (n={self.n})"


def summarize(values: Sequence[float] | np.ndarray) -> Summary:
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("summarize needs at least one value.")
    return Summary(float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else 0.0, int(x.size))


def prediction_interval(
    values: Sequence[float] | np.ndarray, level: float = 0.95
) -> tuple[float, float]:
    """Interval that holds one further single run with probability ``level`` (normal model).

    mean ± t_{n-1, (1+level)/2} · s · sqrt(1 + 1/n): wider than a confidence interval for the
    mean, because a published number is one run, not an average.
    """
    s = summarize(values)
    if s.n < 2:
        raise ValueError("a prediction interval needs at least two runs.")
    half = stats.t.ppf((1 + level) / 2, s.n - 1) * s.sd * math.sqrt(1 + 1 / s.n)
    return s.mean - half, s.mean + half


def confidence_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """t-based interval for the mean of ``values`` (e.g. per-seed differences)."""
    s = summarize(values)
    if s.n < 2:
        raise ValueError("a confidence interval needs at least two values.")
    half = stats.t.ppf((1 + level) / 2, s.n - 1) * s.sd / math.sqrt(s.n)
    return s.mean - half, s.mean + half


def proportion_interval(successes: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (scipy.stats.binomtest), good near 0 and 1 too."""
    ci = stats.binomtest(successes, trials).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)
