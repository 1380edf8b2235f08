"""reproductions/conftest.py: a claim that does not reproduce fails unless marked as known, an
unexpected pass fails too, seeds follow --nnsanity-seed, SMOKE = None means full budget only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SCAFFOLD = (Path(__file__).parents[2] / "reproductions" / "conftest.py").read_text()
LOAD = 'pytest_plugins = ["nnsanity.repro.plugin"]\n'

CLAIMS = """
import dataclasses

import pytest

from nnsanity.repro.claims import Verdict, ordering_claim
from nnsanity.repro.plugin import inconclusive, not_reproduced


@dataclasses.dataclass(frozen=True)
class Budget:
    seeds: int = 4


FULL = Budget()
SMOKE = dataclasses.replace(FULL, seeds=3)
FIELDS = {"source": "nowhere", "statement": "a beats b", "published": "a > b"}


def ordering(cid, higher, lower):
    return ordering_claim(higher, lower, paired=False, id=cid, **FIELDS)


def test_it_reproduces(claim):
    claim(ordering("X.up", [2.0, 2.1, 2.2], [1.0, 1.1, 1.2]))


def test_it_does_not(claim):
    claim(ordering("X.down", [1.0, 1.1, 1.2], [2.0, 2.1, 2.2]))


@not_reproduced("b wins")
def test_it_does_not_and_is_known(claim):
    claim(ordering("X.known", [1.0, 1.1, 1.2], [2.0, 2.1, 2.2]))


@not_reproduced("b wins")
def test_it_was_known_not_to_but_does(claim):
    claim(ordering("X.surprise", [2.0, 2.1, 2.2], [1.0, 1.1, 1.2]))


@not_reproduced("b wins")
def test_it_was_known_not_to_but_is_inconclusive(claim):
    claim(ordering("X.noise", [1.0, 2.0, 1.5], [1.4, 1.6, 1.2]))


@inconclusive("too few seeds at smoke", budget="smoke")
def test_it_is_inconclusive_at_smoke_only(claim, budget):
    a = [1.0, 2.0, 1.5] if budget.seeds == 3 else [2.0, 2.1, 2.2, 2.3]
    claim(ordering("X.budget", a, [1.4, 1.6, 1.2, 1.3][: len(a)]))


def test_seeds_follow_the_run_seed(budget, seeds, claim):
    print("SEEDS", seeds(budget.seeds))
    claim(ordering("X.seeds", [2.0, 2.1, 2.2], [1.0, 1.1, 1.2]))
"""


@pytest.fixture
def suite(pytester):
    pytester.makeconftest(SCAFFOLD + LOAD)
    pytester.makepyfile(test_demo_claims=CLAIMS)
    return pytester


def test_known_non_reproductions_xfail_and_surprises_fail(suite):
    result = suite.runpytest("-rxXf")
    result.assert_outcomes(passed=2, failed=3, xfailed=2)
    result.stdout.fnmatch_lines(
        [
            "XFAIL *::test_it_does_not_and_is_known - known not reproduced: b wins",
            "FAILED *::test_it_does_not - nnsanity.repro.claims.Claim*",
            "FAILED *::test_it_was_known_not_to_but_does - [[]XPASS*",
            "FAILED *::test_it_was_known_not_to_but_is_inconclusive - *",
        ]
    )
    assert "ClaimInconclusive: X.noise: inconclusive" in result.stdout.str()


def test_a_budget_mark_applies_at_its_budget_only(suite):
    smoke = suite.runpytest("-k", "smoke_only")
    smoke.assert_outcomes(xfailed=1)
    full = suite.runpytest("-k", "smoke_only", "--nnsanity-budget=full")
    full.assert_outcomes(passed=1)


def test_seeds_follow_the_run_seed_and_are_recorded_with_each_claim(suite):
    result = suite.runpytest(
        "-k", "seeds", "-s", "--nnsanity-seed=1000", "--nnsanity-report=r.json"
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*SEEDS [[]1000, 1001, 1002[]]*"])
    (entry,) = json.loads((suite.path / "r.json").read_text())["claims"]
    assert entry["seeds"] == [1000, 1001, 1002] and entry["seconds"] >= 0


def test_a_module_with_smoke_none_runs_at_the_full_budget_only(pytester):
    pytester.makeconftest(SCAFFOLD + LOAD)
    pytester.makepyfile(
        """
        FULL = object()
        SMOKE = None
        NOT_AT_SMOKE = "too slow for CI"

        def test_uses_the_budget(budget):
            assert budget is FULL
        """
    )
    smoke = pytester.runpytest("-rs")
    smoke.assert_outcomes(skipped=1)
    smoke.stdout.fnmatch_lines(["*full budget only (too slow for CI)*"])
    pytester.runpytest("--nnsanity-budget=full").assert_outcomes(passed=1)
