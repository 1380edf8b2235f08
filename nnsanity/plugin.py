"""The pytest plugin: the seed and device options, their fixtures, the header and the rerun
hint; the collection of ``SanitySuite`` classes and their reports for CI.

Loaded by every pytest run in an environment where nnsanity is installed, so it imports no
torch or numpy at module level (torch comes in when a fixture is first used). The reproduction
engine's options live in ``nnsanity.repro.plugin``, which users of the checks never load; it
adds its flags to the rerun hint through the ``pytest_nnsanity_rerun_flags`` hook.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from nnsanity.errors import SanityError

if TYPE_CHECKING:
    import torch

    from nnsanity import _reports
    from nnsanity.suite import SanitySuite

SEED = pytest.StashKey[int]()


class _HookSpecs:
    @pytest.hookspec
    def pytest_nnsanity_rerun_flags(self, config: pytest.Config) -> list[str]:  # type: ignore[empty-body]
        """Flags, besides the seed and device, that rerun a failed test the same way."""


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(_HookSpecs)


def add_option(parser: pytest.Parser, name: str, help: str, **kw: Any) -> None:
    """``--nnsanity-NAME`` with the ini key ``nnsanity_NAME``; the help states the default."""
    group = parser.getgroup("nnsanity", "neural-network sanity checks")
    dest = f"nnsanity_{name.replace('-', '_')}"
    group.addoption(f"--nnsanity-{name}", dest=dest, default=None, help=help, **kw)
    parser.addini(dest, help)


def option(config: pytest.Config, name: str, default: str | None = None) -> str | None:
    """An option's value: the command line, then the ini file, then ``default``."""
    value = config.getoption(f"nnsanity_{name}")
    if value is None:
        value = config.getini(f"nnsanity_{name}") or None
    return default if value is None else str(value)


def pytest_addoption(parser: pytest.Parser) -> None:
    add_option(
        parser,
        "seed",
        "seed for torch, numpy and random in the nnsanity_seed fixture: an integer, "
        "'random' for a fresh one, or 'last' to reuse the previous run's (default: 0)",
    )
    add_option(
        parser,
        "device",
        "torch device for the nnsanity_device fixture, e.g. cpu, cuda, cuda:1 (default: cpu)",
    )
    add_option(
        parser,
        "md",
        "append a Markdown table of the SanitySuite results to this file (one row per suite, "
        "one column per check), e.g. $GITHUB_STEP_SUMMARY",
    )
    add_option(
        parser, "json", "write every SanitySuite result, its measured values and bounds, as JSON"
    )
    add_option(  # nnsanity.repro.plugin saves the reproductions' figures here too
        parser,
        "plots",
        "save figures as PNG into this folder: the profiles SanitySuite checks measured (the "
        "error signal by layer, activations by depth, the overfit trace) and the reproductions' "
        "figures; needs matplotlib (default: none)",
    )


def _resolve_seed(config: pytest.Config) -> int:
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None and "nnsanity_seed" in workerinput:
        return int(workerinput["nnsanity_seed"])  # xdist: the controller chose it
    raw = option(config, "seed", "0")
    if raw == "random":
        return random.Random().getrandbits(32)
    if raw == "last":
        cache = getattr(config, "cache", None)  # absent under -p no:cacheprovider
        if cache is None:
            raise pytest.UsageError(
                "--nnsanity-seed=last reads the previous run's seed from pytest's cache, which "
                "-p no:cacheprovider turns off: pass the seed itself (the header prints it)"
            )
        return int(cache.get("nnsanity/seed", 0))
    try:
        seed = int(str(raw))
    except ValueError:
        raise pytest.UsageError(
            f"--nnsanity-seed must be an integer, 'random' or 'last', got {raw!r}"
        ) from None
    if not 0 <= seed < 2**64:  # the range every check's seed= takes (torch.manual_seed's)
        raise pytest.UsageError(f"--nnsanity-seed must be in [0, 2**64), got {seed}")
    return seed


def pytest_configure(config: pytest.Config) -> None:
    config.stash[SEED] = _resolve_seed(config)
    if option(config, "plots") is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise pytest.UsageError(
                "--nnsanity-plots needs matplotlib: pip install matplotlib (or 'nnsanity[repro]')"
            ) from None
    config.addinivalue_line(
        "markers", "nnsanity(check, category): a SanitySuite's check (set by the plugin)"
    )
    if not hasattr(config, "workerinput"):  # the controller gathers the workers' reports
        config.pluginmanager.register(_SuiteReport(config), "nnsanity-suite-report")
    if getattr(config, "cache", None) is not None and not hasattr(config, "workerinput"):
        config.cache.set("nnsanity/seed", config.stash[SEED])


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist: every worker uses the controller's seed (one seed per run, as pytest-randomly)."""
    node.workerinput["nnsanity_seed"] = node.config.stash[SEED]


def _rerun_flags(config: pytest.Config) -> str:
    """The seed, the device where it is not the default, and other plugins' flags."""
    flags = [f"--nnsanity-seed={config.stash[SEED]}"]
    device = option(config, "device", "cpu")
    if device != "cpu":
        flags.append(f"--nnsanity-device={device}")
    for more in config.hook.pytest_nnsanity_rerun_flags(config=config):
        flags += more
    return " ".join(flags)


def pytest_report_header(config: pytest.Config) -> str:
    return (
        f"nnsanity: --nnsanity-seed={config.stash[SEED]}"
        f" --nnsanity-device={option(config, 'device', 'cpu')}"
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.skipped and isinstance(item, CheckItem) and isinstance(report.longrepr, tuple):
        path, line, _ = item.reportinfo()  # a check that does not apply: the suite's line
        report.longrepr = (str(path), (line or 0) + 1, report.longrepr[2])
    if report.failed and call.excinfo is not None and call.excinfo.errisinstance(SanityError):
        report.sections.append(
            ("nnsanity", f"rerun with: pytest '{item.nodeid}' {_rerun_flags(item.config)}")
        )
    return report


@pytest.fixture
def nnsanity_seed(request: pytest.FixtureRequest) -> Iterator[int]:
    """Seed torch (and CUDA), numpy and random with the run's seed; restore their states after."""
    from nnsanity.seeding import seeded

    seed = request.config.stash[SEED]
    with seeded(seed):
        yield seed


@pytest.fixture(scope="session")
def nnsanity_device(pytestconfig: pytest.Config) -> torch.device:
    """The torch.device from --nnsanity-device; skips when CUDA is asked for and absent."""
    import torch

    name = str(option(pytestconfig, "device", "cpu"))
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        pytest.skip(f"--nnsanity-device={name} asked for CUDA, but torch sees no CUDA device")
    return device


# -- SanitySuite classes: one test per check ---------------------------------------------------

_CHECK = "nnsanity_check"  # user_properties keys: the check (set at collection) and its outcome
_OUTCOME = "nnsanity_outcome"


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(
    collector: pytest.Module | pytest.Class, name: str, obj: object
) -> pytest.Class | None:
    if not isinstance(obj, type):
        return None
    from nnsanity.suite import SanitySuite  # no torch: the checks load when a test runs

    if issubclass(obj, SanitySuite) and obj is not SanitySuite and collector.istestclass(obj, name):
        return SuiteClass.from_parent(collector, name=name, obj=obj)
    return None


class SuiteClass(pytest.Class):
    """A ``SanitySuite`` subclass: one :class:`CheckItem` per check it selects, then the
    class's own ``test_*`` methods (and fixtures), as pytest collects any test class."""

    def collect(self) -> list[pytest.Item | pytest.Collector]:
        try:
            checks = self.obj.selected()
        except ValueError as e:
            raise self.CollectError(f"{self.obj.__name__}: {e}") from None
        items: list[pytest.Item | pytest.Collector] = []
        for check in checks:
            item = CheckItem.from_parent(
                self, name=check.name, callobj=_Runner(self.obj, check.name).run
            )
            item.add_marker(pytest.mark.nnsanity(check=check.name, category=check.category))
            if check.name in self.obj.skip:
                item.add_marker(pytest.mark.skip(reason=self.obj.skip[check.name]))
            item.user_properties.append((_CHECK, check.name))
            items.append(item)
        return [*items, *super().collect()]


class CheckItem(pytest.Function):
    """One check of a suite; a failed check shows its own message, not a traceback."""

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException]) -> Any:  # type: ignore[override]
        if excinfo.errisinstance(SanityError):
            return str(excinfo.value)
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Any, int | None, str]:
        """Where the suite class is (not the plugin's runner), for skip and failure lines."""
        path, line, _ = self.parent.reportinfo()  # type: ignore[union-attr]
        return path, line, f"{self.parent.name}.{self.name}"  # type: ignore[union-attr]


class _Runner:
    def __init__(self, suite: type[SanitySuite], check: str) -> None:
        self.suite, self.check = suite, check

    def run(self, nnsanity_seed: int, request: pytest.FixtureRequest) -> None:
        __tracebackhide__ = True
        from nnsanity.suite import NotApplicable

        props = request.node.user_properties
        try:
            run = self.suite().prepare(self.check)
        except NotApplicable as e:
            pytest.skip(str(e))
        start = time.perf_counter()  # the check alone: building the model is not timed
        try:
            result = run(nnsanity_seed)
        except SanityError as e:
            props.append((_OUTCOME, _encode(e.result, time.perf_counter() - start)))
            raise
        props.append((_OUTCOME, _encode(result, time.perf_counter() - start)))


def _encode(result: Any, seconds: float) -> str:
    # a string, so xdist carries it to the controller whatever the result holds
    data = result.to_dict() if hasattr(result, "to_dict") else None
    return json.dumps({"seconds": seconds, "result": data}, default=repr)


class _SuiteReport:
    """Gathers the suites' outcomes from the test reports (the workers' too, under xdist) and
    writes the Markdown, the JSON and the terminal summary."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.outcomes: dict[str, _reports.Outcome] = {}
        self.written: list[str] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        from nnsanity import _reports

        props = dict(report.user_properties)
        if _CHECK not in props or (report.when != "call" and report.passed):
            return
        suite = report.nodeid.rsplit("::", 1)[0]
        measured = json.loads(str(props[_OUTCOME])) if _OUTCOME in props else {}
        if report.skipped:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else ""
            verdict: _reports.Verdict = "skip"
            reason = reason.removeprefix("Skipped: ")
        elif report.failed:
            verdict = "fail" if measured.get("result") is not None else "error"
            reason = "" if verdict == "fail" else str(report.longrepr).strip().splitlines()[-1]
        else:
            verdict, reason = "pass", ""
        self.outcomes[report.nodeid] = _reports.Outcome(
            suite=suite,
            check=str(props[_CHECK]),
            verdict=verdict,
            seconds=measured.get("seconds"),
            reason=reason,
            result=measured.get("result"),
        )

    def pytest_sessionfinish(self) -> None:
        """Write the files asked for (with or without a terminal), even when no suite ran."""
        from nnsanity import _reports
        from nnsanity.catalogue import CATALOGUE

        outcomes = list(self.outcomes.values())
        md, js, plots = (option(self.config, name) for name in ("md", "json", "plots"))
        if md:
            with Path(md).open("a") as f:
                f.write(_reports.markdown(outcomes, [c.name for c in CATALOGUE]))
            self.written.append(f"Markdown table appended to {md}")
        if js:
            Path(js).write_text(_reports.to_json(outcomes, self.config.stash[SEED]))
            self.written.append(f"results written to {js}")
        if plots and outcomes:
            from nnsanity import _plots

            measured = [(o.suite, o.check, o.result) for o in outcomes if o.result is not None]
            saved = _plots.save(measured, Path(plots))
            self.written.append(f"{len(saved)} profiles saved as PNG in {plots}")

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        from nnsanity import _reports

        if self.outcomes:
            terminalreporter.write_sep("-", "nnsanity suites")
            for line in _reports.summary(list(self.outcomes.values())):
                terminalreporter.write_line(line)
        for line in self.written:
            terminalreporter.write_line(f"nnsanity: {line}")
