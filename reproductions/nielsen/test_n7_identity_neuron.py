"""N7. The identity neuron: a sigmoid neuron with a small weight passes its input through.

Source: Nielsen, *Neural Networks and Deep Learning*, ch. 5, "The unstable gradient problem",
second problem ("Identity neuron").

Claim: with input weight w1 small, bias b = -w1/2 and output weight w2 = 4/w1, the neuron computes
w2 sigma(w1 x + b) = x + c + O(w1^2) on [0, 1], with the constant c = 2/w1 - 1/2. (Taylor: with
x = 1/2 + D, sigma(w1 D) = 1/2 + w1 D/4 - (w1 D)^3/48 + ..., so the error is -w1^2 D^3/12 + ...,
at most w1^2/96 at the ends of [0, 1].)

Measured: the largest error max_x |w2 sigma(w1 x + b) - x - c| over 10,001 points of [0, 1] in
float64, for w1 from 0.4 down to 0.01, and the slope of log(error) against log(w1).

Pass criterion: the fitted exponent is 2 to within 0.05, and error / w1^2 at the smallest w1 is
1/96 to within 1%. The next Taylor term is O(w1^4), so the local exponent over w1 <= 0.4 moves
by less than 0.01; rounding (about 1e-13 on outputs near 2/w1 = 200) is seven orders below the
smallest error (about 1e-6).

Smoke budget: nothing changes; this takes milliseconds.
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit

from nnsanity.repro.claims import exact_claim

SOURCE = "Nielsen ch. 5, 'The unstable gradient problem', problem 2 (identity neuron)"

# -- the setting --------------------------------------------------------------------------------
W1 = (0.4, 0.2, 0.1, 0.05, 0.02, 0.01)  # "small" input weights, a factor 40 apart end to end
X = np.linspace(0.0, 1.0, 10_001)  # the inputs in [0, 1]; both ends on the grid

# -- published value and tolerances ---------------------------------------------------------------
ORDER = 2.0  # "O(w1^2)"
ORDER_TOL = 0.05
LEADING = 1 / 96  # the Taylor coefficient of the worst error, at x = 0 and x = 1
LEADING_RTOL = 0.01


def identity_neuron(x: np.ndarray, w1: float) -> np.ndarray:
    """w2 sigma(w1 x + b) with b = -w1/2 and w2 = 4/w1."""
    return 4 / w1 * expit(w1 * x - w1 / 2)


def test_the_identity_neuron_error_shrinks_as_the_square_of_the_weight(claim):
    errors = np.array([np.abs(identity_neuron(X, w1) - X - (2 / w1 - 0.5)).max() for w1 in W1])
    slope = float(np.polyfit(np.log(W1), np.log(errors), 1)[0])
    leading = float(errors[-1] / W1[-1] ** 2)
    holds = abs(slope - ORDER) <= ORDER_TOL and abs(leading - LEADING) <= LEADING_RTOL * LEADING
    claim(
        exact_claim(
            holds,
            [slope],
            id="N7.identity-error-order",
            source=SOURCE,
            statement="w2 sigma(w1 x - w1/2) with w2 = 4/w1 is x + (2/w1 - 1/2) up to O(w1^2) on "
            "[0, 1]",
            published=ORDER,
            statistic=f"least-squares slope of log max-error against log w1, w1 in {list(W1)}",
            interval=(ORDER - ORDER_TOL, ORDER + ORDER_TOL),
            details={
                "max_error_per_w1": dict(zip(map(str, W1), errors.tolist())),
                "error_over_w1^2_at_smallest_w1": leading,
                "taylor_coefficient": LEADING,
            },
        )
    )
