"""The reproduction engine's pytest plugin: budget, MNIST, claims, report, plots and progress.

Not registered under ``pytest11``: only the suites that reproduce claims load it, with
``pytest_plugins = ["nnsanity.repro.plugin"]`` in their root conftest (as this repository's
does) or ``-p nnsanity.repro.plugin``. It needs the core plugin (``nnsanity.plugin``, loaded
with nnsanity) for the seed, and adds ``--nnsanity-budget`` to its header and rerun hint.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pytest

from nnsanity.plugin import SEED, add_option, option

if TYPE_CHECKING:
    from nnsanity.repro.claims import Claim
    from nnsanity.repro.mnist import MNIST

BUDGETS = ("smoke", "full")


def not_reproduced(reason: str, *, budget: str | None = None) -> pytest.MarkDecorator:
    """Mark a claim test whose claim is known not to reproduce (at ``budget`` only, if given):
    it becomes a strict xfail that expects the recording fixture's ``ClaimNotReproduced``, so
    an unexpected pass fails the run, and so does an inconclusive or a crashing test.
    ``reason`` states the measured reason in short; the claim card states it in full."""
    return pytest.mark.nnsanity_known(kind="not reproduced", budget=budget, reason=reason)


def inconclusive(reason: str, *, budget: str | None = None) -> pytest.MarkDecorator:
    """As ``not_reproduced``, for a claim our measurement cannot decide (``ClaimInconclusive``),
    e.g. at the smoke budget only, where fewer seeds leave its interval too wide."""
    return pytest.mark.nnsanity_known(kind="inconclusive", budget=budget, reason=reason)


def not_testable(reason: str, *, budget: str | None = None) -> pytest.MarkDecorator:
    """As ``not_reproduced``, for a claim whose declared precondition fails at this budget
    (``ClaimNotTestable``): the run cannot test it, which is not evidence against it."""
    return pytest.mark.nnsanity_known(kind="not testable", budget=budget, reason=reason)


def pytest_addoption(parser: pytest.Parser) -> None:
    add_option(
        parser,
        "budget",
        "work budget for reproductions: smoke (CI-sized) or full (default: smoke)",
        choices=BUDGETS,
    )
    add_option(
        parser,
        "data-dir",
        "folder holding MNIST/raw/ to read (never written); also NNSANITY_DATA_DIR "
        "(default: download into ~/.cache/nnsanity)",
    )
    add_option(
        parser, "report", "write the reproduction claim table as JSON to this path (default: none)"
    )


def pytest_configure(config: pytest.Config) -> None:
    budget = option(config, "budget", "smoke")
    if budget not in BUDGETS:
        raise pytest.UsageError(f"nnsanity_budget must be one of {BUDGETS}, got {budget!r}")
    if option(config, "plots") is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise pytest.UsageError(
                "--nnsanity-plots needs matplotlib: pip install 'nnsanity[repro]'"
            ) from None
    config.addinivalue_line(
        "markers",
        "nnsanity_known(kind, budget, reason): a claim known not to reproduce or to be "
        "inconclusive (at one budget, or all): a strict xfail; see nnsanity.repro.plugin",
    )
    if not hasattr(config, "workerinput"):
        config.pluginmanager.register(_ClaimTable(config), "nnsanity-claims")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Turn each ``nnsanity_known`` mark that applies to this budget into a strict xfail."""
    from nnsanity.repro.claims import ClaimInconclusive, ClaimNotReproduced, ClaimNotTestable

    raises = {
        "not reproduced": ClaimNotReproduced,
        "inconclusive": ClaimInconclusive,
        "not testable": ClaimNotTestable,
    }
    budget = option(config, "budget", "smoke")
    for item in items:
        for mark in item.iter_markers("nnsanity_known"):
            kind, when = mark.kwargs["kind"], mark.kwargs.get("budget")
            if when is None or when == budget:
                where = "" if when is None else f" at the {when} budget"
                reason = f"known {kind}{where}: {mark.kwargs['reason']}"
                item.add_marker(pytest.mark.xfail(strict=True, raises=raises[kind], reason=reason))


def pytest_report_header(config: pytest.Config) -> str:
    return f"nnsanity reproductions: --nnsanity-budget={option(config, 'budget', 'smoke')}"


def pytest_nnsanity_rerun_flags(config: pytest.Config) -> list[str]:
    budget = option(config, "budget", "smoke")
    return [] if budget == "smoke" else [f"--nnsanity-budget={budget}"]


@pytest.fixture(scope="session")
def nnsanity_budget(pytestconfig: pytest.Config) -> str:
    """'smoke' (default, CI-sized) or 'full' (the faithful setting), from --nnsanity-budget."""
    return str(option(pytestconfig, "budget", "smoke"))


@pytest.fixture(scope="session")
def nnsanity_data_dir(pytestconfig: pytest.Config) -> Path | None:
    """The MNIST folder from --nnsanity-data-dir, NNSANITY_DATA_DIR or the ini file, if any."""
    value = (
        pytestconfig.getoption("nnsanity_data_dir")
        or os.environ.get("NNSANITY_DATA_DIR")
        or pytestconfig.getini("nnsanity_data_dir")
        or None
    )
    if value is None:
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() else Path(pytestconfig.rootpath, path).resolve()


@pytest.fixture(scope="session")
def nnsanity_mnist(nnsanity_data_dir: Path | None) -> MNIST:
    """MNIST in network2's split (50k train / 10k validation / 10k test), loaded once."""
    from nnsanity.repro.mnist import mnist

    try:
        return mnist(nnsanity_data_dir)
    except (FileNotFoundError, ImportError) as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture
def nnsanity_claim(request: pytest.FixtureRequest) -> Callable[[Claim], None]:
    """``record(claim)``: add a Claim to the end-of-run table and the JSON report; the report
    adds the test's wall time (its setup included, so a shared measurement is charged to the
    first claim that needs it)."""

    def record(claim: Claim) -> None:
        entry = {"test": request.node.nodeid, **claim.to_dict()}
        request.node.user_properties.append(("nnsanity_claim", entry))

    return record


@pytest.fixture(scope="session")
def nnsanity_plots(pytestconfig: pytest.Config) -> Path | None:
    """The folder for figures from --nnsanity-plots, created; None when plots are not asked for."""
    value = option(pytestconfig, "plots")
    if value is None:
        return None
    path = Path(value).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def nnsanity_progress(pytestconfig: pytest.Config) -> Callable[..., None]:
    """``progress(label, done, total, unit="model-epochs")``: a progress line with elapsed time
    and ETA for long runs, at most every 10 s and always at the end; quiet under -q."""
    config = pytestconfig
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    started: dict[str, float] = {}
    printed: dict[str, float] = {}

    def progress(label: str, done: int, total: int, unit: str = "model-epochs") -> None:
        now = time.monotonic()
        start = started.setdefault(label, now)
        if reporter is None or config.get_verbosity() < 0:
            return
        if done < total and now - printed.get(label, start) < 10:
            return  # a line every 10 s at most, and always the last one
        printed[label] = now
        elapsed = now - start
        eta = elapsed / done * (total - done) if done else float("nan")
        line = f"[nnsanity] {label}: {done}/{total} {unit}, {elapsed:.0f}s, ETA {eta:.0f}s"
        capture = config.pluginmanager.get_plugin("capturemanager")
        # Tests run with output captured: write past it, as pytest's live logging does.
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            reporter.write_line(line)
            reporter.flush()

    return progress


# -- the claim table ---------------------------------------------------------------------------


class _ClaimTable:
    """Collects claims from test reports (so xdist workers' claims reach the controller), with
    each test's wall time: setup, call and teardown."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.claims: list[dict[str, Any]] = []
        self.seconds: dict[str, float] = {}
        self.started = time.time()

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.seconds[report.nodeid] = self.seconds.get(report.nodeid, 0.0) + report.duration
        if report.when == "teardown":
            for key, value in report.user_properties:
                if key == "nnsanity_claim":
                    claim = cast(dict[str, Any], value)
                    self.claims.append({**claim, "seconds": self.seconds[report.nodeid]})

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.claims:
            return
        from nnsanity.repro import report as _report  # numpy, scipy: only for a table

        terminalreporter.write_sep("=", "nnsanity claims")
        for line in _report.table(self.claims):
            terminalreporter.write_line(line)
        path = option(self.config, "report")
        if path is not None:
            seed: int = self.config.stash[SEED]
            meta: dict[str, Any] = {
                "seed": seed,
                "budget": option(self.config, "budget", "smoke"),
                "device": option(self.config, "device", "cpu"),
                "command": _report.portable_command(
                    ["pytest", *self.config.invocation_params.args]
                ),
                "wall_seconds": time.time() - self.started,
                "test_seconds": sum(self.seconds.values()),
            }
            written = _report.write_json(Path(path), self.claims, meta, self.config.rootpath)
            terminalreporter.write_line(f"nnsanity: claim report written to {written}")
