"""K2: Karpathy's "verify loss @ init" and "init well", on real MNIST with nnsanity's own check.

Source: A. Karpathy, "A Recipe for Training Neural Networks" (2019), "Set up the end-to-end
training/evaluation skeleton": "verify loss @ init" and "init well". Real MNIST in network2's split
(the 10,000 validation images); a 784-100-10 ReLU MLP with PyTorch's default init and softmax
cross-entropy, and network2's [784, 30, 10] sigmoid net with summed binary cross-entropy
(nnsanity.repro.network2). Every loss is measured with measure_init_loss / assert_init_loss.

Claim: -ln(1/10) = ln 10 at init for a softmax head; 10 ln 2 for network2's head at outputs of
0.5. Pass criteria: a zeroed final layer gives ln 10 (and 10 ln 2) to within 1e-6 relative (float32
rounding of a mean of 10,000 equal terms; a wrong formula is off by O(1)); a default-init MLP is
"close" when every seed is within 1% of ln 10 (its logits have sd ~0.1, which predicts an excess
of ~0.005 nats, 0.2%). network2's default init (biases N(0, 1)) "starts at 10 ln 2" when 10 ln 2
lies in the 95% confidence interval of the mean over 100 inits: the claim is about the
level the init produces, and single inits scatter by ~1.3 nats (a first run judged it by the
prediction interval of one init over 5 seeds, [4.1, 12.4], which says only that one init can land
anywhere; that interval is reported too). We expect it NOT to reproduce: an output pre-activation
z ~ N(0, 1 + |a|^2/30) costs 10 E[softplus(z)] > 10 ln 2, which is reported as the prediction.

Claim ("init well"): a final bias of logit(0.1) = -2.1972 on a 1:9 task (digit 0 vs the rest,
9.9% of the validation images) starts at the prior's loss H(p), the entropy of the labels. Pass:
with the final weights zeroed the loss is H(p) + KL(p || 0.1) to 1e-6 (and KL < 1e-4 H(p)); with
default-init weights, every seed within 1% of H(p) (vs ln 2 = +115% with a zero bias).

Smoke budget (derived from FULL below): 5 inits instead of 10 (network2: 30 instead of 100); the
criteria are the same. Verdicts hold at both budgets.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from nnsanity import assert_init_loss, measure_init_loss
from nnsanity.repro.claims import Claim, Verdict, exact_claim
from nnsanity.repro.network2 import Network2, Network2Config, network2_cost
from nnsanity.repro.stats import confidence_interval, prediction_interval, summarize
from reproductions._nets import mlp

SOURCE = "Karpathy, 'A Recipe for Training Neural Networks' (2019)"
LN10 = math.log(10)
TEN_LN2 = 10 * math.log(2)


# -- the full setting; the smoke budget is derived from it ------------------------------------
@dataclasses.dataclass(frozen=True)
class Budget:
    init_seeds: int = 10  # fresh inits per claim
    network2_inits: int = 100  # network2's init loss scatters by ~1.3 nats: many inits


FULL = Budget()
SMOKE = dataclasses.replace(FULL, init_seeds=5, network2_inits=30)

HIDDEN = 100
EXACT = 1e-6  # relative: float32 rounding, far below any wrong formula
CLOSE = 0.01  # "close to ln 10" (and to H(p)): 1% relative
INIT_WELL_P = 0.1  # Karpathy's 1:10 example; digit 0 is 9.9% of the validation images


pytestmark = pytest.mark.usefixtures("one_thread")


def zero_final_layer(net: nn.Module) -> nn.Module:
    final = net[-1] if isinstance(net, nn.Sequential) else net.layers[-1]
    with torch.no_grad():
        final.weight.zero_()
        final.bias.zero_()
    return net


def within(value: float, reference: float, rtol: float) -> bool:
    return abs(value - reference) <= rtol * abs(reference)


# -- verify loss @ init ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def validation(nnsanity_mnist) -> tuple[torch.Tensor, torch.Tensor]:
    return nnsanity_mnist.validation_x, nnsanity_mnist.validation_y


def test_a_zeroed_softmax_head_starts_at_ln_10(budget, seeds, validation, claim):
    nets = [zero_final_layer(mlp(seed=s)) for s in seeds(budget.init_seeds)]
    zeroed = [measure_init_loss(net, validation, F.cross_entropy) for net in nets]
    claim(
        exact_claim(
            all(within(r.loss, LN10, EXACT) and r.n_classes == 10 for r in zeroed),
            [r.loss for r in zeroed],
            id="K2.init-loss-softmax-zeroed",
            source=SOURCE + ", 'verify loss @ init'",
            statement="a zeroed softmax head starts at -ln(1/10) = ln 10",
            published=LN10,
            statistic=f"loss on 10,000 validation images; "
            f"pass: every seed within {EXACT:g} relative",
            unit=" nats",
            interval=(LN10 * (1 - EXACT), LN10 * (1 + EXACT)),
        )
    )
    for s in seeds(2):  # nnsanity's check with its defaults agrees
        assert_init_loss(zero_final_layer(mlp(seed=s)), validation, F.cross_entropy)


def test_a_default_init_softmax_head_starts_close_to_ln_10(budget, seeds, validation, claim):
    default = [
        measure_init_loss(mlp(seed=s), validation, F.cross_entropy)
        for s in seeds(budget.init_seeds)
    ]
    close_ok = all(within(r.loss, LN10, CLOSE) for r in default)
    claim(
        Claim(
            id="K2.init-loss-softmax-default",
            source=SOURCE + ", 'verify loss @ init'",
            statement="a default-init 784-100-10 MLP starts close to ln 10",
            published=LN10,
            measured=[r.loss for r in default],
            statistic=f"loss on 10,000 validation images; pass: every seed within {CLOSE:.0%}",
            unit=" nats",
            verdict=Verdict.REPRODUCED if close_ok else Verdict.NOT_REPRODUCED,
            interval=(LN10 * (1 - CLOSE), LN10 * (1 + CLOSE)),
            details={
                "output_std": [r.output_std for r in default],
                "plugin_bound": default[0].upper,
            },
        )
    )
    for s in seeds(2):  # nnsanity's check with its defaults agrees
        assert_init_loss(mlp(seed=s), validation, F.cross_entropy)


# -- network2 ----------------------------------------------------------------------------------
def expected_softplus(variance: float) -> float:
    """E[softplus(sqrt(variance) xi)] for xi ~ N(0, 1), by Gauss-Hermite quadrature."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(80)
    z = math.sqrt(variance) * nodes
    return float((np.logaddexp(0, z) * weights).sum() / weights.sum())


def test_network2_at_outputs_of_one_half_starts_at_10_ln_2(budget, seeds, validation, claim):
    half = [
        measure_init_loss(
            zero_final_layer(Network2(Network2Config((784, 30, 10), seed=s))),
            validation,
            network2_cost,
        )
        for s in seeds(budget.init_seeds)
    ]
    claim(
        exact_claim(
            all(within(r.loss, TEN_LN2, EXACT) for r in half),
            [r.loss for r in half],
            id="K2.init-loss-sigmoid-half",
            source=SOURCE + ", 'verify loss @ init'; network2",
            statement="network2's summed BCE at outputs of 0.5 is 10 ln 2",
            published=TEN_LN2,
            statistic=f"loss on 10,000 validation images, final "
            f"layer zeroed; pass: every seed within {EXACT:g} relative",
            unit=" nats",
            interval=(TEN_LN2 * (1 - EXACT), TEN_LN2 * (1 + EXACT)),
        )
    )


def test_network2s_default_init_starts_at_10_ln_2(budget, seeds, validation, claim):
    x, _ = validation
    nets = [Network2(Network2Config((784, 30, 10), seed=s)) for s in seeds(budget.network2_inits)]
    default = [measure_init_loss(net, validation, network2_cost) for net in nets]
    # The prediction: given hidden activations a, z = w.a + b ~ N(0, |a|^2/30 + 1) over inits.
    with torch.no_grad():
        sq = [float(torch.sigmoid(net.layers[0](x)).square().sum(1).mean()) for net in nets]
    predicted = 10 * expected_softplus(1 + float(np.mean(sq)) / 30)
    losses = [r.loss for r in default]  # one init each
    interval = confidence_interval(losses)
    at_ten_ln2 = interval[0] <= TEN_LN2 <= interval[1]
    assert all(r.zero_output_loss == pytest.approx(TEN_LN2, rel=EXACT) for r in default)
    # The honest verdict: N(0, 1) output biases put the loss well above 10 ln 2 on average
    # (~8.4), though single inits scatter by ~1.4 nats around that.
    claim(
        Claim(
            id="K2.init-loss-network2-default",
            source=SOURCE + ", 'verify loss @ init'; network2",
            statement="network2's default init (biases N(0,1)) starts at 10 ln 2",
            published=TEN_LN2,
            measured=losses,
            statistic=f"loss on 10,000 validation images, {len(losses)} inits; interval: 95% "
            "confidence interval of the mean",
            unit=" nats",
            verdict=Verdict.REPRODUCED if at_ten_ln2 else Verdict.NOT_REPRODUCED,
            interval=interval,
            details={
                "predicted_10_E_softplus": predicted,
                "prediction_interval_of_one_init": prediction_interval(losses),
                "share_of_inits_within_1pct": float(
                    np.mean([within(v, TEN_LN2, CLOSE) for v in losses])
                ),
                "bias_alone_10_E_softplus": 10 * expected_softplus(1.0),
                "plugin_bound": default[0].upper,
                "assert_init_loss_passes": [r.passed for r in default],
            },
        ),
        expect=Verdict.NOT_REPRODUCED,
    )


# -- init well ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class InitWell:
    """Losses (nats, one per seed) of 784-100-1 nets on digit 0 vs the rest."""

    p: float  # share of digit 0 among the validation images
    prior_loss: float  # H(p), the entropy of the labels
    cross: float  # H(p) + KL(p || 0.1): the loss of outputs of exactly logit(0.1)
    bias: float  # logit(0.1)
    plain: list[float]  # default init, final bias 0
    well: list[float]  # default init, final bias logit(0.1)
    exact: list[float]  # final weights zeroed, bias logit(0.1)


@pytest.fixture(scope="module")
def init_well(budget, seeds, nnsanity_mnist) -> InitWell:
    x = nnsanity_mnist.validation_x
    t = (nnsanity_mnist.validation_y == 0).float()[:, None]  # digit 0 vs the rest
    p = float(t.mean())
    prior_loss = -(p * math.log(p) + (1 - p) * math.log(1 - p))  # H(p)
    bias = math.log(INIT_WELL_P / (1 - INIT_WELL_P))  # logit(0.1) = -2.1972
    bce = F.binary_cross_entropy_with_logits
    exact, well, plain = [], [], []
    for s in seeds(budget.init_seeds):
        net = mlp(seed=s, n_out=1)
        with torch.no_grad():
            net[-1].bias.fill_(0.0)
        plain.append(measure_init_loss(net, (x, t), bce).loss)
        with torch.no_grad():
            net[-1].bias.fill_(bias)
        well.append(assert_init_loss(net, (x, t), bce).loss)  # nnsanity's check passes too
        with torch.no_grad():
            net[-1].weight.zero_()  # every output exactly logit(0.1)
        exact.append(measure_init_loss(net, (x, t), bce).loss)
    # With the weights zeroed the loss is the cross-entropy H(p) + KL(p || 0.1) of the prior.
    cross = -(p * math.log(INIT_WELL_P) + (1 - p) * math.log(1 - INIT_WELL_P))
    return InitWell(p, prior_loss, cross, bias, plain, well, exact)


def init_well_details(r: InitWell) -> dict:
    return {
        "zero_bias_loss": f"{summarize(r.plain)}",
        "ln2": math.log(2),
        "kl_p_to_one_tenth": r.cross - r.prior_loss,
        "hockey_stick_saved_nats": float(np.mean(r.plain) - np.mean(r.well)),
        "default_init_mean_95ci": confidence_interval(r.well),
    }


def test_outputs_of_logit_one_tenth_start_a_one_in_ten_task_at_the_prior_loss(init_well, claim):
    r = init_well
    claim(
        exact_claim(
            all(within(v, r.cross, EXACT) for v in r.exact) and within(r.cross, r.prior_loss, 1e-4),
            r.exact,
            id="K2.init-well-bias-exact",
            source=SOURCE + ", 'init well'",
            statement=f"outputs of logit(0.1) = {r.bias:.4f} give the 1:9 task the prior's loss "
            "H(p)",
            published=r.prior_loss,
            statistic=f"BCE on 10,000 validation images, digit 0 vs rest (p = {r.p:.4f}), final "
            f"weights zeroed; pass: = H(p) + KL(p || 0.1) within {EXACT:g}, KL < 1e-4 H(p)",
            unit=" nats",
            interval=(r.cross * (1 - EXACT), r.cross * (1 + EXACT)),
            details=init_well_details(r),
        )
    )


def test_a_final_bias_of_logit_one_tenth_starts_a_default_init_net_at_the_prior_loss(
    init_well, claim
):
    r = init_well
    close_ok = all(within(v, r.prior_loss, CLOSE) for v in r.well)
    # Honest verdict: the random hidden features correlate with "is a 0" by chance, so a seed's
    # loss lands up to ~1.2% from H(p), either side (vs +115% for a zero bias, at ln 2): the
    # declared 1% misses some seeds, though the mean over seeds sits at H(p) (+0.1%) and the bias
    # removes the whole hockey stick.
    claim(
        Claim(
            id="K2.init-well-bias-default-init",
            source=SOURCE + ", 'init well'",
            statement=f"a default-init 784-100-1 net with final bias {r.bias:.4f} starts at H(p)",
            published=r.prior_loss,
            measured=r.well,
            statistic=f"BCE on 10,000 validation images, digit 0 vs rest (p = {r.p:.4f}); "
            f"pass: every seed within {CLOSE:.0%} of H(p)",
            unit=" nats",
            verdict=Verdict.REPRODUCED if close_ok else Verdict.NOT_REPRODUCED,
            interval=(r.prior_loss * (1 - CLOSE), r.prior_loss * (1 + CLOSE)),
            details=init_well_details(r),
        ),
        expect=Verdict.NOT_REPRODUCED,
    )
