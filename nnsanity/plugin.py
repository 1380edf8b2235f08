"""The pytest plugin: options, fixtures, the header, the rerun hint and the claim table.

Loaded by every pytest run in an environment where nnsanity is installed, so it imports no
torch, numpy or scipy at module level: torch comes in when a fixture is first used, the claim
table's helpers (``_report``, which needs numpy and scipy) when there are claims to show.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import torch

from nnsanity.errors import SanityError

BUDGETS = ("smoke", "full")
_SEED = pytest.StashKey[int]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("nnsanity", "neural-network sanity checks and reproductions")

    def add(name: str, help: str, **kw: Any) -> None:
        group.addoption(
            f"--nnsanity-{name}",
            dest=f"nnsanity_{name.replace('-', '_')}",
            default=None,
            help=help,
            **kw,
        )
        parser.addini(f"nnsanity_{name.replace('-', '_')}", help)

    add(
        "seed",
        "seed for torch, numpy and random in the nnsanity_seed fixture: an integer, "
        "'random' for a fresh one, or 'last' to reuse the previous run's (default: 0)",
    )
    add(
        "device",
        "torch device for the nnsanity_device fixture, e.g. cpu, cuda, cuda:1 (default: cpu)",
    )
    add(
        "budget",
        "work budget for tests that scale: smoke or full (default: smoke)",
        choices=BUDGETS,
    )
    add(
        "data-dir",
        "folder holding MNIST/raw/ to read (never written); also NNSANITY_DATA_DIR "
        "(default: download into ~/.cache/nnsanity)",
    )
    add("report", "write the reproduction claim table as JSON to this path (default: none)")
    add(
        "plots",
        "save the reproductions' figures as PNG into this folder; needs matplotlib (default: none)",
    )


def _option(config: pytest.Config, name: str, default: str | None = None) -> str | None:
    value = config.getoption(f"nnsanity_{name}")
    if value is None:
        value = config.getini(f"nnsanity_{name}") or None
    return default if value is None else str(value)


def _resolve_seed(config: pytest.Config) -> int:
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None and "nnsanity_seed" in workerinput:
        return int(workerinput["nnsanity_seed"])  # xdist: the controller chose it
    raw = _option(config, "seed", "0")
    if raw == "random":
        return random.Random().getrandbits(32)
    if raw == "last":
        cache = getattr(config, "cache", None)  # absent under -p no:cacheprovider
        return int(cache.get("nnsanity/seed", 0)) if cache is not None else 0
    try:
        seed = int(raw)
    except ValueError:
        raise pytest.UsageError(
            f"--nnsanity-seed must be an integer, 'random' or 'last', got {raw!r}"
        ) from None
    if not 0 <= seed < 2**64:  # the range every check's seed= takes (torch.manual_seed's)
        raise pytest.UsageError(f"--nnsanity-seed must be in [0, 2**64), got {seed}")
    return seed


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_SEED] = _resolve_seed(config)
    if not hasattr(config, "workerinput"):
        config.pluginmanager.register(_ClaimTable(config), "nnsanity-claims")
    if getattr(config, "cache", None) is not None and not hasattr(config, "workerinput"):
        config.cache.set("nnsanity/seed", config.stash[_SEED])
    budget = _option(config, "budget", "smoke")
    if budget not in BUDGETS:
        raise pytest.UsageError(f"nnsanity_budget must be one of {BUDGETS}, got {budget!r}")
    if _option(config, "plots") is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise pytest.UsageError(
                "--nnsanity-plots needs matplotlib: pip install 'nnsanity[repro]'"
            ) from None


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist: every worker uses the controller's seed (one seed per run, as pytest-randomly)."""
    node.workerinput["nnsanity_seed"] = node.config.stash[_SEED]


def _seed_flag(config: pytest.Config) -> str:
    return f"--nnsanity-seed={config.stash[_SEED]}"


def _rerun_flags(config: pytest.Config) -> str:
    """The seed, plus the device and budget where they are not the defaults."""
    flags = [_seed_flag(config)]
    for name, default in (("device", "cpu"), ("budget", "smoke")):
        value = _option(config, name, default)
        if value != default:
            flags.append(f"--nnsanity-{name}={value}")
    return " ".join(flags)


def pytest_report_header(config: pytest.Config) -> str:
    return (
        f"nnsanity: {_seed_flag(config)} --nnsanity-budget={_option(config, 'budget', 'smoke')}"
        f" --nnsanity-device={_option(config, 'device', 'cpu')}"
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed and call.excinfo is not None and call.excinfo.errisinstance(SanityError):
        report.sections.append(
            ("nnsanity", f"rerun with: pytest '{item.nodeid}' {_rerun_flags(item.config)}")
        )
    return report


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def nnsanity_seed(request: pytest.FixtureRequest) -> Iterator[int]:
    """Seed torch (and CUDA), numpy and random with the run's seed; restore their states after."""
    from nnsanity.reproducibility import seeded

    seed = request.config.stash[_SEED]
    with seeded(seed):
        yield seed


@pytest.fixture(scope="session")
def nnsanity_device(pytestconfig: pytest.Config) -> torch.device:
    """The torch.device from --nnsanity-device; skips when CUDA is asked for and absent."""
    import torch

    name = _option(pytestconfig, "device", "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        pytest.skip(f"--nnsanity-device={name} asked for CUDA, but torch sees no CUDA device")
    return device


@pytest.fixture(scope="session")
def nnsanity_budget(pytestconfig: pytest.Config) -> str:
    """'smoke' (default, CI-sized) or 'full' (the faithful setting), from --nnsanity-budget."""
    return _option(pytestconfig, "budget", "smoke")


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
def nnsanity_mnist(nnsanity_data_dir: Path | None):
    """MNIST in network2's split (50k train / 10k validation / 10k test), loaded once."""
    from nnsanity.datasets import mnist

    try:
        return mnist(nnsanity_data_dir)
    except (FileNotFoundError, ImportError) as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture
def nnsanity_claim(request: pytest.FixtureRequest) -> Callable[[Any], None]:
    """``record(claim)``: add a Claim to the end-of-run table and the JSON report."""

    def record(claim: Any) -> None:
        entry = {"test": request.node.nodeid, **claim.to_dict()}
        request.node.user_properties.append(("nnsanity_claim", entry))

    return record


@pytest.fixture(scope="session")
def nnsanity_plots(pytestconfig: pytest.Config) -> Path | None:
    """The folder for figures from --nnsanity-plots, created; None when plots are not asked for."""
    value = _option(pytestconfig, "plots")
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
    """Collects claims from test reports (so xdist workers' claims reach the controller)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.claims: list[dict[str, Any]] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call":
            self.claims += [v for k, v in report.user_properties if k == "nnsanity_claim"]

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.claims:
            return
        from nnsanity import _report  # numpy and scipy: only when there is a table to show

        terminalreporter.write_sep("=", "nnsanity claims")
        for line in _report.table(self.claims):
            terminalreporter.write_line(line)
        path = _option(self.config, "report")
        if path is not None:
            meta = {
                "seed": self.config.stash[_SEED],
                "budget": _option(self.config, "budget", "smoke"),
                "device": _option(self.config, "device", "cpu"),
            }
            written = _report.write_json(Path(path), self.claims, meta)
            terminalreporter.write_line(f"nnsanity: claim report written to {written}")
