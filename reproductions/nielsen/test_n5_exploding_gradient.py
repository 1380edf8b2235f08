"""N5. Exploding gradients: large weights with every z_j = 0 make the first layer's gradient huge.

Source: Nielsen, *Neural Networks and Deep Learning*, ch. 5, "The exploding gradient problem".

Claim: in the one-neuron-per-layer chain with w1 = w2 = w3 = w4 = 100 and biases that make every
weighted input zero (b1 = -100 a0, then b_j = -100 sigma(0) = -50), every term w_j sigma'(z_j)
is 100 x 1/4 = 25, so dC/db1 / dC/db3 = 25^2 = 625 and dC/db1 / dC/da4 = sigma'(z1) 25^3 =
3906.25, whatever the cost and the input a0.

Measured: autograd's dC/db_j and dC/da4 (float64) for several inputs a0 in [0, 1] and two costs.

Pass criterion: exact equality. Every number involved is exact in float64: z_j = w a + b with
b = -(w a) rounds to exactly 0, sigma(0) = 1/2 and sigma'(0) = 1/4 exactly, and the products are
powers of two times 25 and 625; any deviation at all would be a real difference.

Smoke budget: nothing changes; this takes milliseconds.
"""

from __future__ import annotations

import torch

from nnsanity.repro.chains import chain_gradients, sigmoid_prime
from nnsanity.repro.claims import exact_claim

SOURCE = "Nielsen ch. 5, 'The exploding gradient problem'"

# -- the faithful setting ---------------------------------------------------------------------
LAYERS = 4
WEIGHT = 100.0  # "w1 = w2 = w3 = w4 = 100"
INPUTS = (0.0, 0.1, 0.3, 0.5, 2 / 3, 0.99609375, 1.0)  # a0: any input, exact or not


def _exploding_chain(cost):
    a0 = torch.tensor(INPUTS, dtype=torch.float64)
    w = torch.full((a0.numel(), LAYERS), WEIGHT, dtype=torch.float64)
    b = torch.empty_like(w)
    b[:, 0] = -(WEIGHT * a0)  # z1 = w1 a0 + b1 = 0 exactly: the same product, negated
    b[:, 1:] = -WEIGHT * 0.5  # a_j = sigma(0) = 1/2 for j >= 1, so b_j = -50
    return w, chain_gradients(w, b, a0, cost)


COSTS = {"quadratic, y=0": lambda a: 0.5 * a**2, "cross-entropy, y=1": lambda a: -torch.log(a)}


def test_every_term_w_sigma_prime_is_25_when_every_z_is_zero(claim):
    terms, zs = [], []
    for cost in COSTS.values():
        w, r = _exploding_chain(cost)
        terms += (w * sigmoid_prime(r.z)).flatten().tolist()
        zs += r.z.flatten().tolist()
    claim(
        exact_claim(
            all(v == 25.0 for v in terms),
            terms,
            id="N5.terms-25",
            source=SOURCE,
            statement="with w_j = 100 and every z_j = 0, each term w_j sigma'(z_j) = 25",
            published=25.0,
            statistic=f"w_j sigma'(z_j) for j = 1..4, a0 in {list(INPUTS)}, two costs (float64)",
            interval=(25.0, 25.0),
            details={"max_abs_z": max(abs(z) for z in zs)},
        )
    )


def test_first_bias_gradient_is_625_times_the_third(claim):
    ratios = []
    for cost in COSTS.values():
        _, r = _exploding_chain(cost)
        ratios += (r.dC_db[:, 0] / r.dC_db[:, 2]).tolist()
    claim(
        exact_claim(
            all(v == 625.0 for v in ratios),
            ratios,
            id="N5.ratio-625",
            source=SOURCE,
            statement="dC/db1 / dC/db3 = 25^2 = 625: the gradient explodes towards the input",
            published=625.0,
            statistic="dC/db1 / dC/db3 by autograd (float64), one value per (a0, cost)",
            interval=(625.0, 625.0),
        )
    )


def test_first_bias_gradient_is_3906_25_times_the_output_activation_gradient(claim):
    ratios, per_layer = [], {}
    for name, cost in COSTS.items():
        _, r = _exploding_chain(cost)
        ratios += (r.dC_db[:, 0] / r.dC_da[:, -1]).tolist()
        # the whole profile dC/db_j / dC/da4 = (1/4) 25^(4-j): 3906.25, 156.25, 6.25, 0.25
        per_layer[name] = (r.dC_db / r.dC_da[:, -1:])[0].tolist()
    claim(
        exact_claim(
            all(v == 3906.25 for v in ratios),
            ratios,
            id="N5.ratio-3906",
            source=SOURCE,
            statement="dC/db1 / dC/da4 = sigma'(z1) 25^3 = 3906.25",
            published=3906.25,
            statistic="dC/db1 / dC/da4 by autograd (float64), one value per (a0, cost)",
            interval=(3906.25, 3906.25),
            details={"dC/db_j / dC/da4, j = 1..4": per_layer},
        )
    )
