"""The README's examples run as written, each in a fresh interpreter; its compatibility table
is the zoo's."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_has_examples():
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("block", BLOCKS, ids=[f"example-{i}" for i in range(len(BLOCKS))])
def test_every_readme_example_runs_as_written(block, tmp_path):
    for module in ("transformers", "timm", "lightning"):
        if re.search(rf"^import {module}\b", block, flags=re.M):
            pytest.importorskip(module)
    done = subprocess.run(
        [sys.executable, "-c", block], capture_output=True, text=True, cwd=tmp_path, timeout=600
    )
    assert done.returncode == 0, done.stderr


def test_the_compatibility_table_covers_the_zoo_and_shows_no_failure():
    from architectures import EVERY_MODEL, TABLE_CHECKS, ZOO

    block = re.search(r"<!-- compatibility:start -->\n(.*?)\n\n", README.read_text(), flags=re.S)
    assert block, "README.md has no compatibility table: python benchmarks/compatibility.py --write"
    header, _, *rows = block.group(1).splitlines()
    assert [c.strip() for c in header.strip("|").split("|")][1:] == list(TABLE_CHECKS)
    cells = {
        row.split("|")[1].strip().strip("`"): [c.strip() for c in row.strip("|").split("|")[1:]]
        for row in rows
    }
    assert set(cells) == set(ZOO)
    for name, arch in ZOO.items():
        for check, cell in zip(TABLE_CHECKS, cells[name], strict=True):
            expected = "pass" if check in (*arch.checks, *EVERY_MODEL) else "n/a"
            assert cell.split()[0] == expected, f"{name}, {check}: {cell}"
