"""The public API: small, listed in __all__, every name importable, no torch at import."""

import subprocess
import sys

import nnsanity


def test_every_public_name_resolves_and_nothing_else_is_lazily_exported():
    assert set(nnsanity.__all__) == set(nnsanity._LAZY) | {"SanityError", "__version__"}
    for name in nnsanity.__all__:
        assert getattr(nnsanity, name) is not None, name


def test_every_check_has_a_measuring_twin_in_its_module():
    checks = [n for n in nnsanity.__all__ if n.startswith("assert_")]
    assert len(checks) == 10
    for name in checks:
        module = nnsanity._LAZY[name]
        twins = [
            n for n in nnsanity.__all__ if n.startswith("measure_") and nnsanity._LAZY[n] == module
        ]
        assert twins, f"{name} has no measure_* twin in {module}"


def test_importing_nnsanity_and_its_pytest_plugin_imports_neither_torch_nor_numpy_nor_scipy():
    # the plugin loads on every pytest run where nnsanity is installed: it must stay cheap
    code = (
        "import sys, nnsanity, nnsanity.plugin; "
        "heavy = {'torch', 'numpy', 'scipy'} & set(sys.modules); assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
