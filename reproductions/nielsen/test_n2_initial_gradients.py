"""N2: at initialisation, earlier hidden layers learn slower: the per-layer gradient norms; and
the opposite case, early layers learning faster, with large weights.

Source: Nielsen, NNDL ch. 5, "The vanishing gradient problem", computed by the book's
``fig/generate_gradient.py``: the first 1,000 training images (file order), a fresh default-init
network2 (weights N(0, 1/n_in), biases N(0, 1)), the bias gradient of the mean cost over those
images for each hidden layer, and its Euclidean norm over the layer's 30 neurons. Published:
[784,30,30,10] 0.07 and 0.31 (the JSON behind the figure: 0.06574, 0.30920); three hidden layers
0.012, 0.060, 0.283; four hidden layers 0.003, 0.017, 0.070, 0.285, "the first hidden layer
learns about 100 times slower than the fourth". The figure shows the bias gradients of the top
six neurons of each hidden layer of [784,30,30,10]. Chapter 5's opening (and the notes): "the
opposite can also occur: the early layers can learn very well while the later layers become
stuck".

Measured: exactly that quantity (nnsanity.repro.network2.bias_gradient_norms, float64 like the
book) for 200 independent inits (seeds from --nnsanity-seed). Each published number is from ONE
init, so it is compared with the distribution over inits.

Criteria (the first three declared before the first run; the rest on 2026-11-29, before data):
- a published norm reproduces when it lies in the central 95% of our inits' norms (empirical
  2.5-97.5% quantiles: with 200 inits no normal model is needed, and norms are skewed);
- "each layer starts slower than the next": the share of inits whose norms increase layer by
  layer, at the depth where it is smallest; reproduced when its 99% Wilson interval lies above
  0.9 (changed 2026-11-29 from the point estimate >= 0.9);
- "about 100 times slower": TOST on log10(fourth / first) over inits, target log10(100) = 2,
  margin log10(2): reproduced when the geometric mean's 90% CI lies within [50, 200] (changed
  2026-11-29 from "the median lies in [50, 200]", a point estimate);
- the opposite case: the default init with every weight scaled by 21, where mean-field theory
  (the variance fixed point of a sigmoid layer with N(0, 21^2/n) weights and N(0, 1) biases)
  gives each layer a gain of 2 in the squared back-propagated gradient; reproduced when the
  share of inits whose first hidden layer's norm exceeds the fourth's has a 99% Wilson interval
  above 1/2 (the first layer learns faster in most inits).

Does not reproduce (measured 2026-11-29): with the weights x21 the first hidden layer is faster
than the fourth in only 23 of 200 inits; the median speeds run 0.93, 0.72, 1.06, 1.42 from the
first hidden layer to the fourth. Our construction of "the opposite case" does not produce it. A
possible reason, not measured: the mean-field gain is per example, while the chapter's speed is
the norm of the gradient averaged over 1,000 images.

Smoke budget: 200 inits take about a second per depth, so smoke keeps the full setting.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from nnsanity.repro.claims import (
    Claim,
    Verdict,
    equivalence_claim,
    flip_probability,
    proportion_claim,
)
from nnsanity.repro.network2 import bias_gradient_norms, bias_gradients
from nnsanity.repro.plots import initial_gradient_bars, top_six_neurons
from nnsanity.repro.plugin import not_reproduced

SOURCE = "Nielsen, NNDL ch. 5, 'The vanishing gradient problem' (generate_gradient.py)"
PUBLISHED = {  # hidden layers -> norm per hidden layer, first to last
    2: (0.07, 0.31),
    3: (0.012, 0.060, 0.283),
    4: (0.003, 0.017, 0.070, 0.285),
}
ABOUT_100 = (50.0, 200.0)
ORDERED = 0.9  # "each layer starts slower than the next" in at least 90% of inits
LARGE_WEIGHTS = 21.0  # mean-field gain of 2 per layer (see the claim card)


@dataclasses.dataclass(frozen=True)
class Budget:
    seeds: int = 200  # inits
    images: int = 1000
    hidden: int = 30


FULL = Budget()
SMOKE = FULL  # already seconds; see the claim card


@pytest.fixture(scope="module")
def data(budget, nnsanity_mnist) -> tuple[torch.Tensor, torch.Tensor]:
    """generate_gradient.py's images: the first 1,000 training images, in file order."""
    return nnsanity_mnist.train_x[: budget.images], nnsanity_mnist.train_y[: budget.images]


@pytest.fixture(scope="module")
def norms(budget, seeds, data, nnsanity_device) -> dict[int, torch.Tensor]:
    """hidden layers -> (inits, hidden layers) bias-gradient norms at init."""
    return {
        depth: bias_gradient_norms(
            (784, *[budget.hidden] * depth, 10),
            *data,
            seeds=seeds(budget.seeds),
            device=nnsanity_device,
        ).cpu()
        for depth in PUBLISHED
    }


def central_95(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise empirical 2.5% and 97.5% quantiles of (sets, inits)."""
    lo, hi = np.quantile(v, [0.025, 0.975], axis=-1)
    return lo, hi


@pytest.mark.parametrize(
    ("depth", "layer"), [(d, j) for d, values in PUBLISHED.items() for j in range(len(values))]
)
def test_published_initial_gradient_norm_is_typical_of_an_init(depth, layer, norms, claim):
    values = norms[depth][:, layer].numpy()  # one norm per init
    published = PUBLISHED[depth][layer]

    def judge(v: np.ndarray) -> np.ndarray:
        lo, hi = central_95(v)
        return np.where((lo <= published) & (published <= hi), "reproduced", "not reproduced")

    verdict = Verdict(judge(values[None])[0])
    lo, hi = (float(q[0]) for q in central_95(values[None]))
    claim(
        Claim(
            id=f"N2.{depth}-hidden.layer-{layer + 1}",
            source=SOURCE,
            statement=f"with {depth} hidden layers, hidden layer {layer + 1} starts at ||dC/db|| "
            f"~ {published}",
            published=published,
            measured=values,
            statistic="reproduced if the published norm lies in the central 95% of single "
            "inits (empirical quantiles)",
            verdict=verdict,
            interval=(lo, hi),
            interval_kind="central 95% of inits (quantiles)",
            estimate=float(np.median(values)),
            estimator="median",
            flip=flip_probability(judge, values, verdict, model="resample"),
        )
    )


def test_earlier_layers_start_slower_at_every_depth(norms, claim):
    """The ordering the chapter draws from the numbers: speed grows layer by layer."""
    ordered = {d: int((n[:, 1:] > n[:, :-1]).all(dim=1).sum()) for d, n in norms.items()}
    inits = len(next(iter(norms.values())))
    claim(
        proportion_claim(
            min(ordered.values()),  # the depth where the ordering holds least often decides
            inits,
            above=ORDERED,
            measured=[k / inits for k in ordered.values()],
            id="N2.ordering",
            source=SOURCE,
            statement="each hidden layer starts slower than the next, in at least 90% of inits, "
            "at every depth",
            published="0.07<0.31; 0.012<0.060<0.283; 0.003<0.017<0.070<0.285",
            details={f"{d}-hidden": k / inits for d, k in ordered.items()},
            changed="2026-11-29: was 'the share of ordered inits is >= 0.9' (a point "
            "estimate); now its 99% Wilson interval must lie above 0.9 (issue 10)",
        )
    )


def test_first_hidden_layer_learns_about_100x_slower_than_the_fourth(norms, claim):
    ratio = (norms[4][:, 3] / norms[4][:, 0]).double()  # one ratio per init
    claim(
        equivalence_claim(
            ratio.log10().tolist(),
            target=2.0,
            margin=math.log10(2),
            id="N2.first-vs-fourth-100x",
            source=SOURCE,
            statement="the first hidden layer learns about 100 times slower than the fourth "
            "(within a factor of 2): measured as log10 of the ratio",
            published=math.log10(0.285 / 0.003),
            details={
                "geometric_mean_ratio": float(ratio.log().mean().exp()),
                "median_ratio": float(ratio.median()),
                "quantiles_5_50_95": torch.quantile(
                    ratio, torch.tensor([0.05, 0.5, 0.95], dtype=ratio.dtype)
                ).tolist(),
            },
            changed="2026-11-29: was 'the median ratio over inits lies in [50, 200]' (a point "
            "estimate); now TOST on log10 ratios, i.e. the geometric mean's 90% CI inside "
            "[50, 200] (issue 10)",
        )
    )


@not_reproduced("with weights x21 the speeds (medians) run 0.93, 0.72, 1.06, 1.42, first to fourth")
def test_with_large_weights_the_first_hidden_layer_learns_faster_than_the_fourth(
    budget, seeds, data, nnsanity_device, claim
):
    large = bias_gradient_norms(
        (784, *[budget.hidden] * 4, 10),
        *data,
        seeds=seeds(budget.seeds),
        weight_scale=LARGE_WEIGHTS,
        device=nnsanity_device,
    ).cpu()
    ratio = large[:, 0] / large[:, 3]  # first over fourth, per init
    claim(
        proportion_claim(
            int((ratio > 1).sum()),
            len(ratio),
            above=0.5,
            id="N2.opposite-case",
            source="Nielsen, NNDL ch. 5 (introduction) and the lecture notes",
            statement="the opposite case: with large weights (network2's init x 21) the first "
            "hidden layer starts learning faster than the fourth, in most inits",
            published="early layers learn well, later ones get stuck",
            details={
                "median_first_over_fourth": float(ratio.median()),
                "median_norms_per_layer": large.median(0).values.tolist(),
                "mean_field_prediction": "gain 2 per layer in squared norm: ratio ~2^1.5 = 2.8",
                "why": "the speeds do not grow toward the input with this init (see the card)",
            },
        )
    )


def test_figure(norms, data, seeds, nnsanity_device, figures):
    """The book's top-six-neuron bars, and the per-layer norms against the published ones."""
    grads = bias_gradients((784, 30, 30, 10), *data, seeds=seeds(200), device=nnsanity_device)
    paths = [
        top_six_neurons(
            [g.cpu() for g in grads],
            figures / "N2_top_six_neurons.png",
            "N2: |dC/db| of the top six neurons at init, [784,30,30,10]",
        ),
        initial_gradient_bars(norms, PUBLISHED, figures / "N2_initial_gradients.png"),
    ]
    assert all(p.stat().st_size > 0 for p in paths)
