"""S1: Sutskever, Martens, Dahl & Hinton (2013), momentum and initialisation, scaled down.

Source: I. Sutskever, J. Martens, G. Dahl and G. Hinton, "On the importance of initialization
and momentum in deep learning", ICML 2013: section 2 (eqs. 1-5, Theorem 2.1), section 3.1 (the
sparse init, the schedule's final phase), Table 1 (MNIST autoencoder) and Table 3 (init scale).
Here on MNIST in network2's split, float32, through nnsanity.repro.momentum (their CM and NAG,
in their own variables) and nnsanity.repro.initialisers.sparse_.

Identities (exact): schedule: eq. (5) gives 0.5, 0.75, 0.833, 0.875, 0.9 in the first blocks of
250 updates, capped at mu_max, and 0.9 for the last 1,000 updates (closed form against the
printed formula within 4 ulp for every t < 20,000); sparse-init: every unit has exactly 15
non-zero N(0, 1) incoming weights (variance within 4 SE of 1), biases 0; theorem-*: a NAG step
is a CM step with momentum mu(1 - eps lambda) along each eigendirection of a quadratic (100
steps, float64, below 1e-12 diagonal / 1e-10 rotated; CM with the plain mu must differ at O(1)).

Autoencoder claims (criteria declared before their first run; Table 3's on 2026-11-29):
encoder 784-250-100-50-30, decoder mirrored (the paper's 8 weight layers at a quarter of the
width), logistic units but the linear code layer, squared error, batches of 200, sparse init;
measured: per-image squared error on the first 10,000 training images after the run, per seed;
every arm of a seed shares its data order.
- momentum: NAG with the schedule (mu_max 0.99) against SGD: reproduced when SGD's error is
  significantly higher (one-sided paired t-test) and the mean ratio NAG/SGD <= 0.5 (Table 1:
  0.9N/SGD = 0.48; eq. (5) never passes 0.9375 at our budget, so 0.9N is the comparable column);
- bad-init (Table 3, x0.25 and x0.5 "fail", error 16): the final error is >= 0.9 of the
  mean-image plateau's in every seed;
- table3-x2: x2 is as good as x1 (0.083 vs 0.074): TOST on log(error x2 / error x1), margin
  log(1.5) (Table 3's x4 is 4.7 times x1, its x2 1.12);
- table3-x4: x4 ends worse than x1 (0.35 vs 0.074): one-sided paired t-test.
- Precondition (declared 2026-12-07, issue 17): Tables 1 and 3 are errors after 750,000
  updates, so each claim is testable only when the arms it compares have converged: every
  seed's error fell by less than 10% over the last fifth of our updates. Otherwise the claim is
  "not testable at this budget", and Table 3's scaled arms are not trained at all (their claims
  all compare with the unscaled NAG arm, whose convergence decides).

Budgets: FULL is scaled: 3,000 updates of the paper's 750,000 (0.4%), 3 seeds per arm; SGD and
NAG always (Table 1, and the reference of Table 3), the four scaled inits only when the
reference converged. SMOKE = None for the autoencoders; the identities run at every budget.

Measured before the precondition (2026-11-30, 3 seeds, 8982f0b; 2026-11-26): after 3,000
updates every arm was still falling (x1 10.0-10.2 against the paper's 0.074): momentum NAG/SGD
0.53 ± 0.01, the gap still widening; x0.25 left the mean-image plateau at ~1,850 updates and
x0.5 at 400-500; x2 ended 3.0-3.3 times x1; x4 above x1. Those verdicts were about our budget,
not the paper's claims: under the precondition none is testable here.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
import pytest
import torch
from scipy import stats

from nnsanity.repro.claims import (
    FLIP_DRAWS,
    Claim,
    Verdict,
    equivalence_claim,
    every_seed_claim,
    exact_claim,
    not_testable,
    ordering_claim,
)
from nnsanity.repro.initialisers import sparse_
from nnsanity.repro.momentum import BLOCK, eq5, momentum_step, sutskever_momentum
from nnsanity.repro.parallel import map_processes, processes_for
from nnsanity.repro.plots import autoencoder_training
from nnsanity.repro.plugin import not_testable as known_not_testable
from reproductions._nets import stacked_batches, stacked_params

SOURCE = "Sutskever, Martens, Dahl & Hinton, ICML 2013"


# -- the full setting; the smoke budget is derived from it ------------------------------------
@dataclasses.dataclass(frozen=True)
class Budget:
    updates: int = 3_000  # on batches of 200 (paper: 750,000)
    seeds: int = 3  # per arm
    record_every: int = 100  # updates between training-curve points


FULL = Budget()
SMOKE = None
NOT_AT_SMOKE = "the autoencoders need the full 3,000 updates; see the claim card"

ENCODER = (784, 250, 100, 50, 30)  # paper: 784-1000-500-250-30; the decoder mirrors it
BATCH = 200
NONZERO = 15  # incoming weights per unit in the sparse init
SPARSE_SEEDS = 3  # inits checked by S1.sparse-init
MU_MAX = 0.99  # Table 1's best MNIST setting (0.99N)
FINAL_MU, FINAL_UPDATES = 0.9, 1_000
NAG_LR = 0.05  # from the sweep in the notes at the end of this file
CONVERGED = 0.1  # relative drop of the error over the last fifth of the run: converged below
CONVERGED_SPAN = 0.2
TABLE1_ARMS = ("SGD", "NAG")
TABLE3_ARMS = ("NAG x0.25 init", "NAG x0.5 init", "NAG x2 init", "NAG x4 init")
ARMS = {  # name: (learning rate, mu_max, init scale)
    "SGD": (0.2, 0.0, 1.0),
    "NAG": (NAG_LR, MU_MAX, 1.0),
    "NAG x0.25 init": (NAG_LR, MU_MAX, 0.25),
    "NAG x0.5 init": (NAG_LR, MU_MAX, 0.5),
    "NAG x2 init": (NAG_LR, MU_MAX, 2.0),
    "NAG x4 init": (NAG_LR, MU_MAX, 4.0),
}
EVAL = 10_000  # training images the final error is measured on
CURVE = 1_000  # training images for the training curve
ALPHA = 0.05
MUCH_LOWER = 0.5  # NAG / SGD ratio for "much lower"
STUCK = 0.9  # final error / mean-image error for "stuck high"
AS_GOOD = math.log(1.5)  # margin on log(error ratio) for "as good as"
PUBLISHED_TABLE1 = {"SGD": 2.1, "0.9N": 1.0, "0.99N": 0.73}  # training squared error, MNIST
PUBLISHED_TABLE3 = {0.25: 16.0, 0.5: 16.0, 1.0: 0.074, 2.0: 0.083, 4.0: 0.35}
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


def test_sparse_init_gives_every_unit_exactly_15_unit_gaussian_inputs(seeds, claim):
    runs = seeds(SPARSE_SEEDS)
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
    kind, seeds, claim
):
    g = torch.Generator().manual_seed(seeds(1)[0])
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


def train_autoencoders(data, budget: Budget, names, seeds, device, tick) -> Runs:
    """The given (arm, seed) runs stacked along dim 0, trained together with one bmm per layer."""
    lr, mu_max, scales = zip(*(ARMS[name] for name in names))
    gens = [torch.Generator().manual_seed(s) for s in seeds]  # same seed: same init, order
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
            tick(budget.record_every if t else 0)
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
    return Runs(list(names), list(seeds), error, steps, torch.stack(curve), baseline)


def train_arms(arms, budget, run_seeds, mnist, device, progress) -> Runs:
    """Every given arm x seed, in two stacks trained side by side in two processes."""
    names = [name for name in arms for _ in run_seeds]
    all_seeds = [s for _ in arms for s in run_seeds]
    halves = [list(range(0, len(names), 2)), list(range(1, len(names), 2))]
    total = 2 * budget.updates

    def half(rows: list[int], tick) -> Runs:
        return train_autoencoders(
            mnist, budget, [names[i] for i in rows], [all_seeds[i] for i in rows], device, tick
        )

    parts = map_processes(
        half,
        halves,
        groups=[[0], [1]],
        processes=processes_for(device),
        progress=lambda done: progress("S1 autoencoders", done, total, "updates"),
    )
    order = [i for rows in halves for i in rows]
    back = sorted(range(len(order)), key=order.__getitem__)  # stack position of run i

    def merged(field: str) -> list:
        values = [v for part in parts for v in getattr(part, field)]
        return [values[j] for j in back]

    curve = torch.cat([part.curve for part in parts], dim=1)[:, back]
    return Runs(
        merged("names"),
        merged("seeds"),
        merged("error"),
        parts[0].steps,
        curve,
        parts[0].mean_image_error,
    )


@pytest.fixture(scope="module")
def autoencoders(budget, seeds, nnsanity_mnist, nnsanity_device, nnsanity_progress) -> Runs:
    """Table 1's arms (SGD and NAG from the unscaled sparse init) x seeds."""
    args = (seeds(budget.seeds), nnsanity_mnist, nnsanity_device, nnsanity_progress)
    return train_arms(TABLE1_ARMS, budget, *args)


@dataclasses.dataclass(frozen=True)
class Convergence:
    """Whether arms have converged: per seed, the relative drop of the training error over the
    last CONVERGED_SPAN of the updates; converged when every seed's drop is below CONVERGED."""

    drops: dict[str, list[float]]  # arm -> per seed

    @property
    def converged(self) -> bool:
        return all(d < CONVERGED for v in self.drops.values() for d in v)

    def why(self) -> str:
        worst = {k: max(v) for k, v in self.drops.items()}
        return (
            "the paper's errors are after 750,000 updates; ours after 3,000 have not converged: "
            + ", ".join(f"{k} still fell {100 * d:.0f}%" for k, d in worst.items())
            + f" over the last {CONVERGED_SPAN:.0%} of the updates (converged: < "
            f"{CONVERGED:.0%} in every seed)"
        )


def convergence(runs: Runs, arms) -> Convergence:
    start = min(
        range(len(runs.steps)),
        key=lambda i: abs(runs.steps[i] - (1 - CONVERGED_SPAN) * runs.steps[-1]),
    )
    drops = {}
    for name in arms:
        cols = [i for i, n in enumerate(runs.names) if n == name]
        c = runs.curve[:, cols].double()
        drops[name] = ((c[start] - c[-1]) / c[start]).tolist()
    return Convergence(drops)


@pytest.fixture(scope="module")
def table3(budget, seeds, autoencoders, nnsanity_mnist, nnsanity_device, nnsanity_progress):
    """Table 3's scaled inits x seeds, trained only when the unscaled NAG arm has converged
    (their claims are about errors after training; otherwise they are not testable and the
    arms are not run): (runs or None, the reference's convergence)."""
    ref = convergence(autoencoders, ["NAG"])
    if not ref.converged:
        return None, ref
    args = (seeds(budget.seeds), nnsanity_mnist, nnsanity_device, nnsanity_progress)
    return train_arms(TABLE3_ARMS, budget, *args), ref


def details(runs: Runs) -> dict:
    return {
        "error_per_arm": {name: runs.arm(name) for name in ARMS if runs.arm(name)},
        "mean_image_error": runs.mean_image_error,
        "arms": {k: dict(zip(("lr", "mu_max", "init_scale"), v)) for k, v in ARMS.items()},
        "published_table3": PUBLISHED_TABLE3,
    }


def much_lower(sgd: np.ndarray, diff: np.ndarray) -> np.ndarray:
    """Row-wise S1.momentum verdicts from SGD's errors and the per-seed SGD - NAG differences,
    (sets, seeds) each: SGD significantly higher and mean NAG / mean SGD <= 0.5."""
    n = diff.shape[-1]
    t = diff.mean(-1) / (diff.std(-1, ddof=1) / math.sqrt(n))
    higher, lower = stats.t.sf(t, n - 1) < ALPHA, stats.t.cdf(t, n - 1) < ALPHA
    ratio = 1 - diff.mean(-1) / sgd.mean(-1)
    reproduced = higher & (ratio <= MUCH_LOWER)
    return np.where(
        reproduced, "reproduced", np.where(higher | lower, "not reproduced", "inconclusive")
    )


ARCHITECTURE_CHANGE = (
    "2026-11-26: the autoencoder was deepened to the paper's 8 weight layers "
    "(784-250-100-50-30, mirrored) after a 3-layer encoder left the x0.25 init unstuck"
)
TESTABLE_CHANGE = (
    "; 2026-12-07: testable only when the compared arms have converged (Table 1 and 3 are "
    "errors after 750,000 updates); before, the verdict at 0.4% of the updates was reported as "
    "the claim's (issue 17)"
)


def untestable(why: str, measured, **fields) -> Claim:
    """A Table 1 or Table 3 claim whose precondition (converged arms) failed."""
    return Claim(
        measured=measured,
        statistic="testable when the compared arms have converged: each seed's error fell by "
        f"less than {CONVERGED:.0%} over the last {CONVERGED_SPAN:.0%} of the updates; "
        "measured: the reference arm's drop per seed",
        verdict=Verdict.NOT_TESTABLE,
        estimate=max(measured),
        estimator="largest drop",
        interval=(0.0, CONVERGED),
        interval_kind="the drop a converged arm stays under",
        fidelity="scaled",
        details={"why": why},
        **fields,
    )


@known_not_testable("after 3,000 updates SGD and NAG still fall: not converged")
def test_nesterov_with_the_schedule_reaches_a_much_lower_error_than_sgd(
    budget, autoencoders, claim
):
    runs = autoencoders
    sgd, nag = np.array(runs.arm("SGD")), np.array(runs.arm("NAG"))  # per seed
    diff = sgd - nag  # same seed, same init and data order: paired
    verdict = Verdict(much_lower(sgd[None], diff[None])[0])
    rng = np.random.default_rng(0)
    fresh = [rng.normal(v.mean(), v.std(ddof=1), (FLIP_DRAWS, v.size)) for v in (sgd, diff)]
    p = float(stats.ttest_1samp(diff, 0.0, alternative="greater").pvalue)
    c = Claim(
        id="S1.momentum",
        source=f"{SOURCE}, Table 1 (MNIST)",
        statement="NAG with the momentum schedule and the sparse init reaches a much lower "
        "training error than plain SGD in the same number of updates (NAG/SGD <= 0.5)",
        published=PUBLISHED_TABLE1["0.9N"] / PUBLISHED_TABLE1["SGD"],
        measured=(nag / sgd).tolist(),
        statistic=f"training error NAG / SGD per seed after {budget.updates} updates of "
        f"200; reproduced if SGD > NAG is significant (one-sided paired t-test at "
        f"{ALPHA}, p = {p:.2g}) and the ratio of the means <= {MUCH_LOWER}; not reproduced "
        "if either direction is significant otherwise; else inconclusive",
        verdict=verdict,
        estimate=float(nag.mean() / sgd.mean()),
        estimator="ratio of means",
        interval=(0.0, MUCH_LOWER),
        interval_kind="the range the ratio must reach",
        fidelity="scaled",
        flip=float(np.mean(much_lower(*fresh) != verdict)),
        details={
            **details(runs),
            "p_nag_lower": p,
            "largest_mu_reached": max(
                sutskever_momentum(t, MU_MAX, total_updates=budget.updates)
                for t in range(budget.updates)
            ),
            "published_errors": PUBLISHED_TABLE1,
        },
        changed=ARCHITECTURE_CHANGE + TESTABLE_CHANGE,
    )
    both = convergence(runs, TABLE1_ARMS)
    claim(c if both.converged else not_testable(c, both.why()))


def plateau_left_at(runs: Runs, name: str) -> list[int | None]:
    """Per seed of an arm: the first recorded update below STUCK x the mean-image error."""
    return [
        next(
            (
                s
                for s, e in zip(runs.steps, runs.curve[:, i].tolist())
                if e < STUCK * runs.mean_image_error
            ),
            None,
        )
        for i, n in enumerate(runs.names)
        if n == name
    ]


TABLE3_IDS = {0.25: "S1.bad-init", 0.5: "S1.table3-x0.5", 2.0: "S1.table3-x2", 4.0: "S1.table3-x4"}


def table3_untestable(scale: float, ref: Convergence, statement: str) -> Claim:
    return untestable(
        ref.why() + "; the scaled arms are not trained at this budget",
        ref.drops["NAG"],
        id=TABLE3_IDS[scale],
        source=f"{SOURCE}, Table 3",
        statement=statement,
        published=f"{PUBLISHED_TABLE3[scale]:g} (x{scale:g}) vs 0.074 (x1)",
        changed=ARCHITECTURE_CHANGE + TESTABLE_CHANGE,
    )


@pytest.mark.parametrize("scale", [0.25, 0.5])
@known_not_testable("the unscaled NAG arm has not converged after 3,000 updates")
def test_a_sparse_init_scaled_below_one_half_stays_stuck_on_the_mean_image(
    scale, budget, table3, claim
):
    runs, ref = table3
    statement = (
        f"NAG from the sparse init scaled by {scale:g} fails: its training error stays on the "
        f"mean-image plateau ({budget.updates} updates)"
    )
    if runs is None:
        claim(table3_untestable(scale, ref, statement))
        return
    name = f"NAG x{scale:g} init"
    relative = [e / runs.mean_image_error for e in runs.arm(name)]  # one per seed
    claim(
        every_seed_claim(
            relative,
            low=STUCK,
            id=TABLE3_IDS[scale],
            source=f"{SOURCE}, Table 3",
            statement=statement,
            published=f"{PUBLISHED_TABLE3[scale]:g} (x{scale:g}) vs 0.074 (x1)",
            fidelity="scaled",
            details={**details(runs), "plateau_left_at_update": plateau_left_at(runs, name)},
            changed=ARCHITECTURE_CHANGE + TESTABLE_CHANGE,
        )
    )


@known_not_testable("the unscaled NAG arm has not converged after 3,000 updates")
def test_a_sparse_init_scaled_by_two_is_as_good_as_the_unscaled_one(autoencoders, table3, claim):
    runs, ref = table3
    statement = (
        "the sparse init scaled by 2 trains as well as the unscaled one: log(error x2 / error "
        "x1) within log(1.5)"
    )
    if runs is None:
        claim(table3_untestable(2.0, ref, statement))
        return
    x1 = autoencoders.arm("NAG")
    log_ratio = [math.log(a / b) for a, b in zip(runs.arm("NAG x2 init"), x1)]
    claim(
        equivalence_claim(
            log_ratio,
            target=0.0,
            margin=AS_GOOD,
            id=TABLE3_IDS[2.0],
            source=f"{SOURCE}, Table 3",
            statement=statement,
            published=math.log(PUBLISHED_TABLE3[2.0] / PUBLISHED_TABLE3[1.0]),
            fidelity="scaled",
            details=details(runs),
            changed=ARCHITECTURE_CHANGE + TESTABLE_CHANGE,
        )
    )


@known_not_testable("the unscaled NAG arm has not converged after 3,000 updates")
def test_a_sparse_init_scaled_by_four_ends_worse_than_the_unscaled_one(autoencoders, table3, claim):
    runs, ref = table3
    statement = (
        "the sparse init scaled by 4 ends with a higher training error than the unscaled one"
    )
    if runs is None:
        claim(table3_untestable(4.0, ref, statement))
        return
    claim(
        ordering_claim(
            runs.arm("NAG x4 init"),
            autoencoders.arm("NAG"),
            paired=True,
            id=TABLE3_IDS[4.0],
            source=f"{SOURCE}, Table 3",
            statement=statement,
            published="0.35 > 0.074",
            fidelity="scaled",
            details=details(runs),
            changed=ARCHITECTURE_CHANGE + TESTABLE_CHANGE,
        )
    )


def test_figure(autoencoders, figures):
    """Training error against updates per arm (mean and range over seeds), the plateau."""
    runs = autoencoders
    curves = {
        name: runs.curve[:, [i for i, n in enumerate(runs.names) if n == name]]
        for name in TABLE1_ARMS
    }
    path = autoencoder_training(
        runs.steps,
        curves,
        runs.mean_image_error,
        f"Autoencoder {'-'.join(map(str, autoencoder_widths()))}, sparse init",
        figures / "S1_autoencoder_training.png",
    )
    assert path.stat().st_size > 0


# Notes. Architecture: the sparse init fixes each unit's fan-in at 15, so width changes the
# signal's propagation little while its cost grows linearly; depth is what the init claims turn
# on, so the paper's depth is kept. A first try with a 3-layer encoder, 784-250-100-30, left the
# x0.25 init unstuck: 31.4 against the mean image's 52.4 after 1,000 updates, seed 0. Learning
# rates were picked once at 1,000 updates (seed 0, lowest final training error) from {0.01,
# 0.05, 0.1, 0.2}, extended by one step when the best was on the edge: SGD 47.7, 33.6, 31.2,
# 30.4, and 52.6 at 0.4 (on the plateau until ~1,400 updates): 0.2; NAG 30.4, 19.7, 52.5
# (stuck), 52.5 (stuck): 0.05. Every scaled-init arm uses NAG's rate; the paper, too, took each
# method's best rate. S1.momentum first used a Welch test and read "not significant" as within
# noise without checking the reverse; the paired test with three outcomes replaced it after
# review, before the 2026-11-26 full run.
