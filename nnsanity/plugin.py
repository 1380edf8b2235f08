"""The pytest plugin: the seed and device options, their fixtures, the header and the rerun hint.

Loaded by every pytest run in an environment where nnsanity is installed, so it imports no
torch or numpy at module level (torch comes in when a fixture is first used). The reproduction
engine's options live in ``nnsanity.repro.plugin``, which users of the checks never load; it
adds its flags to the rerun hint through the ``pytest_nnsanity_rerun_flags`` hook.
"""

from __future__ import annotations

import random
from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from nnsanity.errors import SanityError

if TYPE_CHECKING:
    import torch

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
