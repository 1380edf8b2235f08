"""N6. The unstable gradient: a term |w sigma'(wa + b)| >= 1 needs |w| >= 4, and then only briefly.

Source: Nielsen, *Neural Networks and Deep Learning*, ch. 5, "The unstable gradient problem",
first problem, and eq. (123).

Claim: |w sigma'(wa + b)| >= 1 is possible only if |w| >= 4; for such w the inputs a where it
holds form one interval (b only shifts it) of width (2/|w|) ln(|w|(1 + sqrt(1 - 4/|w|))/2 - 1)
(eq. 123), a width greatest at |w| about 6.9, where it is about 0.45.

Measured: the term on a (w, a, b) grid in float64; the set of a where it reaches 1, found by brute
force on a fine grid over a for several w and b (its width, number of pieces and centre); the
maximum of eq. (123) by scipy.optimize.minimize_scalar(method="bounded"), cross-checked on a grid.

Pass criteria: the smallest |w| on the grid reaching 1 is exactly 4 (w = 4, wa + b = 0 is on the
grid and sigma'(0) = 1/4 is exact) and no |w| < 4 reaches it; a brute-force width differs from
eq. (123) by at most two grid steps (each end of the interval is located to one step); one
interval for every (w, b), centred at a = -b/w to one step; the maximum rounds to the published
digits: width in [0.445, 0.455], |w| in [6.85, 6.95].

Smoke budget: nothing changes; everything here is exact or a fixed grid (about a second).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import minimize_scalar
from scipy.special import expit

from nnsanity.repro.claims import exact_claim
from nnsanity.repro.plots import unstable_width

SOURCE = "Nielsen ch. 5, 'The unstable gradient problem', problem 1, eq. (123)"

# -- grids ------------------------------------------------------------------------------------
W_GRID = np.arange(-800, 801) / 100  # w in [-8, 8] step 0.01, with +-4 exactly on it
A_COARSE = np.arange(-3000, 3001) / 1000  # a in [-3, 3] step 1e-3, a = 0 on it
B_COARSE = (-6.0, -2.0, -0.5, 0.0, 0.5, 2.0, 6.0)  # b = 0 puts wa + b = 0 on the grid
STEP = 1e-6  # brute-force resolution over a; the interval's ends are located to one step
A_FINE = np.arange(-1_000_000, 1_000_001) * STEP  # a in [-1, 1]; the intervals lie inside
W_FINE = (4.5, 5.0, 6.0, 6.9, 10.0, 30.0, -5.0, -6.9, -20.0)  # |w| > 4, both signs
B_FINE = (-2.0, 0.0, 1.5)  # |b/w| <= 0.45, so the interval (half-width <= 0.23) fits in [-1, 1]

# -- published values -------------------------------------------------------------------------
THRESHOLD_W = 4.0  # "only if |w| >= 4"
MAX_WIDTH, MAX_AT = 0.45, 6.9  # "about 0.45 at |w| about 6.9": two significant digits each


def width_eq123(w: float | np.ndarray) -> float | np.ndarray:
    """Eq. (123): the width of {a : |w sigma'(wa + b)| >= 1}, for |w| >= 4."""
    w = np.abs(w)
    return 2 / w * np.log(w * (1 + np.sqrt(1 - 4 / w)) / 2 - 1)


def _gain(w: float | np.ndarray, a: np.ndarray, b: float) -> np.ndarray:
    s = expit(w * a + b)
    return np.abs(w * s * (1 - s))


def _pieces(w: float, b: float) -> tuple[float, int, float]:
    """Brute force: width, number of separate pieces, and centre of {a : gain >= 1}."""
    mask = _gain(w, A_FINE, b) >= 1
    if mask[0] or mask[-1]:
        raise AssertionError(f"the set for w={w}, b={b} reaches the grid's edge: widen A_FINE")
    starts = int(np.count_nonzero(np.diff(mask.astype(np.int8)) == 1))
    inside = A_FINE[mask]
    return inside.size * STEP, starts, float(inside.mean())


def test_the_term_reaches_one_only_when_the_weight_is_at_least_four(claim):
    best = np.zeros_like(W_GRID)  # max over (a, b) of |w sigma'(wa + b)|, per w
    for b in B_COARSE:
        best = np.maximum(best, _gain(W_GRID[:, None], A_COARSE[None, :], b).max(1))
    reaching = np.abs(W_GRID[best >= 1])
    smallest = float(reaching.min())
    below = float(best[np.abs(W_GRID) < THRESHOLD_W].max())
    holds = smallest == THRESHOLD_W and below < 1
    claim(
        exact_claim(
            holds,
            [smallest],
            id="N6.needs-w-at-least-4",
            source=SOURCE,
            statement="|w sigma'(wa + b)| >= 1 is possible only if |w| >= 4",
            published=THRESHOLD_W,
            statistic=f"smallest |w| on a step-0.01 grid where some (a, b) of a {A_COARSE.size} x "
            f"{len(B_COARSE)} grid gives a term >= 1",
            interval=(THRESHOLD_W, THRESHOLD_W),
            details={
                "max_term_for_|w|<4": below,
                "why": "sigma' <= 1/4 (N4.sigma-prime-max), so |w sigma'| <= |w|/4 < 1",
            },
        )
    )


@pytest.fixture(scope="module")
def brute_force() -> dict[tuple[float, float], tuple[float, int, float]]:
    """(w, b) -> (width, pieces, centre) of {a : term >= 1}, on the fine grid."""
    return {(w, b): _pieces(w, b) for w in W_FINE for b in B_FINE}


def test_brute_force_widths_match_eq_123(claim, brute_force):
    errors = {
        f"w={w}, b={b}": abs(width - width_eq123(w))
        for (w, b), (width, _, _) in brute_force.items()
    }
    worst = max(errors.values())
    claim(
        exact_claim(
            worst <= 2 * STEP,
            list(errors.values()),
            id="N6.width-closed-form",
            source=SOURCE,
            statement="the set of a with |w sigma'(wa + b)| >= 1 has width "
            "(2/|w|) ln(|w|(1 + sqrt(1 - 4/|w|))/2 - 1)",
            published="eq. (123)",
            statistic=f"|brute-force width - eq. (123)|, grid step {STEP} over a, one value per "
            f"(w, b) for w in {list(W_FINE)}, b in {list(B_FINE)}",
            interval=(0.0, 2 * STEP),
            details={"widths_eq123": {str(w): float(width_eq123(w)) for w in W_FINE}},
        )
    )


def test_the_set_is_one_interval_that_the_bias_only_shifts(claim, brute_force):
    found = brute_force
    pieces = [n for _, n, _ in found.values()]
    off_centre = max(abs(c + b / w) for (w, b), (_, _, c) in found.items())
    spread = max(
        max(found[w, b][0] for b in B_FINE) - min(found[w, b][0] for b in B_FINE) for w in W_FINE
    )
    holds = all(n == 1 for n in pieces) and off_centre <= STEP and spread <= 2 * STEP
    claim(
        exact_claim(
            holds,
            pieces,
            id="N6.one-interval",
            source=SOURCE,
            statement="for fixed w and b the set is exactly one interval; b only shifts it "
            "(centre -b/w, same width)",
            published=1.0,
            statistic="number of separate pieces of {a : term >= 1} per (w, b), brute force",
            interval=(1.0, 1.0),
            details={
                "max_|centre + b/w|": off_centre,
                "max_width_spread_over_b": spread,
                "step": STEP,
            },
        )
    )


@pytest.fixture(scope="module")
def width_maximum() -> tuple[float, float, float]:
    """(|w| at the maximum, the maximum width, the grid's argmax) of eq. (123)."""
    result = minimize_scalar(
        lambda w: -width_eq123(w), bounds=(4, 100), method="bounded", options={"xatol": 1e-10}
    )
    assert result.success, result
    grid = np.arange(4_000, 100_001) / 1000  # |w| in [4, 100] step 1e-3
    return float(result.x), float(-result.fun), float(grid[np.argmax(width_eq123(grid))])


def test_the_width_is_greatest_about_0_45(claim, width_maximum):
    at, width, _ = width_maximum
    lo, hi = MAX_WIDTH - 0.005, MAX_WIDTH + 0.005  # the values that round to 0.45
    claim(
        exact_claim(
            lo <= width <= hi,
            [width],
            id="N6.width-max",
            source=SOURCE,
            statement="the width of the interval is at most about 0.45",
            published=MAX_WIDTH,
            statistic="max over |w| in [4, 100] of eq. (123), minimize_scalar(method='bounded')",
            interval=(lo, hi),
            details={"at_|w|": at},
        )
    )


def test_the_width_is_greatest_at_a_weight_of_about_6_9(claim, width_maximum):
    at, _, grid_at = width_maximum
    lo, hi = MAX_AT - 0.05, MAX_AT + 0.05  # the values that round to 6.9
    claim(
        exact_claim(
            lo <= at <= hi and math.isclose(at, grid_at, abs_tol=1e-3),
            [at],
            id="N6.width-argmax",
            source=SOURCE,
            statement="the width is greatest at |w| about 6.9",
            published=MAX_AT,
            statistic="argmax over |w| in [4, 100] of eq. (123), "
            "minimize_scalar(method='bounded'), checked against a step-0.001 grid",
            interval=(lo, hi),
            details={"grid_argmax": grid_at},
        )
    )


def test_figure(width_maximum, figures):
    """Eq. (123)'s width against |w|, its maximum marked."""
    at, width, _ = width_maximum
    path = unstable_width(width_eq123, at, width, figures / "N6_width_eq123.png")
    assert path.stat().st_size > 0
