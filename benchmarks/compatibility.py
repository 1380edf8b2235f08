"""The compatibility table: every check on every model of the real-architecture zoo.

    python benchmarks/compatibility.py            # print the table (one CPU thread)
    python benchmarks/compatibility.py --write    # and replace the README's copy

Runs the zoo's suites, ``tests/checks/test_architectures.py`` (one ``SanitySuite`` per
architecture, default arguments only), through pytest with ``--nnsanity-json``, and makes the
table from that run: each cell the verdict and the seconds of the check's call (building the
model is not timed), n/a where the model's suite does not select the check. The README's table
says which machine and date it comes from.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from architectures import TABLE_CHECKS, ZOO  # noqa: E402

START, END = "<!-- compatibility:start -->", "<!-- compatibility:end -->"
SUITES = ROOT / "tests" / "checks" / "test_architectures.py"
MARK = {"pass": "pass", "fail": "**FAIL**", "error": "**ERROR**", "skip": "skip"}


def zoo_results() -> dict[tuple[str, str], dict[str, object]]:
    """(model, check) -> the suite's JSON record, from one pytest run of the zoo's suites."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "zoo.json"
        command = [
            sys.executable, "-m", "pytest", str(SUITES), "-m", "nnsanity", "-q",
            "-p", "no:randomly", "-p", "no:cacheprovider", "-W", "ignore", f"--nnsanity-json={out}",
        ]  # fmt: skip
        # no check=True: a failing check is a finding, shown in its cell
        subprocess.run(command, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
        results = json.loads(out.read_text())["results"]
    return {(r["suite"].rsplit("::Test_", 1)[1], r["check"]): r for r in results}


def table() -> str:
    results = zoo_results()
    rows = ["| model | " + " | ".join(TABLE_CHECKS) + " |", "|---" * (len(TABLE_CHECKS) + 1) + "|"]
    for name in ZOO:
        cells = []
        for check in TABLE_CHECKS:
            r = results.get((name, check))
            if r is None:
                cells.append("n/a")
                continue
            seconds = r["seconds"]
            mark = MARK[str(r["verdict"])]
            cells.append(mark if seconds is None else f"{mark} {float(seconds):.2f}s")
        rows.append(f"| `{name}` | " + " | ".join(cells) + " |")
    when = datetime.date.today().isoformat()
    cpu = platform.processor() or platform.machine()
    note = (
        f"Seconds per check with default arguments, one CPU thread, torch {torch.__version__}, "
        f"{cpu}, {when} (`python benchmarks/compatibility.py`, which runs the zoo's suites in "
        "`tests/checks/test_architectures.py`). n/a: the check does not apply (causality and word "
        "order to a model that is not autoregressive, batch independence to CLIP's image-text "
        "logits, init_loss to a detector, whose loss comes without logits)."
    )
    return "\n".join(rows) + "\n\n" + note


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="replace the README's table")
    args = parser.parse_args()
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
