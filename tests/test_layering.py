"""The architecture as a contract: what may import what (the tree in CONTRIBUTING.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "nnsanity"


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of its code (lazy imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


MODULES = {_module(p): _imports(p) for p in PACKAGE.rglob("*.py")}
CHECKS = sorted(m for m in MODULES if m.startswith("nnsanity.checks."))
CORE = sorted(m for m in MODULES if not m.startswith("nnsanity.repro"))
# The training frameworks are optional extras: each adapter imports its own, and only it does.
ADAPTERS = {
    "nnsanity.integrations.lightning": {"lightning", "pytorch_lightning"},
    "nnsanity.integrations.transformers": {"transformers", "accelerate"},
}
FRAMEWORKS = {"lightning", "pytorch_lightning", "transformers", "accelerate", "timm"}


def _from(imports: set[str], prefix: str) -> set[str]:
    return {i for i in imports if i == prefix or i.startswith(prefix + ".")}


def _frameworks(imports: set[str]) -> set[str]:
    return {i.split(".")[0] for i in imports} & FRAMEWORKS


def test_the_adapters_are_the_integrations_package():
    package = {m for m in MODULES if m.startswith("nnsanity.integrations.")}
    assert package == set(ADAPTERS), "list a new adapter and its framework in ADAPTERS"


@pytest.mark.parametrize(
    "module",
    [m for m in MODULES if not m.startswith(("nnsanity.integrations", "nnsanity.repro"))],
)
def test_the_core_never_imports_a_training_framework(module):
    assert not _frameworks(MODULES[module]), f"{module}: frameworks are extras, for the adapters"
    assert not _from(MODULES[module], "nnsanity.integrations"), module


@pytest.mark.parametrize("module", sorted(ADAPTERS))
def test_each_adapter_imports_its_own_framework_and_no_other(module):
    found = _frameworks(MODULES[module])
    assert found and found <= ADAPTERS[module], f"{module} imports {found}"
    assert not _from(MODULES[module], "nnsanity.integrations") - {module}
    assert not _from(MODULES[module], "nnsanity.checks"), "adapters drive the monitor only"


@pytest.mark.parametrize("module", CHECKS)
def test_a_check_imports_no_other_check_nor_the_engine_nor_pytest(module):
    imports = MODULES[module]
    others = {i for i in _from(imports, "nnsanity.checks") if not i.startswith(module)}
    assert not others, f"{module} imports another check: {others}"
    assert not _from(imports, "nnsanity.repro")
    assert not _from(imports, "pytest")


@pytest.mark.parametrize("module", CORE)
def test_the_library_never_imports_the_reproduction_engine(module):
    assert not _from(MODULES[module], "nnsanity.repro"), module


@pytest.mark.parametrize("module", sorted(MODULES))
def test_only_the_two_plugins_import_pytest(module):
    if module in ("nnsanity.plugin", "nnsanity.repro.plugin"):
        return
    assert not _from(MODULES[module], "pytest"), module


@pytest.mark.parametrize("module", [m for m in CORE if m.split(".")[-1].startswith("_")])
def test_private_modules_serve_the_checks_and_never_import_one(module):
    assert not _from(MODULES[module], "nnsanity.checks"), module
    assert not _from(MODULES[module], "nnsanity.plugin"), module


def test_the_plugin_imports_nothing_of_the_library_at_module_level_but_errors():
    tree = ast.parse((PACKAGE / "plugin.py").read_text())
    top = {
        n.module
        for n in tree.body
        if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("nnsanity")
    }
    assert top == {"nnsanity.errors"}  # loading it must not import torch


def test_reproductions_use_the_checks_through_the_public_api_only():
    for path in (ROOT / "reproductions").rglob("*.py"):
        assert not _from(_imports(path), "nnsanity.checks"), path
