"""N4. sigma' <= 1/4 and the one-neuron chain: why the first layer's gradient vanishes.

Source: Nielsen, *Neural Networks and Deep Learning*, ch. 5, "What's causing the vanishing
gradient problem?", eq. (122), and "Unstable gradients in more complex networks", eq. (124).

Claim: in a chain of one sigmoid neuron per layer, dC/db1 = sigma'(z1) w2 sigma'(z2) w3
sigma'(z3) w4 sigma'(z4) dC/da4; sigma' peaks at sigma'(0) = 1/4; with N(0,1) weights
|w_j sigma'(z_j)| < 1/4 usually, so dC/db1 is usually 16 times or more smaller than dC/db3. In a
wide network the same product reads delta^l = Sigma'(z^l) (w^{l+1})^T ... Sigma'(z^L) grad_a C.

Measured: sigma' on a dense grid and its derivative's sign; autograd's dC/db_j (float64) against
the product formula, for chains whose weights span vanishing and exploding scales and for three
costs; autograd's delta^l against the literal matrix product of eq. (124) in wide networks; and a
Monte Carlo over random chains of how often |w_j sigma'(z_j)| < 1/4 and |dC/db1| <= |dC/db3|/16.

Assumptions the book leaves open (Monte Carlo): weights and biases N(0,1) (the book names the
weights; its chapter-3 "large" init draws the biases the same way), input a0 ~ U(0,1) like a
pixel. The ratio dC/db1 / dC/db3 = sigma'(z1) w2 sigma'(z2) w3 does not involve the cost; it
also holds sigma'(z1)/sigma'(z3), which the book's "two extra terms" reading leaves out.
dC/da_L enters both sides of each identity from autograd: the claims are about the factors
between the bias and the output, which no cost changes.

Pass criteria: identities hold to RTOL = 1e-12 relative (normwise per layer for eq. 124): a
product of <= 9 float64 factors differs by a few ulps (~1e-15), a wrong or missing factor by O(1).
"Usually" means more than half: the proportion's lower 99% bound (p - 2.576 SE) must exceed 1/2.

Smoke budget: 10^5 Monte Carlo chains instead of 10^6 (SE about 1.2e-3 instead of 4e-4); the
exact checks are the same at every budget.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import torch

from nnsanity.repro.chains import Cost, chain_gradients, sigmoid_prime
from nnsanity.repro.claims import exact_claim, proportion_claim

SOURCE = "Nielsen ch. 5, 'What's causing the vanishing gradient problem?'"


# -- the faithful setting ---------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Budget:
    mc_chains: int = 10**6  # Monte Carlo chains; vectorised, seconds either way


FULL = Budget()
SMOKE = dataclasses.replace(FULL, mc_chains=10**5)

LAYERS = 4  # the book's chain: four neurons in a row, one per layer
USUALLY = 0.5  # "usually" = in more than half of the random chains
LEVEL = 0.99  # two-sided level of a proportion's interval

# -- exact checks -----------------------------------------------------------------------------
RTOL = 1e-12  # float64 eps is 2.2e-16: two orders above rounding, ten below a wrong factor
GRID = np.arange(-400_000, 400_001) / 10_000  # z in [-40, 40] step 1e-4, z = 0 exactly on it
FORMULA_CHAINS = 2000  # random chains per cost for eq. (122)
# Per-chain scale of the N(0,1) weights, log-uniform: from vanishing chains to exploding ones
# (|w| up to ~20, so w sigma'(z) up to ~5), yet no sigma(z) rounds to 1 (that needs z > 36.7).
WEIGHT_SCALES = (0.1, 5.0)
WIDE_SIZES = (12, 30, 30, 30, 10)  # a wide sigmoid network for eq. (124)
WIDE_NETS = 4  # random networks per init; a few examples each
WIDE_EXAMPLES = 3


def _costs(y: torch.Tensor) -> dict[str, Cost]:
    """Three costs of a_L with target y: the book's two and an arbitrary smooth one."""
    return {
        "quadratic": lambda a: 0.5 * (a - y) ** 2,
        "cross-entropy": lambda a: -(y * torch.log(a) + (1 - y) * torch.log1p(-a)),
        "logcosh+a^4": lambda a: torch.log(torch.cosh(a - y)) + a**4,
    }


def _within(errors: dict[str, float], tol: float = RTOL) -> bool:
    return all(e <= tol for e in errors.values())  # a NaN fails too


def _worst(errors: list[float]) -> float:
    return max(errors, key=lambda e: (math.isnan(e), e))  # a NaN is the worst, not skipped


def _relative_error(autograd: torch.Tensor, formula: torch.Tensor) -> float:
    """max |autograd - formula| / |formula|; entries equal on both sides (both 0) count as 0."""
    diff = (autograd - formula).abs()
    return float(torch.where(autograd == formula, 0.0, diff / formula.abs()).max())


def _random_chains(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, LAYERS, generator=g, dtype=torch.float64)
    b = torch.randn(n, LAYERS, generator=g, dtype=torch.float64)
    a0 = torch.rand(n, generator=g, dtype=torch.float64)
    # The ratios below do not depend on the cost; the quadratic one with y = 0 never has a
    # zero dC/da4 (a4 > 0).
    return w, chain_gradients(w, b, a0, lambda a: 0.5 * a**2)


def test_sigma_prime_peaks_at_one_quarter_at_zero(claim):
    z = torch.from_numpy(GRID)
    s = torch.sigmoid(z)
    d1 = s * (1 - s)
    d2 = d1 * (1 - 2 * s)  # sigma'' = sigma' (1 - 2 sigma): >= 0 left of 0, <= 0 right of it
    z0 = torch.zeros((), dtype=torch.float64, requires_grad=True)
    (autograd_at_zero,) = torch.autograd.grad(torch.sigmoid(z0), z0)
    peak, at = float(d1.max()), float(z[d1.argmax()])
    one_peak = bool((d2[z < 0] >= 0).all() and (d2[z > 0] <= 0).all())
    holds = peak == 0.25 and at == 0.0 and float(autograd_at_zero) == 0.25 and one_peak
    claim(
        exact_claim(
            holds,
            [peak],
            id="N4.sigma-prime-max",
            source=SOURCE,
            statement="sigma'(z) <= 1/4 for every z, with the maximum at z = 0",
            published=0.25,
            statistic=f"max of sigma' over {GRID.size} grid points in [-40, 40] (float64)",
            interval=(0.25, 0.25),
            details={
                "argmax_z": at,
                "autograd_sigma_prime_at_0": float(autograd_at_zero),
                "sigma_second_derivative_changes_sign_only_at_0": one_peak,
            },
        )
    )


def test_autograd_bias_gradients_equal_the_product_formula_for_any_cost(claim, seeds):
    g = torch.Generator().manual_seed(seeds(1)[0])
    lo, hi = (math.log10(s) for s in WEIGHT_SCALES)
    scale = 10 ** (lo + (hi - lo) * torch.rand(FORMULA_CHAINS, 1, generator=g, dtype=torch.float64))
    w = scale * torch.randn(FORMULA_CHAINS, LAYERS, generator=g, dtype=torch.float64)
    b = torch.randn(FORMULA_CHAINS, LAYERS, generator=g, dtype=torch.float64)
    a0 = torch.rand(FORMULA_CHAINS, generator=g, dtype=torch.float64)
    y = torch.rand(FORMULA_CHAINS, generator=g, dtype=torch.float64)
    errors = {}
    for name, cost in _costs(y).items():
        r = chain_gradients(w, b, a0, cost)
        sp = sigmoid_prime(r.z)
        # eq. (122) for every j: dC/db_j = sigma'(z_j) * prod_{k > j} w_k sigma'(z_k) * dC/da_L
        formula = torch.stack(
            [
                sp[:, j] * torch.prod(w[:, j + 1 :] * sp[:, j + 1 :], 1) * r.dC_da[:, -1]
                for j in range(LAYERS)
            ],
            1,
        )
        errors[name] = _relative_error(r.dC_db, formula)
    claim(
        exact_claim(
            _within(errors),
            list(errors.values()),
            id="N4.chain-product-formula",
            source=SOURCE + ", eq. (122)",
            statement="dC/db1 = sigma'(z1) w2 sigma'(z2) w3 sigma'(z3) w4 sigma'(z4) dC/da4 "
            "(and likewise for every b_j), whatever the cost",
            published="eq. (122)",
            statistic=f"max relative error, autograd vs product formula, {FORMULA_CHAINS} chains "
            f"x {LAYERS} biases, one value per cost",
            interval=(0.0, RTOL),
            details={"per_cost": errors, "weight_scales": WEIGHT_SCALES},
        )
    )


def _eq124_error(weights, biases, x, cost) -> float:
    """Worst per-layer normwise error of eq. (124)'s matrix product against autograd."""
    bs = [b.clone().requires_grad_(True) for b in biases]
    a, zs = x, []
    for w, b in zip(weights, bs):
        zs.append(w @ a + b)
        a = torch.sigmoid(zs[-1])
    a.retain_grad()
    cost(a).sum().backward()
    sigma = [torch.diag(sigmoid_prime(z.detach())) for z in zs]  # Sigma'(z^l)
    worst = []
    for lay in range(len(zs)):
        # Sigma'(z^l) (w^{l+1})^T Sigma'(z^{l+1}) ... (w^L)^T Sigma'(z^L) grad_a C, literally
        factors = [sigma[lay]]
        for k in range(lay + 1, len(zs)):
            factors += [weights[k].T, sigma[k]]
        delta = torch.linalg.multi_dot([*factors, a.grad[:, None]])[:, 0]
        auto = bs[lay].grad
        worst.append(float((auto - delta).abs().max() / auto.abs().max()))
    return _worst(worst)


def test_matrix_form_of_eq_124_matches_autograd_in_a_wide_network(claim, seeds):
    g = torch.Generator().manual_seed(seeds(1)[0])
    errors: dict[str, float] = {}
    for init in ("N(0,1/n_in)", "N(0,1)"):  # network2's default and "large" inits
        for _ in range(WIDE_NETS):
            ws = [
                torch.randn(n_out, n_in, generator=g, dtype=torch.float64)
                / (math.sqrt(n_in) if init == "N(0,1/n_in)" else 1.0)
                for n_in, n_out in itertools.pairwise(WIDE_SIZES)
            ]
            bs = [torch.randn(n, generator=g, dtype=torch.float64) for n in WIDE_SIZES[1:]]
            for _ in range(WIDE_EXAMPLES):
                x = torch.rand(WIDE_SIZES[0], generator=g, dtype=torch.float64)
                y = torch.rand(WIDE_SIZES[-1], generator=g, dtype=torch.float64)
                for name, cost in _costs(y).items():
                    key = f"{init}, {name}"
                    error = _eq124_error(ws, bs, x, cost)
                    errors[key] = _worst([errors.get(key, 0.0), error])
    claim(
        exact_claim(
            _within(errors),
            list(errors.values()),
            id="N4.matrix-form-eq124",
            source="Nielsen ch. 5, 'Unstable gradients in more complex networks', eq. (124)",
            statement="delta^l = Sigma'(z^l) (w^{l+1})^T Sigma'(z^{l+1}) ... Sigma'(z^L) grad_a C",
            published="eq. (124)",
            statistic=f"max over layers of max|autograd - product| / max|autograd|, network "
            f"{list(WIDE_SIZES)}, one value per (init, cost)",
            interval=(0.0, RTOL),
            details={
                "per_init_and_cost": errors,
                "networks_per_init": WIDE_NETS,
                "examples_per_network": WIDE_EXAMPLES,
            },
        )
    )


def test_a_weight_times_sigma_prime_is_usually_below_one_quarter(claim, seeds, budget):
    n = budget.mc_chains
    w, r = _random_chains(n, seeds(1)[0])
    below = (w * sigmoid_prime(r.z)).abs() < 0.25  # (chains, layers)
    # The terms of eq. (122) are j = 2, 3, 4; each is a proportion over independent chains.
    counts = {j + 1: int(below[:, j].sum()) for j in range(1, LAYERS)}
    small_weights = int((w.abs() < 1).sum())
    claim(
        proportion_claim(
            min(counts.values()),  # the term least often below 1/4 decides
            n,
            above=USUALLY,
            level=LEVEL,
            measured=[c / n for c in counts.values()],
            id="N4.mc-term-below-quarter",
            source=SOURCE,
            statement="with N(0,1) weights, |w_j sigma'(z_j)| < 1/4 usually",
            published="usually (> 1/2)",
            statistic=f"proportion of {n} random chains with |w_j sigma'(z_j)| < 1/4, one value "
            f"per term j = 2, 3, 4; interval: {LEVEL:.0%} Wilson interval of the smallest",
            details={
                "per_term": {f"j={j}": c / n for j, c in counts.items()},
                "P(|w|<1) measured": small_weights / w.numel(),
                "P(|w|<1) exact": math.erf(1 / math.sqrt(2)),
                "assumptions": "w, b ~ N(0,1), a0 ~ U(0,1)",
            },
        )
    )


def test_first_bias_gradient_is_usually_16x_or_more_smaller_than_the_third(claim, seeds, budget):
    n = budget.mc_chains
    _, r = _random_chains(n, seeds(1)[0])
    ratio = (r.dC_db[:, 0] / r.dC_db[:, 2]).abs()  # = |sigma'(z1) w2 sigma'(z2) w3|
    claim(
        proportion_claim(
            int((ratio <= 1 / 16).sum()),
            n,
            above=USUALLY,
            level=LEVEL,
            id="N4.mc-16x-smaller",
            source=SOURCE,
            statement="with N(0,1) weights, dC/db1 is usually a factor of 16 or more smaller "
            "than dC/db3",
            published="usually (> 1/2)",
            statistic=f"proportion of {n} random chains with |dC/db1| <= |dC/db3| / 16 "
            f"(autograd); interval: {LEVEL:.0%} Wilson",
            details={
                "median_ratio": float(ratio.median()),
                "assumptions": "w, b ~ N(0,1), a0 ~ U(0,1)",
            },
        )
    )
