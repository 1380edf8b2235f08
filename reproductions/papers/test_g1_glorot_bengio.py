"""G1: Glorot & Bengio (2010), sigmoid saturation and the normalised initialisation, scaled down.

Source: X. Glorot and Y. Bengio, "Understanding the difficulty of training deep feedforward
neural networks", AISTATS 2010: section 3.1 and Fig. 2 (sigmoid saturation); section 4.2,
eqs. (1), (12)-(16), Figs. 6-7 and the Jacobian's singular values (the normalised init);
Table 1 (test errors). Here on MNIST in network2's split, float32, fully connected nets with a
softmax output trained on the mean NLL by plain SGD on mini-batches of 10, biases 0.

Claims, each measured per seed (seeds from --nnsanity-seed), every criterion declared before
its first run (the ones new on 2026-11-29 on that day):
- saturation: with sigmoid units and the standard init U[-1/sqrt(n), 1/sqrt(n)] the top hidden
  layer's mean activation (300 fixed test images) falls below 0.1 while layers 1-3 stay above
  0.5; ordering: there mean(h3) > mean(h2) > mean(h1). Every seed (margins in details).
- nvar (identities): n_in Var[W] = 1/3 (standard), Var[W] = 2/(n_in+n_out) (normalised), by
  Monte Carlo on 784x1000 matrices within 4 standard errors.
- gradvar and actvar (tanh, 5 hidden layers of 1,000, at init): the per-layer factor
  g = (Var_1/Var_5)^(1/4) of back-propagated gradients dC/ds, and g' = (Var_5/Var_1)^(1/4) of
  activations: standard init below 0.5 (theory 1/3: they shrink), normalised in [0.7, 1/0.7]
  (theory 1: about constant), every seed.
- jacobian: the average singular value of the layer-to-layer Jacobians dh^{i+1}/dh^i at init
  is about 0.5 (standard) and 0.8 (normalised): TOST with a margin of ±0.1 (the two values are
  0.3 apart) on the per-seed averages.
- saturation-slows-learning (2026-12-07, declared before its first run; the data of the
  Table 1 arms): after the same updates the sigmoid nets' test error is above tanh-N's
  (one-sided Welch test), testable when the tanh-N arm has left chance.
- table1: sigmoid ends with a higher test error than tanh-N (Table 1: 2.21% vs 1.64%), one-sided
  Welch test; testable only when both arms have left chance (test error below 50%): otherwise
  "not testable at this budget" (a net at chance says nothing about Table 1's converged
  errors). table1-sigmoid-error: Table 1's 2.21% against the 95% prediction interval of ours,
  testable under the same precondition for the sigmoid arm.

Budgets: FULL is scaled (hidden layers of 400, not 1,000; 10,000 updates, 2 epochs, where the
paper trains to convergence); SMOKE: width 150, 5,000 updates, 3 seeds, 300 images for the
init statistics (width 1,000 at both).

Not testable at our budgets (measured, see the report): the sigmoid nets are still on the
plateau of Fig. 2, at chance (89-90% test error after 10,000 updates, 0.2% of the paper's), so
neither Table 1 claim is tested. Changed: table1 compared a net at chance with a trained one and
could not fail until 2026-11-29 (then "inconclusive" at chance); both Table 1 claims were
reported "not reproduced"/"inconclusive" at chance until 2026-12-07, a verdict about the budget,
not the claim (issue 17).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import pytest
import torch
from torch.nn import functional as F

from nnsanity.repro.claims import (
    equivalence_claim,
    every_seed_claim,
    exact_claim,
    not_testable,
    ordering_claim,
    single_run_claim,
)
from nnsanity.repro.initialisers import (
    normalised_,
    normalised_variance,
    standard_,
    standard_variance,
)
from nnsanity.repro.parallel import map_processes, processes_for
from nnsanity.repro.plots import activation_saturation, gradient_variances
from nnsanity.repro.plugin import not_testable as known_not_testable
from nnsanity.repro.stats import summarize
from reproductions._nets import stacked_batches, stacked_params

SOURCE = "Glorot & Bengio, AISTATS 2010"


# -- the full setting; the smoke budget is derived from it ------------------------------------
@dataclasses.dataclass(frozen=True)
class Budget:
    width: int = 400  # hidden units per layer for Fig. 2 and Table 1 (paper: 1,000)
    updates: int = 10_000  # SGD updates on mini-batches of 10: 2 epochs of 50k images
    seeds: int = 5
    record_every: int = 100  # updates between activation snapshots
    init_width: int = 1_000  # Figs. 6-7 at initialisation: the paper's width
    init_examples: int = 1_000
    jacobian_examples: int = 4  # images whose Jacobians' singular values are averaged


FULL = Budget()
SMOKE = dataclasses.replace(
    FULL, width=150, updates=5_000, seeds=3, init_examples=300, jacobian_examples=2
)

FIG2_DEPTH = 4  # hidden layers in Fig. 2
FIG7_DEPTH = 5  # hidden layers in Fig. 7 and Table 1
BATCH = 10  # the paper's mini-batch size
PROBE = 300  # "300 fixed test examples"
SIGMOID_LR = 0.1  # from the sweep in the notes at the end of this file
TANH_LR = 0.03
SATURATED = 0.1  # the top layer's mean below this counts as "pushed to 0"
ABOVE = 0.5  # the lower layers' means stay above this
STANDARD_MAX_G = 0.5  # per-layer variance factor, standard init (theory 1/3)
NORMALISED_BAND = (0.7, 1 / 0.7)  # the same, normalised init (theory 1)
JACOBIAN = {"standard": 0.5, "normalised": 0.8}  # average singular value, section 4.2
JACOBIAN_MARGIN = 0.1
MC_SHAPE = (1000, 784)  # (n_out, n_in): the paper's first layer
Z = 4.0  # standard errors for a Monte Carlo estimate
TRAINED = 50.0  # % test error: an arm below it has left chance (90%)
PUBLISHED_TABLE1 = {"sigmoid": 2.21, "tanh-N": 1.64}  # test error %, MNIST, Table 1
INITS: dict[str, Callable[..., torch.Tensor]] = {"standard": standard_, "normalised": normalised_}
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
}

# Mini-batches of 10 are too small for intra-op threads to pay (3 ms vs 45 ms a step when busy).
pytestmark = pytest.mark.usefixtures("one_thread")


def forward(params, x, act) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """(pre-activations, activations) of each hidden layer, and the logits; x: (seeds, n, 784)."""
    pre, hidden, h = [], [], x
    weights, biases = params[0::2], params[1::2]
    for i, (w, b) in enumerate(zip(weights, biases)):
        s = torch.baddbmm(b, h, w)  # (seeds, n, n_out)
        if i == len(weights) - 1:
            return pre, hidden, s
        h = act(s)
        pre.append(s)
        hidden.append(h)
    raise AssertionError("unreachable")


@dataclasses.dataclass(frozen=True)
class Run:
    steps: list[int]  # updates done at each snapshot
    mean: torch.Tensor  # (snapshots, seeds, layers): mean activation on the probe images
    sd: torch.Tensor  # (snapshots, seeds, layers): sd over units and probe images
    test_error: list[float]  # % on the 10k test images, per seed


def train(data, act: str, init, lr: float, budget: Budget, seeds, device, tick) -> Run:
    """Plain SGD on the mean NLL of mini-batches of 10, each seed its own init and data order."""
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    widths = (784, *[budget.width] * FIG2_DEPTH, 10)
    params = [p.requires_grad_() for p in stacked_params(widths, [init] * len(gens), gens, device)]
    x, y = data.train_x.to(device), data.train_y.to(device)
    probe = data.test_x[:PROBE].to(device).expand(len(seeds), -1, -1)
    steps, means, sds = [], [], []

    def snapshot(t: int) -> None:
        with torch.no_grad():
            _, hidden, _ = forward(params, probe, ACTIVATIONS[act])
        steps.append(t)
        means.append(torch.stack([h.mean(dim=(1, 2)) for h in hidden], dim=1).cpu())
        sds.append(torch.stack([h.std(dim=(1, 2)) for h in hidden], dim=1).cpu())

    for t, idx in enumerate(stacked_batches(len(x), BATCH, gens, budget.updates, device)):
        if t % budget.record_every == 0:
            snapshot(t)
            tick(budget.record_every if t else 0)
        _, _, logits = forward(params, x[idx], ACTIVATIONS[act])  # idx: (seeds, 10)
        # Summed over seeds, so each seed's gradient is that of its own batch-mean NLL.
        loss = F.cross_entropy(logits.transpose(1, 2), y[idx], reduction="mean") * len(seeds)
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p.sub_(g, alpha=lr)
    snapshot(budget.updates)
    with torch.no_grad():
        test_x = data.test_x.to(device).expand(len(seeds), -1, -1)
        _, _, logits = forward(params, test_x, ACTIVATIONS[act])
        wrong = (logits.argmax(-1) != data.test_y.to(device)).float().mean(dim=1) * 100
    return Run(steps, torch.stack(means), torch.stack(sds), wrong.tolist())


ARMS = {  # name: (activation, init, learning rate)
    "sigmoid": ("sigmoid", standard_, SIGMOID_LR),
    "tanh-N": ("tanh", normalised_, TANH_LR),
}


@pytest.fixture(scope="module")
def runs(budget, seeds, nnsanity_mnist, nnsanity_device, nnsanity_progress) -> dict[str, Run]:
    """Both arms, one net per seed each, trained side by side in two processes."""
    run_seeds, total = seeds(budget.seeds), 2 * budget.updates

    def one(name: str, tick) -> Run:
        act, init, lr = ARMS[name]
        return train(nnsanity_mnist, act, init, lr, budget, run_seeds, nnsanity_device, tick)

    def progress(done: int) -> None:
        nnsanity_progress("G1 sigmoid and tanh training", done, total, "updates")

    processes = processes_for(nnsanity_device)
    return dict(zip(ARMS, map_processes(one, list(ARMS), processes=processes, progress=progress)))


@dataclasses.dataclass(frozen=True)
class Lowest:
    """Each seed's snapshot where its top layer's mean activation is lowest."""

    step: list[int]  # update of that snapshot, per seed
    means: torch.Tensor  # (seeds, layers) mean activations there


def lowest_top_layer(run: Run) -> Lowest:
    top = run.mean[:, :, -1]  # (snapshots, seeds)
    lowest = top.argmin(dim=0)
    seeds = run.mean.shape[1]
    return Lowest([run.steps[i] for i in lowest.tolist()], run.mean[lowest, torch.arange(seeds)])


# -- G1.saturation and G1.ordering ------------------------------------------------------------
def test_top_sigmoid_layer_saturates_at_zero_while_lower_layers_stay_above_one_half(
    budget, runs, claim
):
    run, at = runs["sigmoid"], lowest_top_layer(runs["sigmoid"])
    top = run.mean[:, :, -1]  # (snapshots, seeds)
    first_below = [
        next((run.steps[i] for i in range(len(run.steps)) if top[i, r] < SATURATED), None)
        for r in range(top.shape[1])
    ]
    # per seed: how far both conditions hold, the top below 0.1 and every lower layer above 0.5
    margin = torch.minimum(SATURATED - at.means[:, -1], at.means[:, :-1].min(1).values - ABOVE)
    claim(
        every_seed_claim(
            margin.tolist(),
            low=0.0,
            id="G1.saturation",
            source=f"{SOURCE}, section 3.1, Fig. 2",
            statement="sigmoid + standard init: the top hidden layer's mean activation is pushed "
            "below 0.1 early in training while the lower layers' stay above 0.5 (measured: "
            "the smaller margin of the two)",
            published="~0 (Fig. 2)",
            fidelity="scaled",
            details={
                "top_layer_mean_at_lowest": at.means[:, -1].tolist(),
                "lower_layer_means_at_lowest": at.means[:, :-1].tolist(),
                "update_of_lowest": at.step,
                "first_update_below_0.1": first_below,
                "final_means": run.mean[-1].tolist(),
                "width": budget.width,
                "lr": SIGMOID_LR,
            },
            changed="2026-11-29: the same criterion, measured as a margin (was: the top "
            "layer's lowest mean)",
        )
    )


def test_lower_sigmoid_layers_are_less_active_the_nearer_they_are_to_the_input(runs, claim):
    means = lowest_top_layer(runs["sigmoid"]).means
    h1, h2, h3 = means[:, 0], means[:, 1], means[:, 2]
    margin = torch.minimum(h3 - h2, h2 - h1)  # per seed
    claim(
        every_seed_claim(
            margin.tolist(),
            low=0.0,
            id="G1.ordering",
            source=f"{SOURCE}, section 3.1, Fig. 2",
            statement="the lower layers' mean activations decrease from the output side to the "
            "input side: mean(h3) > mean(h2) > mean(h1) at the top layer's lowest snapshot",
            published="h3 > h2 > h1 (Fig. 2)",
            fidelity="scaled",
            details={"means_h1_h2_h3": means[:, :-1].tolist()},
        )
    )


# -- G1.nvar ----------------------------------------------------------------------------------
NVAR = {  # name: (the closed form as published, the factor that makes it a pure number)
    "standard": ("1/3 for n_in Var[W]", MC_SHAPE[1]),
    "normalised": ("2/(n_in+n_out)", 1 / normalised_variance(*MC_SHAPE[::-1])),
}


@pytest.mark.parametrize("name", NVAR)
def test_weight_variance_matches_the_closed_form(name, budget, seeds, claim):
    published, scale = NVAR[name]
    n_out, n_in = MC_SHAPE
    closed = n_in * standard_variance(n_in) if name == "standard" else 1.0  # 1/3, or 1 x 2/(...)
    estimates, ses = [], []
    for seed in seeds(budget.seeds):
        w = torch.empty(n_out, n_in, dtype=torch.float64)
        sq = INITS[name](w, generator=torch.Generator().manual_seed(seed)).flatten() ** 2
        # The mean is 0 by construction, so Var[W] = E[W^2], estimated with its standard error.
        estimates.append(float(sq.mean()) * scale)
        ses.append(float(sq.std()) * scale / math.sqrt(sq.numel()))
    pooled = sum(estimates) / len(estimates)
    se = math.sqrt(sum(s**2 for s in ses)) / len(ses)
    lo, hi = closed - Z * se, closed + Z * se
    claim(
        exact_claim(
            lo <= pooled <= hi,
            estimates,
            id=f"G1.nvar-{name}",
            source=f"{SOURCE}, eqs. (1), (16)",
            statement=f"the {name} init gives Var[W] = {published}",
            published=closed,
            statistic=f"Monte Carlo on {n_out}x{n_in} matrices, one per seed: "
            + ("n_in Var[W]" if name == "standard" else "Var[W] / (2/(n_in+n_out))")
            + f"; identity if the pooled estimate lies within {Z:g} standard errors",
            interval=(lo, hi),
            interval_kind=f"closed form ± {Z:g} pooled standard errors",
            details={"pooled": pooled, "standard_error": se, "n_in": n_in, "n_out": n_out},
        )
    )


# -- G1 at initialisation: gradvar, actvar, jacobian ------------------------------------------
@dataclasses.dataclass(frozen=True)
class AtInit:
    """A tanh net with 5 hidden layers of 1,000 at init, one per seed."""

    gradient_variances: list[list[float]]  # per seed: Var of dC/ds per hidden layer, input first
    activation_variances: list[list[float]]  # per seed: Var of h per hidden layer, input first
    jacobian_singular_value: list[float]  # per seed: mean singular value of dh^{i+1}/dh^i


def at_init(data, init, budget: Budget, seed: int) -> tuple[list[float], list[float], float]:
    widths = (784, *[budget.init_width] * FIG7_DEPTH, 10)
    params = stacked_params(widths, [init], [torch.Generator().manual_seed(seed)])
    params = [p.requires_grad_() for p in params]  # so that the pre-activations join the graph
    x = data.train_x[: budget.init_examples][None]
    y = data.train_y[: budget.init_examples][None]
    pre, hidden, logits = forward(params, x, torch.tanh)
    # Summed, not averaged, so that dC/ds is each example's own back-propagated gradient.
    loss = F.cross_entropy(logits.transpose(1, 2), y, reduction="sum")
    grads = [float(g.var()) for g in torch.autograd.grad(loss, pre)]
    acts = [float(h.detach().var()) for h in hidden]
    # dh^{i+1}/dh^i = diag(1 - h^{i+1}^2) W^T for the example's h: (1000, 1000) per layer gap
    singular = []
    with torch.no_grad():
        for e in range(budget.jacobian_examples):
            for i in range(FIG7_DEPTH - 1):
                w = params[2 * (i + 1)][0]  # (n_in, n_out) of the layer from h^i to h^{i+1}
                jac = (1 - hidden[i + 1][0, e] ** 2)[:, None] * w.T
                singular.append(torch.linalg.svdvals(jac.double()))
    return grads, acts, float(torch.cat(singular).mean())


@pytest.fixture(scope="module")
def init_stats(budget, seeds, nnsanity_mnist) -> dict[str, AtInit]:
    out = {}
    for name, init in INITS.items():
        rows = [at_init(nnsanity_mnist, init, budget, s) for s in seeds(budget.seeds)]
        out[name] = AtInit(*map(list, zip(*rows)))
    return out


def layer_factor(v: list[float], backwards: bool) -> float:
    """The mean factor per layer: (Var_first/Var_last)^(1/gaps) for gradients (they flow back
    from the output), (Var_last/Var_first)^(1/gaps) for activations (they flow forward)."""
    ratio = v[0] / v[-1] if backwards else v[-1] / v[0]
    return ratio ** (1 / (len(v) - 1))


BANDS = {"standard": (0.0, STANDARD_MAX_G), "normalised": NORMALISED_BAND}
THEORY = {"standard": 1 / 3, "normalised": 1.0}  # n Var[W] for equal widths


@pytest.mark.parametrize("name", INITS)
def test_backpropagated_gradient_variance_shrinks_only_with_the_standard_init(
    name, init_stats, claim
):
    v = init_stats[name].gradient_variances
    low, high = BANDS[name]
    claim(
        every_seed_claim(
            [layer_factor(s, backwards=True) for s in v],
            low=low,
            high=high,
            id=f"G1.gradvar-{name}",
            source=f"{SOURCE}, section 4.2, eqs. (13)-(16), Fig. 7",
            statement=f"with the {name} init, back-propagated gradients "
            + ("shrink toward the input" if name == "standard" else "keep about the same variance")
            + " across the layers at initialisation (tanh); per-layer factor of Var[dC/ds]",
            published=THEORY[name],
            details={"variances_input_first": v},
        )
    )


@pytest.mark.parametrize("name", INITS)
def test_activation_variance_shrinks_only_with_the_standard_init(name, init_stats, claim):
    v = init_stats[name].activation_variances
    low, high = BANDS[name]
    claim(
        every_seed_claim(
            [layer_factor(s, backwards=False) for s in v],
            low=low,
            high=high,
            id=f"G1.actvar-{name}",
            source=f"{SOURCE}, section 4.2, eqs. (10)-(12), (16), Fig. 6",
            statement=f"with the {name} init, activation variances "
            + ("shrink layer by layer" if name == "standard" else "stay about constant")
            + " at initialisation (tanh); per-layer factor of Var[h]",
            published=THEORY[name],
            details={"variances_input_first": v},
        )
    )


@pytest.mark.parametrize("name", INITS)
def test_the_jacobians_average_singular_value_is_as_published(name, init_stats, claim):
    claim(
        equivalence_claim(
            init_stats[name].jacobian_singular_value,  # one average per seed
            target=JACOBIAN[name],
            margin=JACOBIAN_MARGIN,
            id=f"G1.jacobian-{name}",
            source=f"{SOURCE}, section 4.2",
            statement=f"with the {name} init, the layer-to-layer Jacobians' average singular "
            f"value is about {JACOBIAN[name]} (tanh, at initialisation)",
            published=JACOBIAN[name],
        )
    )


# -- G1.saturation-slows-learning ---------------------------------------------------------------
def test_saturated_sigmoid_nets_learn_slower_than_tanh_with_the_normalised_init(
    budget, runs, claim
):
    sig, tanh = runs["sigmoid"].test_error, runs["tanh-N"].test_error  # % per seed
    c = ordering_claim(
        sig,
        tanh,
        paired=False,
        id="G1.saturation-slows-learning",
        source=f"{SOURCE}, section 3.1 and Fig. 2",
        statement=f"while the sigmoid nets' top hidden layer is saturated they learn slower: "
        f"after the same {budget.updates} updates their test error is higher than tanh's with "
        "the normalised init (the two arms differ in init too: the paper's Fig. 2 attributes "
        "the plateau to saturation)",
        published="saturation slows learning (the plateau of Fig. 2)",
        unit=" pp",
        fidelity="scaled",
        details={"sigmoid_test_error_%": sig, "tanh_N_test_error_%": tanh},
    )
    if max(tanh) >= TRAINED:  # neither arm has learnt: speed cannot be compared
        c = not_testable(c, f"the tanh-N arm has not left chance ({max(tanh):.1f}% test error)")
    claim(c)


# -- G1.table1 --------------------------------------------------------------------------------
@known_not_testable("the sigmoid nets are still at chance, ~90% test error, after 10,000 updates")
def test_sigmoid_ends_with_a_higher_test_error_than_tanh_with_the_normalised_init(
    budget, runs, claim
):
    sig, tanh = runs["sigmoid"].test_error, runs["tanh-N"].test_error  # % per seed
    c = ordering_claim(
        sig,
        tanh,
        paired=False,
        id="G1.table1",
        source=f"{SOURCE}, Table 1 (MNIST)",
        statement="sigmoid with the standard init ends with a higher test error than tanh "
        "with the normalised init after the same number of updates",
        published=f"{PUBLISHED_TABLE1['sigmoid']}% > {PUBLISHED_TABLE1['tanh-N']}%",
        unit=" pp",
        fidelity="scaled",
        details={
            "sigmoid_test_error_%": sig,
            "tanh_N_test_error_%": tanh,
            "sigmoid": str(summarize(sig)),
            "tanh-N": str(summarize(tanh)),
            "published_%": PUBLISHED_TABLE1,
            "updates": budget.updates,
        },
        changed="2026-11-29: judged only when both arms are below 50% test error, inconclusive "
        "otherwise (the sigmoid nets at chance made the ordering impossible to fail; issue 10); "
        "2026-12-07: 'not testable at this budget' instead of inconclusive (issue 17)",
    )
    if max(max(sig), max(tanh)) >= TRAINED:  # an arm still at chance: nothing to compare
        c = not_testable(
            c,
            f"an arm has not left chance: test error up to {max(max(sig), max(tanh)):.1f}% "
            f"(>= {TRAINED:g}%) after {budget.updates} updates",
        )
    claim(c)


@known_not_testable("the sigmoid nets are still on Fig. 2's plateau, at ~90% test error")
def test_sigmoid_reaches_table_1s_test_error(budget, runs, claim):
    sig = runs["sigmoid"].test_error
    c = single_run_claim(
        PUBLISHED_TABLE1["sigmoid"],
        runs["sigmoid"].test_error,  # % per seed
        max_half_width=1.0,
        id="G1.table1-sigmoid-error",
        source=f"{SOURCE}, Table 1 (MNIST)",
        statement=f"sigmoid reaches Table 1's {PUBLISHED_TABLE1['sigmoid']}% test error",
        unit="%",
        fidelity="scaled",
        details={"updates": budget.updates, "paper": "5 hidden layers of 1,000, converged"},
        changed="2026-12-07: testable only when the sigmoid arm has left chance (test error "
        "below 50%); it was reported 'not reproduced' at chance, a verdict about the budget "
        "(issue 17)",
    )
    if max(sig) >= TRAINED:
        c = not_testable(
            c,
            f"the sigmoid nets have not left the plateau of Fig. 2: test error up to "
            f"{max(sig):.1f}% (>= {TRAINED:g}%) after {budget.updates} updates",
        )
    claim(c)


def test_figure(runs, init_stats, figures):
    """Fig. 2's saturation (first seed) and the back-propagated gradient variances at init."""
    run = runs["sigmoid"]
    paths = [
        activation_saturation(run.steps, run.mean, run.sd, figures / "G1_sigmoid_saturation.png"),
        gradient_variances(
            {name: s.gradient_variances for name, s in init_stats.items()},
            figures / "G1_backprop_gradient_variance.png",
        ),
    ]
    assert all(p.stat().st_size > 0 for p in paths)


# Notes. Learning rates were picked once, before any claim was evaluated, by a sweep over
# {0.01, 0.03, 0.1, 0.3} at the smoke setting (seed 0, lowest validation error, ties broken by
# validation NLL): sigmoid-standard errors were all 89.36% (NLL 2.313, 2.317, 2.306, 2.311) ->
# 0.1; tanh-normalised errors 6.78, 5.52, 5.66, 11.21% -> 0.03. The paper tuned each model's
# rate on validation too, but on its own budget.
