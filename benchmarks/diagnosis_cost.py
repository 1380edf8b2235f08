"""What the diagnosis costs: each compatibility-table check, now against a baseline commit.

    python benchmarks/diagnosis_cost.py                        # against a460c9e (v0.2)
    python benchmarks/diagnosis_cost.py --models gpt2 timm_vit_tiny --rounds 5
    python benchmarks/diagnosis_cost.py --baseline <commit> --json cost.json

Issue 14's budget: the cost of a compatibility-table check grows by at most 1.5x with the
localisation and the step forensics. Both versions are timed in the same run, interleaved
(baseline, current, baseline, ...), each in a fresh interpreter on one CPU thread with its own
``nnsanity`` and its own ``tests/architectures.py`` (the baseline is exported with ``git
archive``), so that the ratio cancels what the machine was doing. A cell is timed in the worker
thread's CPU time (``time.thread_time``; torch on one thread computes in it), so time the
scheduler gives other processes is not counted. Each (model, check) cell is the minimum over
rounds (the least-disturbed run, as ``timeit`` advises); a ratio is current/baseline of those
minima. Cells that exist in one version only, or fail in either, are left out and
listed. Building the model is not timed. Exit status 1 when a ratio exceeds ``--budget``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# One interpreter times every requested (model, check) once: it prints {"model/check": seconds}
# (or an error name) as JSON on its last line.
WORKER = r"""
import json, sys, time, warnings
import torch
torch.set_num_threads(1)
sys.path.insert(0, sys.argv[1] + "/tests")
from architectures import EVERY_MODEL, TABLE_CHECKS, ZOO, run_check
wanted = json.loads(sys.argv[2])
out = {}
for name in wanted or list(ZOO):
    arch = ZOO.get(name)
    if arch is None:
        continue
    for check in TABLE_CHECKS:
        if check not in (*arch.checks, *EVERY_MODEL):
            continue
        model, batch = arch.build(), arch.batch()
        start = time.thread_time()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                passed = run_check(check, arch, model, batch).passed
            out[f"{name}/{check}"] = time.thread_time() - start if passed else "FAIL"
        except Exception as e:
            out[f"{name}/{check}"] = type(e).__name__
print(json.dumps(out))
"""


def export(commit: str, into: Path) -> Path:
    """The baseline's ``nnsanity`` and ``tests`` at ``commit``, unpacked under ``into``."""
    archive = into / "baseline.tar"
    with archive.open("wb") as f:
        subprocess.run(
            ["git", "-C", str(ROOT), "archive", commit, "nnsanity", "tests"], stdout=f, check=True
        )
    with tarfile.open(archive) as tar:
        tar.extractall(into / "baseline", filter="data")
    return into / "baseline"


def time_once(root: Path, models: list[str]) -> dict[str, float | str]:
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", WORKER, str(root), json.dumps(models)],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="a460c9e", help="commit to compare against")
    parser.add_argument("--models", nargs="*", default=[], help="zoo names (default: all)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--budget", type=float, default=1.5, help="largest ratio allowed")
    parser.add_argument("--json", type=Path, help="write every cell's times and ratio here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        baseline = export(args.baseline, Path(tmp))
        runs: dict[str, list[dict[str, float | str]]] = {"baseline": [], "current": []}
        for r in range(args.rounds):
            for label, root in (("baseline", baseline), ("current", ROOT)):
                print(f"round {r + 1}/{args.rounds}: {label}", file=sys.stderr, flush=True)
                runs[label].append(time_once(root, args.models))

    cells, skipped = {}, {}
    for key in sorted(set(runs["baseline"][0]) | set(runs["current"][0])):
        seen = {label: [run.get(key) for run in rs] for label, rs in runs.items()}
        bad = {v for vs in seen.values() for v in vs if not isinstance(v, float)}
        if bad:
            skipped[key] = ", ".join(sorted(str(b) for b in bad))
            continue
        base, now = min(seen["baseline"]), min(seen["current"])  # type: ignore[type-var]
        cells[key] = {"baseline_s": base, "current_s": now, "ratio": now / base}

    by_check: dict[str, list[float]] = {}
    for key, cell in cells.items():
        by_check.setdefault(key.split("/")[1], []).append(cell["ratio"])
    print(f"\n{'check':<22} {'cells':>5} {'geo-mean':>9} {'max':>6}  (current / {args.baseline})")
    for check, ratios in sorted(by_check.items()):
        geo = math.exp(sum(map(math.log, ratios)) / len(ratios))
        print(f"{check:<22} {len(ratios):>5} {geo:>9.2f} {max(ratios):>6.2f}")
    worst = sorted(cells.items(), key=lambda kv: -kv[1]["ratio"])[:5]
    print("\nlargest cells: " + ", ".join(f"{k} {c['ratio']:.2f}x" for k, c in worst))
    if skipped:
        print(f"left out ({len(skipped)}): " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    if args.json:
        args.json.write_text(json.dumps({"cells": cells, "left_out": skipped}, indent=1))
    over = [k for k, c in cells.items() if c["ratio"] > args.budget]
    if over:
        print(f"over the {args.budget}x budget: {', '.join(over)}")
    return 1 if over else 0


if __name__ == "__main__":
    raise SystemExit(main())
