"""The compatibility table: every check on every model of the real-architecture zoo.

    python benchmarks/compatibility.py            # print the table (one CPU thread)
    python benchmarks/compatibility.py --write    # and replace the README's copy

Runs exactly what tests/checks/test_architectures.py asserts (default arguments only) and
times each call; a model built for a check is not timed. The README's table says which machine
and date it comes from.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import re
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from architectures import EVERY_MODEL, TABLE_CHECKS, ZOO, run_check  # noqa: E402

START, END = "<!-- compatibility:start -->", "<!-- compatibility:end -->"


def table() -> str:
    rows = ["| model | " + " | ".join(TABLE_CHECKS) + " |", "|---" * (len(TABLE_CHECKS) + 1) + "|"]
    for name, arch in ZOO.items():
        cells = []
        for check in TABLE_CHECKS:
            if check not in (*arch.checks, *EVERY_MODEL):
                cells.append("n/a")
                continue
            model, batch = arch.build(), arch.batch()
            start = time.perf_counter()
            try:
                passed = run_check(check, arch, model, batch).passed
                mark = "pass" if passed else "**FAIL**"
            except Exception as e:  # an API error is a finding: show it, do not stop
                mark = f"**{type(e).__name__}**"
            cells.append(f"{mark} {time.perf_counter() - start:.2f}s")
        rows.append(f"| `{name}` | " + " | ".join(cells) + " |")
    when = datetime.date.today().isoformat()
    cpu = platform.processor() or platform.machine()
    note = (
        f"Seconds per check with default arguments, one CPU thread, torch {torch.__version__}, "
        f"{cpu}, {when} (`python benchmarks/compatibility.py`). n/a: the check does not apply "
        "(causality to a model that is not autoregressive)."
    )
    return "\n".join(rows) + "\n\n" + note


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="replace the README's table")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    text = table()
    print(text)
    if args.write:
        readme = ROOT / "README.md"
        block = f"{START}\n{text}\n{END}"
        old = readme.read_text()
        new, n = re.subn(re.escape(START) + ".*?" + re.escape(END), block, old, flags=re.S)
        if n != 1:
            raise SystemExit(f"README.md needs exactly one {START} ... {END} block")
        readme.write_text(new)


if __name__ == "__main__":
    main()
