"""The statistics behind every verdict: prediction intervals, orderings, claim records."""

import math

import pytest
from scipy import stats

from nnsanity.repro.claims import (
    Claim,
    Verdict,
    every_seed_claim,
    exact_claim,
    ordering_claim,
    proportion_claim,
    single_run_claim,
)
from nnsanity.repro.stats import (
    binomial_se,
    confidence_interval,
    paired_p_greater,
    prediction_interval,
    proportion_interval,
    summarize,
    welch_p_greater,
)

FIELDS = {"id": "X.demo", "source": "nowhere", "statement": "demo"}
ORDER = {**FIELDS, "published": "a > b"}


def test_prediction_interval_is_wider_than_the_confidence_interval_by_sqrt_n_plus_1():
    values = [96.4, 96.5, 96.3, 96.6]
    lo, hi = prediction_interval(values)
    c_lo, c_hi = confidence_interval(values)
    s = summarize(values)
    t = stats.t.ppf(0.975, 3)
    assert hi - s.mean == pytest.approx(t * s.sd * math.sqrt(1 + 1 / 4))
    assert (hi - lo) / (c_hi - c_lo) == pytest.approx(math.sqrt(5))


def test_a_published_single_run_inside_the_prediction_interval_reproduces():
    inside = single_run_claim(96.5, [96.4, 96.5, 96.3, 96.6], **FIELDS)
    outside = single_run_claim(97.5, [96.4, 96.5, 96.3, 96.6], **FIELDS)
    assert inside.verdict is Verdict.REPRODUCED
    assert outside.verdict is Verdict.NOT_REPRODUCED
    assert outside.interval[1] < 97.5


def test_an_ordering_has_three_outcomes():
    a, b = [2.0, 2.1, 2.2, 2.05], [1.0, 1.1, 1.2, 1.05]
    assert ordering_claim(a, b, paired=False, **ORDER).verdict is Verdict.REPRODUCED
    assert ordering_claim(b, a, paired=False, **ORDER).verdict is Verdict.NOT_REPRODUCED
    noisy = ordering_claim([1.0, 2.0, 1.5], [1.4, 1.6, 1.2], paired=False, **ORDER)
    assert noisy.verdict is Verdict.WITHIN_NOISE


def test_a_paired_ordering_sees_a_consistent_per_seed_gain_that_welch_misses():
    # Seeds move both arms together; the per-seed difference is always +0.1.
    base = [90.0, 95.0, 97.0, 92.0, 94.0]
    better = [b + 0.1 + 0.01 * i for i, b in enumerate(base)]
    assert welch_p_greater(better, base) > 0.05
    assert paired_p_greater(better, base) < 0.001
    claim = ordering_claim(better, base, paired=True, **ORDER)
    assert claim.verdict is Verdict.REPRODUCED
    assert claim.measured == pytest.approx([0.1, 0.11, 0.12, 0.13, 0.14])
    assert claim.interval[0] > 0


def test_paired_runs_must_have_equal_lengths():
    with pytest.raises(ValueError, match="equal lengths"):
        paired_p_greater([1.0, 2.0], [1.0])


def test_binomial_standard_error():
    assert binomial_se(25, 100) == pytest.approx(math.sqrt(0.25 * 0.75 / 100))


def test_a_claim_serialises_with_its_summary():
    d = Claim(
        published=1.0, measured=[1, 2, 3], statistic="s", verdict="reproduced", **FIELDS
    ).to_dict()
    assert d["verdict"] == "reproduced" and d["mean"] == 2.0 and d["sd"] == 1.0 and d["n"] == 3


def test_an_exact_claim_reproduces_only_when_it_holds():
    assert exact_claim(True, [0.0], published=0.0, statistic="s", **FIELDS).verdict is (
        Verdict.REPRODUCED
    )
    assert exact_claim(False, [1.0], published=0.0, statistic="s", **FIELDS).verdict is (
        Verdict.NOT_REPRODUCED
    )


def test_an_every_seed_claim_fails_when_one_seed_fails_and_says_which():
    claim = every_seed_claim([True, False, True], [1, 0, 1], published=1, statistic="s", **FIELDS)
    assert claim.verdict is Verdict.NOT_REPRODUCED
    assert claim.details["holds_per_seed"] == [True, False, True]
    with pytest.raises(ValueError, match="at least one seed"):
        every_seed_claim([], [], published=1, statistic="s", **FIELDS)


def test_a_proportion_claim_has_three_outcomes_from_its_wilson_interval():
    common = {"above": 0.5, "level": 0.99, "published": "usually", "statistic": "s", **FIELDS}
    assert proportion_claim(6000, 10000, **common).verdict is Verdict.REPRODUCED
    assert proportion_claim(4000, 10000, **common).verdict is Verdict.NOT_REPRODUCED
    assert proportion_claim(51, 100, **common).verdict is Verdict.WITHIN_NOISE
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
