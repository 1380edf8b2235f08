"""The statistics behind every verdict: prediction intervals, orderings, claim records."""

import math

import pytest
from scipy import stats

from nnsanity.repro.claims import Claim, Verdict, ordering_claim, single_run_claim
from nnsanity.repro.stats import (
    binomial_se,
    confidence_interval,
    paired_p_greater,
    prediction_interval,
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
