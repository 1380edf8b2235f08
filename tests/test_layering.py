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


def _from(imports: set[str], prefix: str) -> set[str]:
    return {i for i in imports if i == prefix or i.startswith(prefix + ".")}


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
