"""The public API: small, one name table, every name importable, no torch at import."""

import ast
import subprocess
import sys
from pathlib import Path

import nnsanity

PACKAGE = Path(nnsanity.__file__).parent


def test_every_public_name_resolves_and_nothing_else_is_lazily_exported():
    assert set(nnsanity.__all__) == set(nnsanity._LAZY) | {"SanityError", "__version__"}
    for name in nnsanity.__all__:
        assert getattr(nnsanity, name) is not None, name


def test_the_type_checking_re_exports_match_the_name_table():
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    (block,) = [n for n in tree.body if isinstance(n, ast.If)]  # if TYPE_CHECKING:
    typed = {a.name: node.module for node in block.body for a in node.names}
    assert typed == nnsanity._LAZY


def test_every_check_is_a_measure_twin_plus_a_result_class_in_one_module():
    checks = [n for n in nnsanity.__all__ if n.startswith("assert_")]
    for name in checks:
        module = nnsanity._LAZY[name]
        twins = [n for n, m in nnsanity._LAZY.items() if n.startswith("measure_") and m == module]
        results = [n for n, m in nnsanity._LAZY.items() if n.endswith("Result") and m == module]
        assert len(twins) == 1 and len(results) == 1, (name, twins, results)
        assert module.startswith("nnsanity.checks."), module


def test_importing_nnsanity_and_its_pytest_plugin_imports_neither_torch_nor_numpy_nor_scipy():
    # the plugin loads on every pytest run where nnsanity is installed: it must stay cheap
    code = (
        "import sys, nnsanity, nnsanity.plugin; "
        "heavy = {'torch', 'numpy', 'scipy'} & set(sys.modules); assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
