"""The statistics behind every verdict: intervals, the claim helpers' criteria against scipy's
tests, the four verdicts and the flip estimates."""

import math

import numpy as np
import pytest
from scipy import stats

from nnsanity.repro.claims import (
    Claim,
    Verdict,
    equivalence_claim,
    every_seed_claim,
    exact_claim,
    flip_probability,
    ordering_claim,
    proportion_claim,
    single_run_claim,
)
from nnsanity.repro.stats import (
    confidence_interval,
    prediction_interval,
    proportion_interval,
    summarize,
)

FIELDS = {"id": "X.demo", "source": "nowhere", "statement": "demo"}
ORDER = {**FIELDS, "published": "a > b"}
RUNS = [96.4, 96.5, 96.3, 96.6]


def test_prediction_interval_is_wider_than_the_confidence_interval_by_sqrt_n_plus_1():
    lo, hi = prediction_interval(RUNS)
    c_lo, c_hi = confidence_interval(RUNS)
    s = summarize(RUNS)
    t = stats.t.ppf(0.975, 3)
    assert hi - s.mean == pytest.approx(t * s.sd * math.sqrt(1 + 1 / 4))
    assert (hi - lo) / (c_hi - c_lo) == pytest.approx(math.sqrt(5))


def test_a_published_single_run_inside_the_prediction_interval_reproduces():
    inside = single_run_claim(96.5, RUNS, max_half_width=1.0, **FIELDS)
    outside = single_run_claim(97.5, RUNS, max_half_width=1.0, **FIELDS)
    assert inside.verdict is Verdict.REPRODUCED
    assert outside.verdict is Verdict.NOT_REPRODUCED
    assert outside.interval[1] < 97.5
    assert inside.interval == pytest.approx(prediction_interval(RUNS))


def test_a_single_run_inside_only_a_too_wide_interval_is_inconclusive():
    spread = [96.4, 96.5, 94.3, 96.6]  # one seed far off: the interval is about ±3
    wide = single_run_claim(96.5, spread, max_half_width=1.0, **FIELDS)
    assert wide.verdict is Verdict.INCONCLUSIVE
    far = single_run_claim(120.0, spread, max_half_width=1.0, **FIELDS)
    assert far.verdict is Verdict.NOT_REPRODUCED  # outside stays decisive however wide


def test_an_ordering_has_three_outcomes():
    a, b = [2.0, 2.1, 2.2, 2.05], [1.0, 1.1, 1.2, 1.05]
    assert ordering_claim(a, b, paired=False, **ORDER).verdict is Verdict.REPRODUCED
    assert ordering_claim(b, a, paired=False, **ORDER).verdict is Verdict.NOT_REPRODUCED
    noisy = ordering_claim([1.0, 2.0, 1.5], [1.4, 1.6, 1.2], paired=False, **ORDER)
    assert noisy.verdict is Verdict.INCONCLUSIVE


def test_the_orderings_p_values_and_intervals_are_scipys():
    a, b = [2.0, 2.4, 1.9, 2.3, 2.2], [1.8, 2.1, 2.0, 1.9, 2.0]
    welch = ordering_claim(a, b, paired=False, **ORDER)
    assert welch.details["p_ordering"] == pytest.approx(
        stats.ttest_ind(a, b, equal_var=False, alternative="greater").pvalue
    )
    paired = ordering_claim(a, b, paired=True, **ORDER)
    d = np.subtract(a, b)
    assert paired.details["p_ordering"] == pytest.approx(
        stats.ttest_1samp(d, 0.0, alternative="greater").pvalue
    )
    ci = stats.ttest_1samp(d, 0.0).confidence_interval(0.9)
    assert paired.interval == pytest.approx((ci.low, ci.high))


def test_a_paired_ordering_sees_a_consistent_per_seed_gain_that_welch_misses():
    # Seeds move both arms together; the per-seed difference is always about +0.1.
    base = [90.0, 95.0, 97.0, 92.0, 94.0]
    better = [b + 0.1 + 0.01 * i for i, b in enumerate(base)]
    assert ordering_claim(better, base, paired=False, **ORDER).verdict is Verdict.INCONCLUSIVE
    claim = ordering_claim(better, base, paired=True, **ORDER)
    assert claim.verdict is Verdict.REPRODUCED
    assert claim.measured == pytest.approx([0.1, 0.11, 0.12, 0.13, 0.14])
    assert claim.interval[0] > 0


def test_paired_runs_must_have_equal_lengths():
    with pytest.raises(ValueError, match="equal lengths"):
        ordering_claim([1.0, 2.0], [1.0], paired=True, **ORDER)


def test_an_equivalence_needs_the_whole_interval_inside_the_margin():
    close = [0.01, -0.05, 0.1, 0.02, -0.03]
    claim = equivalence_claim(close, target=0.0, margin=0.2, published="~0", **FIELDS)
    assert claim.verdict is Verdict.REPRODUCED
    ci = stats.ttest_1samp(close, 0.0).confidence_interval(0.9)  # TOST at 0.05: a 90% CI
    assert claim.interval == pytest.approx((ci.low, ci.high))
    # the same mean with fewer, noisier seeds cannot show equivalence: inconclusive, not a pass
    noisy = equivalence_claim([0.3, -0.3, 0.1], target=0.0, margin=0.2, published="~0", **FIELDS)
    assert noisy.verdict is Verdict.INCONCLUSIVE
    far = equivalence_claim([1.0, 1.1, 0.9, 1.05], target=0.0, margin=0.2, published="~0", **FIELDS)
    assert far.verdict is Verdict.NOT_REPRODUCED


def test_an_exact_claim_is_an_identity_when_it_holds():
    common = {"published": 0.0, "statistic": "s", **FIELDS}
    assert exact_claim(True, [0.0], **common).verdict is Verdict.IDENTITY
    assert exact_claim(False, [1.0], **common).verdict is Verdict.NOT_REPRODUCED
    assert exact_claim(True, [0.0], **common).flip == 0.0


def test_an_every_seed_claim_fails_when_one_seed_fails_and_says_which():
    claim = every_seed_claim([1.0, -0.5, 1.2], low=0.0, published=1, **FIELDS)
    assert claim.verdict is Verdict.NOT_REPRODUCED
    assert claim.details["holds_per_seed"] == [True, False, True]
    assert claim.estimate == -0.5  # the seed nearest (here past) the bound
    with pytest.raises(ValueError, match="at least one seed"):
        every_seed_claim([], low=0.0, published=1, **FIELDS)


def test_a_proportion_claim_has_three_outcomes_from_its_wilson_interval():
    common = {"above": 0.5, "level": 0.99, "published": "usually", **FIELDS}
    assert proportion_claim(6000, 10000, **common).verdict is Verdict.REPRODUCED
    assert proportion_claim(4000, 10000, **common).verdict is Verdict.NOT_REPRODUCED
    assert proportion_claim(51, 100, **common).verdict is Verdict.INCONCLUSIVE
    claim = proportion_claim(6000, 10000, **common)
    assert claim.measured == [0.6] and claim.interval == pytest.approx(
        proportion_interval(6000, 10000, 0.99)
    )


def test_the_wilson_interval_matches_its_closed_form():
    k, n, z = 30, 100, stats.norm.ppf(0.975)
    p = k / n
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z / (1 + z**2 / n) * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    assert proportion_interval(k, n, 0.95) == pytest.approx((centre - half, centre + half))


def test_a_verdict_far_from_its_bound_never_flips_and_one_on_its_bound_often_does():
    far = ordering_claim([2.0, 2.1, 2.2, 2.05], [1.0, 1.1, 1.2, 1.05], paired=True, **ORDER)
    assert far.flip == 0.0
    # a published value right at the edge of the prediction interval
    edge = prediction_interval(RUNS)[1]
    borderline = single_run_claim(edge - 1e-9, RUNS, max_half_width=1.0, **FIELDS)
    assert 0.2 < borderline.flip < 0.8


def test_a_flip_estimate_is_deterministic_and_counts_other_verdicts():
    def judge(v):
        return np.where(v.mean(-1) > 0, "reproduced", "not reproduced")

    values = [0.05, -0.02, 0.03]
    first = flip_probability(judge, values, Verdict.REPRODUCED)
    assert first == flip_probability(judge, values, Verdict.REPRODUCED)
    assert 0 < first < 0.5
    assert flip_probability(judge, values, Verdict.NOT_REPRODUCED) == pytest.approx(1 - first)


def test_a_claim_serialises_with_its_summary_and_the_statistic_it_used():
    d = Claim(
        published=1.0, measured=[1, 2, 3], statistic="s", verdict="reproduced", **FIELDS
    ).to_dict()
    assert d["verdict"] == "reproduced" and d["mean"] == 2.0 and d["sd"] == 1.0 and d["n"] == 3
    assert d["estimator"] == "mean" and d["estimate"] == 2.0 and d["fidelity"] == "faithful"
    with pytest.raises(ValueError, match="fidelity"):
        Claim(
            published=1.0, measured=[1], statistic="s", verdict="reproduced", fidelity="x", **FIELDS
        )


def test_a_claim_whose_precondition_fails_is_not_testable_not_failed():
    from nnsanity.repro.claims import not_testable

    c = single_run_claim(2.21, [89.0, 90.0, 88.5], max_half_width=1.0, **FIELDS)
    assert c.verdict is Verdict.NOT_REPRODUCED
    u = not_testable(c, "the arm is at chance")
    assert u.verdict is Verdict.NOT_TESTABLE and u.flip is None
    assert u.details == {"why": "the arm is at chance", "verdict_if_testable": "not reproduced"}
    assert str(Verdict.NOT_TESTABLE) == "not testable at this budget"


def test_an_every_seed_flip_needs_spread_and_shrinks_with_the_margin():
    capped = every_seed_claim([1.0] * 12, low=0.99, published=1, **FIELDS)
    assert capped.verdict is Verdict.REPRODUCED and capped.flip is None  # no fit to make
    far = every_seed_claim([5.0, 5.2, 4.9, 5.1], low=0.0, published=1, **FIELDS)
    near = every_seed_claim([0.1, 0.3, 0.05, 0.2], low=0.0, published=1, **FIELDS)
    assert far.flip == 0.0 and near.flip is not None and near.flip > 0.2


def test_either_reading_of_a_single_run_can_reproduce_it_and_both_must_exclude_it():
    from nnsanity.repro.claims import single_run_readings_claim

    final, best = [95.0, 96.9, 96.0, 95.4, 96.8], [96.5, 96.6, 96.55, 96.5, 96.45]
    c = single_run_readings_claim(
        96.53, {"final": final, "best": best}, max_half_width=1.0, **FIELDS
    )
    assert c.verdict is Verdict.REPRODUCED  # the final reading alone is too wide: inconclusive
    assert c.details["readings"]["final"]["verdict"] == "inconclusive"
    far = single_run_readings_claim(
        99.0, {"final": best, "best": best}, max_half_width=1.0, **FIELDS
    )
    assert far.verdict is Verdict.NOT_REPRODUCED
