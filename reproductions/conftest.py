"""What every claim file shares: its budget, its seeds, the claim recorder and the figure folder.

A claim file (see reproductions/README.md) opens with its claim card, then defines ``FULL``, the
faithful setting, and ``SMOKE = dataclasses.replace(FULL, ...)``; ``budget`` hands the test the
one that ``--nnsanity-budget`` asks for. Seeds follow ``--nnsanity-seed``: ``seeds(n)`` is
``[s, s + 1, ..., s + n - 1]`` for the run's seed ``s``, so the default run uses seeds 0..n-1
and ``--nnsanity-seed=1000`` a fresh set.

``claim(c)`` records a claim and fails the test unless the claim reproduced (or is an identity
that holds): a claim known not to reproduce is marked ``not_reproduced(reason)`` (or
``inconclusive(reason)``) from ``nnsanity.repro.plugin``, a strict xfail, so an unexpected pass
is reported too.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from nnsanity.plugin import SEED
from nnsanity.repro.claims import (
    Claim,
    ClaimInconclusive,
    ClaimNotReproduced,
    ClaimNotTestable,
    Verdict,
)


@pytest.fixture(scope="module")
def budget(request: pytest.FixtureRequest, nnsanity_budget: str):
    """The requesting module's ``FULL`` or ``SMOKE`` constants, by ``--nnsanity-budget``.

    ``SMOKE = None`` runs the module at the full budget only: its tests are skipped at smoke with
    the module's ``NOT_AT_SMOKE`` reason."""
    module = request.module
    if not hasattr(module, "FULL") or not hasattr(module, "SMOKE"):
        raise pytest.UsageError(f"{module.__name__} uses `budget` but defines no FULL and SMOKE")
    if nnsanity_budget == "full":
        return module.FULL
    if module.SMOKE is None:
        pytest.skip(f"full budget only ({module.NOT_AT_SMOKE}): --nnsanity-budget=full")
    return module.SMOKE


class Seeds:
    """``seeds(n)``: n consecutive seeds from the run's ``--nnsanity-seed``; remembers them."""

    def __init__(self, base: int) -> None:
        self.base = base
        self.issued: set[int] = set()

    def __call__(self, n: int) -> list[int]:
        out = [self.base + i for i in range(n)]
        self.issued.update(out)
        return out


@pytest.fixture(scope="module")
def seeds(pytestconfig: pytest.Config) -> Seeds:
    """``seeds(n)``: n consecutive seeds starting at the run's ``--nnsanity-seed``."""
    return Seeds(pytestconfig.stash[SEED])


@pytest.fixture
def claim(
    request: pytest.FixtureRequest,
    nnsanity_claim: Callable[[Claim], None],
    seeds: Seeds,
    nnsanity_budget: str,
) -> Callable[[Claim], Claim]:
    """``claim(c)``: record ``c`` for the table and the JSON report (with the seeds its module
    drew, unless it names its own), then raise ``ClaimNotReproduced``, ``ClaimInconclusive``
    or ``ClaimNotTestable`` unless it reproduced or is an identity that holds."""

    def record(c: Claim) -> Claim:
        __tracebackhide__ = True
        if not c.seeds and c.verdict is not Verdict.IDENTITY:
            c.seeds = sorted(seeds.issued)
        known = request.node.get_closest_marker("nnsanity_known")
        applies = (
            known is not None
            and known.kwargs.get("budget") in (None, nnsanity_budget)
            and known.kwargs.get("kind") == str(c.verdict).replace(" at this budget", "")
        )
        if c.verdict not in (Verdict.REPRODUCED, Verdict.IDENTITY) and "why" not in c.details:
            # the measured reason of a mark for this outcome and budget; else say what failed
            c.details["why"] = known.kwargs["reason"] if applies else f"unexpected: {c.statistic}"
        nnsanity_claim(c)
        if c.verdict is Verdict.NOT_REPRODUCED:
            raise ClaimNotReproduced(str(c))
        if c.verdict is Verdict.INCONCLUSIVE:
            raise ClaimInconclusive(str(c))
        if c.verdict is Verdict.NOT_TESTABLE:
            raise ClaimNotTestable(f"{c}; {c.details.get('why', '')}")
        return c

    return record


@pytest.fixture(scope="session")
def figures(nnsanity_plots: Path | None) -> Path:
    """The ``--nnsanity-plots`` folder; a figure test is skipped without it."""
    if nnsanity_plots is None:
        pytest.skip("figures only with --nnsanity-plots")
    return nnsanity_plots
