"""S1: Sutskever, Martens, Dahl & Hinton (2013), momentum and initialisation, scaled down.

Source: I. Sutskever, J. Martens, G. Dahl and G. Hinton, "On the importance of initialization
and momentum in deep learning", ICML 2013: section 2 (eqs. 1-5, Theorem 2.1), section 3.1 (the
sparse init, the schedule's final phase), Table 1 (MNIST autoencoder) and Table 3 (init scale).
Here on MNIST in network2's split (50k training images), float32, through nnsanity.repro.momentum
(their CM and NAG, in their own variables) and nnsanity.repro.initialisers.sparse_.

S1.schedule: eq. (5) mu_t = min(1 - 2^(-1 - log2(floor(t/250) + 1)), mu_max) gives 0.5, 0.75,
0.833.., 0.875, 0.9 in the first five blocks of 250 updates, is capped at mu_max, and mu drops to
0.9 for the last 1,000 updates. Exact: the closed form 1 - 1/(2(k+1)) against the formula as
printed (within 4 ulp, every t below 20,000), the cap and the final phase.
S1.sparse-init: every unit gets exactly 15 non-zero incoming weights, drawn from N(0, 1), biases
0. Exact count; the non-zero weights' variance within 4 standard errors of 1.
S1.theorem-*: Theorem 2.1: on a quadratic, a NAG step is a CM step with momentum mu(1 - eps
lambda) along an eigendirection of curvature lambda. Measured: 100 steps of NAG against CM with
that momentum, per eigendirection, on a diagonal quadratic and on a rotated one with a linear
term; float64. Pass: the largest difference, relative to the largest starting coordinate, is
below 1e-12 (diagonal) and 1e-10 (rotated, where forming A theta + b and theta* adds rounding):
the identity is exact, so only rounding may separate them. As a control, CM with the
uncorrected mu is reported: it must differ at O(1).

S1.momentum: a deep sigmoid autoencoder trained with NAG and the schedule (mu_max = 0.99) from
the sparse init reaches a much lower training error than plain SGD in the same number of updates
(Table 1, MNIST: SGD 2.1, 0.9N 1.0, 0.99N 0.73, after 750,000 updates). At our budgets eq. (5)
never climbs past 0.875 (smoke) or 0.9375 (full, the last 1,000 updates capped at 0.9), so the
run is effectively Table 1's 0.9N column and is compared with its ratio, 1.0 / 2.1 = 0.48.
Measured: the per-example sum of squared errors on the first 10,000 training images after
UPDATES updates on batches of 200, one value per seed; SGD and NAG share each seed's init and
data order. Pass (declared before any run): SGD's error significantly higher and the mean
NAG/SGD ratio <= 0.5 ("much lower": Table 1 gives 0.35 for 0.99N and 0.48 for 0.9N) ->
reproduced; lower but by a ratio above 0.5 -> not reproduced; neither direction significant ->
within noise; NAG significantly worse -> not reproduced. (The first version used a Welch test
and read "not significant" as within noise without checking the reverse direction; the paired
test with all three outcomes replaced it after review, before the final full run.)
S1.bad-init: the same NAG run from the sparse init scaled by 0.25 fails (Table 3: error 16 at
0.25 against 0.074 at 1). Measured: its final training error over that of predicting the
training set's mean image (the plateau every such autoencoder starts on). Pass: >= 0.9 in every
seed ("stuck high").

Architecture: encoder 784-250-100-50-30, decoder mirrored: the paper's depth (784-1000-500-250-30,
8 weight layers) at about a quarter of its width; logistic units except the linear 30-unit code
layer (as in Hinton & Salakhutdinov 2006, whose autoencoders these are); squared error as the
objective and the reported error; no regularisation. The sparse init fixes each unit's fan-in at
15, so width changes the signal's propagation little while its cost grows linearly; depth is what
the init claims turn on, so both budgets keep the paper's depth. (A first try with a 3-layer
encoder, 784-250-100-30, left the x0.25 init unstuck: 31.4 against the mean image's 52.4 after
1,000 updates, seed 0. That is why the depth is the paper's; it is a finding, not a failure.)

Learning rates, picked once at the smoke setting (seed 0, 1,000 updates, lowest final training
error) from {0.01, 0.05, 0.1, 0.2}, extended by one step when the best was on the edge: SGD
47.7, 33.6, 31.2, 30.4, and 52.6 at 0.4 (on the plateau until ~1,400 updates): 0.2; NAG 30.4,
19.7, 52.5 (stuck), 52.5 (stuck): 0.05. The x0.25 arm uses NAG's rate. The paper, too, took
each method's best rate.

Smoke budget (derived from FULL below): 1,000 updates instead of 3,000 and 2 seeds per arm
instead of 3. At 1,000 updates the final low-momentum phase covers the whole run, but the schedule
is still below 0.9 there, so it changes nothing; at 3,000 it caps the last third at 0.9 (the
paper's last 1,000 of 750,000).

What did not reproduce at our budgets (asserted as such): S1.momentum, at both budgets: NAG is
significantly lower, at 0.66x SGD's error (smoke) and 0.53x (full), not <= 0.5x. S1.bad-init at
the full budget: the x0.25 init sits on the mean-image plateau for ~1,800 updates, then learns;
at the smoke budget (1,000 updates) it is still stuck, so the claim holds there, and only there.
The exact update at which each seed leaves the plateau is in the report's details.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import pytest
import torch

from nnsanity.repro.claims import Claim, Verdict, exact_claim, ordering_claim
from nnsanity.repro.initialisers import sparse_
from nnsanity.repro.momentum import BLOCK, eq5, momentum_step, sutskever_momentum
from nnsanity.repro.plots import autoencoder_training
from nnsanity.repro.stats import summarize
from reproductions._nets import stacked_batches, stacked_params

SOURCE = "Sutskever, Martens, Dahl & Hinton, ICML 2013"


# -- the full setting; the smoke budget is derived from it ------------------------------------
@dataclasses.dataclass(frozen=True)
class Budget:
    updates: int = 3_000  # on batches of 200 (paper: 750,000)
    seeds: int = 3  # per arm
    record_every: int = 100  # updates between training-curve points


FULL = Budget()
SMOKE = dataclasses.replace(FULL, updates=1_000, seeds=2)

ENCODER = (784, 250, 100, 50, 30)  # paper: 784-1000-500-250-30; the decoder mirrors it
BATCH = 200
NONZERO = 15  # incoming weights per unit in the sparse init
MU_MAX = 0.99  # Table 1's best MNIST setting (0.99N)
FINAL_MU, FINAL_UPDATES = 0.9, 1_000
ARMS = {  # name: (learning rate from the sweep in the docstring, mu_max, init scale)
    "SGD": (0.2, 0.0, 1.0),
    "NAG": (0.05, MU_MAX, 1.0),
    "NAG x0.25 init": (0.05, MU_MAX, 0.25),
}
EVAL = 10_000  # training images the final error is measured on
CURVE = 1_000  # training images for the training curve
ALPHA = 0.05
MUCH_LOWER = 0.5  # NAG / SGD ratio for "much lower"
STUCK = 0.9  # final error / mean-image error for "stuck high"
PUBLISHED_TABLE1 = {"SGD": 2.1, "0.9N": 1.0, "0.99N": 0.73}  # training squared error, MNIST
THEOREM_STEPS = 100
THEOREM_TOL = {"diagonal": 1e-12, "rotated": 1e-10}


# Measured: 5 ms per step of 200 on one thread, 78 ms on two when the machine is busy.
pytestmark = pytest.mark.usefixtures("one_thread")


# -- S1.schedule ------------------------------------------------------------------------------
def test_momentum_schedule_is_eq_5_with_its_cap_and_final_phase(claim):
    first_blocks = [sutskever_momentum(k * BLOCK, MU_MAX) for k in range(5)]
    expected = [1 - 1 / (2 * (k + 1)) for k in range(5)]  # 0.5, 0.75, 0.833.., 0.875, 0.9
    within_blocks = all(
        sutskever_momentum(k * BLOCK + j, MU_MAX) == first_blocks[k]
        for k in range(5)
        for j in (0, 1, BLOCK - 1)
    )
    as_printed = max(
        abs(sutskever_momentum(t, MU_MAX) - eq5(t, MU_MAX)) for t in range(0, 20_000, 7)
    )
    cap = sutskever_momentum(100_000, MU_MAX) == MU_MAX and sutskever_momentum(999, 0.8) == 0.8
    total = 5_000
    final = [sutskever_momentum(t, MU_MAX, total_updates=total) for t in range(total)]
    final_phase = all(m == FINAL_MU for m in final[-FINAL_UPDATES:]) and final[
        -FINAL_UPDATES - 1
    ] > (FINAL_MU)
    exact = first_blocks == expected and within_blocks and as_printed <= 4 * 2**-53
    claim(
        exact_claim(
            exact and cap and final_phase,
            [max(abs(m - e) for m, e in zip(first_blocks, expected))],
            id="S1.schedule",
            source=f"{SOURCE}, eq. (5), section 3.1",
            statement="mu_t = 0.5, 0.75, 0.833, 0.875, 0.9 in the first blocks of 250 updates, "
            "capped at mu_max, and 0.9 for the last 1,000 updates",
            published="0.5, 0.75, 0.833, 0.875, 0.9",
            statistic="max |mu - (1 - 1/(2(k+1)))| over the first five blocks k = 0..4 (exact: "
            "0); also every t < 20,000 against eq. (5) as printed, the cap and the final phase",
            details={
                "mu_first_five_blocks": first_blocks,
                "closed_form_vs_printed_max_abs": as_printed,
                "constant_within_blocks": within_blocks,
                "capped": cap,
                "final_phase_0.9": final_phase,
            },
        )
    )


# -- S1.sparse-init ---------------------------------------------------------------------------
def autoencoder_widths() -> tuple[int, ...]:
    return ENCODER + ENCODER[-2::-1]


def init_params(gens, scales, device) -> list[torch.Tensor]:
    """[W1, b1, ...] stacked over runs: sparse W (runs, n_in, n_out), zero b (runs, 1, n_out)."""
    inits = [functools.partial(sparse_, n_nonzero=NONZERO, scale=s) for s in scales]
    return stacked_params(autoencoder_widths(), inits, gens, device)


def test_sparse_init_gives_every_unit_exactly_15_unit_gaussian_inputs(budget, seeds, claim):
    runs = seeds(budget.seeds)
    params = init_params([torch.Generator().manual_seed(s) for s in runs], [1.0] * len(runs), "cpu")
    weights, biases = params[0::2], params[1::2]
    counts = torch.cat([(w != 0).sum(dim=1) for w in weights], dim=1)  # (runs, every unit)
    values = torch.cat([w[w != 0] for w in weights]).double()
    var, se = float(values.var()), float((values**2).std()) / math.sqrt(values.numel())
    holds = (
        bool((counts == NONZERO).all())
        and abs(var - 1) <= 4 * se
        and all(bool((b == 0).all()) for b in biases)
    )
    claim(
        exact_claim(
            holds,
            counts.double().mean(dim=1).tolist(),
            id="S1.sparse-init",
            source=f"{SOURCE}, section 3.1",
            statement="each unit gets exactly 15 non-zero incoming weights drawn from N(0, 1); "
            "biases 0",
            published=NONZERO,
            statistic=f"per seed: mean non-zero incoming weights per unit over the "
            f"{counts.shape[1]} units of {'-'.join(map(str, autoencoder_widths()))}; every unit "
            "must have exactly 15",
            interval=(NONZERO, NONZERO),
            details={
                "min_count": int(counts.min()),
                "max_count": int(counts.max()),
                "nonzero_mean": float(values.mean()),
                "nonzero_var": var,
                "var_se": se,
            },
        )
    )


# -- S1.theorem -------------------------------------------------------------------------------
def trajectory(theta0, v0, grad, *, lr, mu, nesterov) -> torch.Tensor:
    """(steps + 1, n) positions of CM or NAG from (theta0, v0), float64."""
    theta, v = theta0.clone(), v0.clone()
    out = [theta.clone()]
    for _ in range(THEOREM_STEPS):
        momentum_step([theta], [v], lambda p: [grad(p[0])], lr=lr, mu=mu, nesterov=nesterov)
        out.append(theta.clone())
    return torch.stack(out)


@pytest.mark.parametrize("kind", ["diagonal", "rotated"])
def test_a_nesterov_step_is_a_classical_step_with_momentum_mu_times_one_minus_eps_lambda(
    kind, nnsanity_seed, claim
):
    g = torch.Generator().manual_seed(nnsanity_seed)
    n, lr, mu = 8, 0.05, 0.9
    lam = torch.logspace(-1, 1, n, dtype=torch.float64)  # eps * lambda from 0.005 to 0.5
    theta0 = torch.randn(n, generator=g, dtype=torch.float64)
    v0 = torch.randn(n, generator=g, dtype=torch.float64) * 0.1
    if kind == "diagonal":
        q, b = torch.eye(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    else:  # A = Q diag(lambda) Q^T, a random rotation, and a linear term b
        q = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64)).Q
        b = torch.randn(n, generator=g, dtype=torch.float64)
    a = q @ torch.diag(lam) @ q.T
    optimum = torch.linalg.solve(a, -b)
    nag = trajectory(theta0, v0, lambda th: a @ th + b, lr=lr, mu=mu, nesterov=True)
    along = (nag - optimum) @ q  # coordinates along each eigendirection, (steps + 1, n)
    c0, w0 = (theta0 - optimum) @ q, v0 @ q
    cm = {}
    for name, momentum in (("corrected", mu * (1 - lr * lam)), ("plain", mu * torch.ones(n))):
        cm[name] = torch.stack(
            [
                trajectory(
                    c0[i : i + 1],
                    w0[i : i + 1],
                    lambda c, i=i: lam[i] * c,
                    lr=lr,
                    mu=float(momentum[i]),
                    nesterov=False,
                )[:, 0]
                for i in range(n)
            ],
            dim=1,
        )
    scale = float(c0.abs().max())
    deviation = float((along - cm["corrected"]).abs().max()) / scale
    control = float((along - cm["plain"]).abs().max()) / scale
    tol = THEOREM_TOL[kind]
    claim(
        exact_claim(
            deviation < tol and control > 1e-3,
            [deviation],
            id=f"S1.theorem-{kind}",
            source=f"{SOURCE}, Theorem 2.1",
            statement="on a quadratic, NAG equals CM with momentum mu(1 - eps lambda) along each "
            "eigendirection of curvature lambda",
            published=0.0,
            statistic=f"max |NAG - CM(mu(1 - eps lambda))| over {THEOREM_STEPS} steps and {n} "
            "eigendirections, relative to the largest starting coordinate; float64",
            interval=(0.0, tol),
            details={
                "control_cm_with_plain_mu": control,
                "lr": lr,
                "mu": mu,
                "eps_lambda": [lr * float(x) for x in lam],
            },
        )
    )


# -- S1.momentum and S1.bad-init: the autoencoder ---------------------------------------------
def reconstruct(params, x) -> torch.Tensor:
    """Logistic layers except the linear code layer; x: (runs, n, 784)."""
    code = len(ENCODER) - 2  # index of the layer that outputs the code
    h = x
    for i, (w, b) in enumerate(zip(params[0::2], params[1::2])):
        h = torch.baddbmm(b, h, w)
        if i != code:
            h = torch.sigmoid(h)
    return h


def squared_error(params, x) -> torch.Tensor:
    """Per-run mean over images of the per-image sum of squared errors, (runs,)."""
    return ((reconstruct(params, x) - x) ** 2).sum(-1).mean(-1)


@dataclasses.dataclass(frozen=True)
class Runs:
    names: list[str]  # one per run: the arm
    seeds: list[int]
    error: list[float]  # final training error on EVAL images
    steps: list[int]
    curve: torch.Tensor  # (points, runs): training error on CURVE images
    mean_image_error: float

    def arm(self, name: str) -> list[float]:
        """The final errors of one arm, in seed order."""
        return [e for n, e in zip(self.names, self.error) if n == name]


def train_autoencoders(data, budget: Budget, seeds, device, progress) -> Runs:
    """Every arm x seed stacked along dim 0 and trained together with one bmm per layer."""
    names = [name for name in ARMS for _ in seeds]
    run_seeds = [s for _ in ARMS for s in seeds]
    lr, mu_max, scales = zip(*(ARMS[name] for name in names))
    gens = [torch.Generator().manual_seed(s) for s in run_seeds]  # same seed: same init, order
    params = init_params(gens, scales, device)
    velocities = [torch.zeros_like(p) for p in params]
    runs = len(names)
    lr_t = torch.tensor(lr, device=device).view(runs, 1, 1)
    x_all = data.train_x.to(device)
    curve_x = x_all[:CURVE].expand(runs, -1, -1)
    steps, curve = [], []
    batches = stacked_batches(len(x_all), BATCH, gens, budget.updates, device)
    for t, idx in enumerate(batches):
        if t % budget.record_every == 0:
            with torch.no_grad():
                curve.append(squared_error(params, curve_x).cpu())
            steps.append(t)
            progress("S1 autoencoders", t, budget.updates, "updates")
        x = x_all[idx]  # (runs, 200, 784)
        mu = [sutskever_momentum(t, m, total_updates=budget.updates) for m in mu_max]
        mu_t = torch.tensor(mu, device=device).view(runs, 1, 1)

        def grad_fn(point, x=x):
            for p in point:
                p.requires_grad_()
            # Summed over runs, so each run gets the gradient of its own batch mean.
            return torch.autograd.grad(squared_error(point, x).sum(), point)

        # mu = 0 makes NAG plain SGD, so every arm takes the same kind of step.
        momentum_step(params, velocities, grad_fn, lr=lr_t, mu=mu_t, nesterov=True)
    with torch.no_grad():
        curve.append(squared_error(params, curve_x).cpu())
        steps.append(budget.updates)
        error = squared_error(params, x_all[:EVAL].expand(runs, -1, -1)).tolist()
    x_eval = data.train_x[:EVAL]
    baseline = float(((x_eval - data.train_x.mean(0)) ** 2).sum(-1).mean())
    return Runs(names, run_seeds, error, steps, torch.stack(curve), baseline)


@pytest.fixture(scope="module")
def autoencoders(budget, seeds, nnsanity_mnist, nnsanity_device, nnsanity_progress) -> Runs:
    """The three arms (SGD, NAG, NAG from the x0.25 init) for every seed, trained together."""
    return train_autoencoders(
        nnsanity_mnist, budget, seeds(budget.seeds), nnsanity_device, nnsanity_progress
    )


def test_nesterov_with_the_schedule_reaches_a_much_lower_error_than_sgd(
    budget, autoencoders, claim
):
    runs = autoencoders
    sgd, nag = runs.arm("SGD"), runs.arm("NAG")
    ratio = sum(nag) / sum(sgd)  # ratio of the means
    # Same seed, same init and data order: a paired test, with all three outcomes.
    ordering = ordering_claim(
        sgd,
        nag,
        paired=True,
        alpha=ALPHA,
        id="S1.momentum",
        source=f"{SOURCE}, Table 1 (MNIST)",
        statement="NAG with the momentum schedule and the sparse init reaches a much lower "
        "training error than plain SGD in the same number of updates",
        published=PUBLISHED_TABLE1["0.9N"] / PUBLISHED_TABLE1["SGD"],
    )
    significant = ordering.verdict is Verdict.REPRODUCED
    c = dataclasses.replace(
        ordering,
        measured=[n / s for n, s in zip(nag, sgd)],
        statistic=f"training error NAG / SGD per seed after {budget.updates} updates of 200; "
        f"one-sided paired t-test p = {ordering.details['p_ordering']:.2g}; pass: SGD > NAG "
        f"significant and mean ratio <= {MUCH_LOWER}",
        verdict=Verdict.REPRODUCED
        if significant and ratio <= MUCH_LOWER
        else (Verdict.NOT_REPRODUCED if significant else ordering.verdict),
        interval=(0.0, MUCH_LOWER),
        details={
            **ordering.details,
            "SGD_error": sgd,
            "NAG_error": nag,
            "SGD": str(summarize(sgd)),
            "NAG": str(summarize(nag)),
            "ratio_of_means": ratio,
            "nag_significantly_lower": significant,
            "largest_mu_reached": max(
                sutskever_momentum(t, MU_MAX, total_updates=budget.updates)
                for t in range(budget.updates)
            ),
            "mean_image_error": runs.mean_image_error,
            "published_errors": PUBLISHED_TABLE1,
            "arms": {k: dict(zip(("lr", "mu_max", "init_scale"), v)) for k, v in ARMS.items()},
        },
    )
    # Measured: NAG is significantly lower at both budgets, but not "much lower" by the ratio
    # declared beforehand: 0.66 +- 0.02 of SGD's error after 1,000 updates (smoke, 2 seeds,
    # p = 0.012) and 0.53 +- 0.01 after 3,000 (full, 3 seeds, p = 0.0005), against the paper's
    # 0.35 after 750,000. The gap was still widening when the runs stopped.
    claim(c, expect=Verdict.NOT_REPRODUCED)
    assert significant, c


def test_a_sparse_init_scaled_by_a_quarter_stays_stuck_on_the_mean_image(
    budget, autoencoders, claim
):
    runs = autoencoders
    bad = runs.arm("NAG x0.25 init")
    relative = [e / runs.mean_image_error for e in bad]  # one per seed
    c = Claim(
        id="S1.bad-init",
        source=f"{SOURCE}, Table 3",
        statement="NAG from the sparse init scaled by 0.25 fails: its training error stays high",
        published="16 (x0.25) vs 0.074 (x1)",
        measured=relative,
        statistic=f"training error / mean-image error ({runs.mean_image_error:.4g}) per seed "
        f"after {budget.updates} updates; stuck: >= {STUCK} in every seed",
        verdict=Verdict.REPRODUCED if min(relative) >= STUCK else Verdict.NOT_REPRODUCED,
        interval=None,  # half-open, [0.9, inf): stated in the statistic (JSON has no inf)
        details={
            "error": bad,
            "good_init_NAG_error": runs.arm("NAG"),
            "plateau_left_at_update": [
                next(
                    (
                        s
                        for s, e in zip(runs.steps, runs.curve[:, i].tolist())
                        if e < STUCK * runs.mean_image_error
                    ),
                    None,
                )
                for i, n in enumerate(runs.names)
                if n == "NAG x0.25 init"
            ],
        },
    )
    # Measured: stuck on the mean image through 1,000 updates (smoke: 1.00 of its error in both
    # seeds), but at the full budget every seed left the plateau after 1,800-1,900 updates
    # and ended at 0.58 +- 0.02 of it after 3,000 (the good init: 0.19). With 8 weight layers and
    # 3,000 updates the x0.25 init delays learning; it does not prevent it.
    expected = Verdict.REPRODUCED if budget.updates <= SMOKE.updates else Verdict.NOT_REPRODUCED
    claim(c, expect=expected)


def test_figure(autoencoders, figures):
    """Training error against updates, first seed of each arm, and the mean-image plateau."""
    runs = autoencoders
    path = autoencoder_training(
        runs.steps,
        {name: runs.curve[:, runs.names.index(name)] for name in ARMS},
        runs.mean_image_error,
        f"Autoencoder {'-'.join(map(str, autoencoder_widths()))}, sparse init",
        figures / "S1_autoencoder_training.png",
    )
    assert path.stat().st_size > 0
