"""What every claim file shares: its budget, its seeds, the claim recorder and the figure folder.

A claim file (see reproductions/README.md) opens with its claim card, then defines ``FULL``, the
faithful setting, and ``SMOKE = dataclasses.replace(FULL, ...)``; ``budget`` hands the test the
one that ``--nnsanity-budget`` asks for. Seeds follow ``--nnsanity-seed``: ``seeds(n)`` is
``[s, s + 1, ..., s + n - 1]`` for the run's seed ``s``, so the default run uses seeds 0..n-1
and ``--nnsanity-seed=1000`` a fresh set.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from nnsanity.plugin import SEED
from nnsanity.repro.claims import Claim, Verdict


@pytest.fixture(scope="module")
def budget(request: pytest.FixtureRequest, nnsanity_budget: str):
    """The requesting module's ``FULL`` or ``SMOKE`` constants, by ``--nnsanity-budget``."""
    module = request.module
    if not hasattr(module, "FULL") or not hasattr(module, "SMOKE"):
        raise pytest.UsageError(f"{module.__name__} uses `budget` but defines no FULL and SMOKE")
    return module.FULL if nnsanity_budget == "full" else module.SMOKE


@pytest.fixture(scope="session")
def seeds(pytestconfig: pytest.Config) -> Callable[[int], list[int]]:
    """``seeds(n)``: n consecutive seeds starting at the run's ``--nnsanity-seed``."""
    base = pytestconfig.stash[SEED]

    def take(n: int) -> list[int]:
        return [base + i for i in range(n)]

    return take


@pytest.fixture
def claim(nnsanity_claim: Callable[[Claim], None]) -> Callable[..., None]:
    """``claim(c, expect=Verdict.REPRODUCED)``: record ``c`` for the table and the JSON report,
    then assert its verdict, showing the whole claim when it differs."""

    def record(c: Claim, expect: Verdict = Verdict.REPRODUCED) -> None:
        __tracebackhide__ = True
        nnsanity_claim(c)
        if c.verdict is not expect:
            pytest.fail(f"{c.id}: {c.verdict} (expected {expect})\n{c}", pytrace=False)

    return record


@pytest.fixture(scope="session")
def figures(nnsanity_plots: Path | None) -> Path:
    """The ``--nnsanity-plots`` folder; a figure test is skipped without it."""
    if nnsanity_plots is None:
        pytest.skip("figures only with --nnsanity-plots")
    return nnsanity_plots
