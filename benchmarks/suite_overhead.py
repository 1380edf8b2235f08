"""What a ``SanitySuite`` costs over its checks: one suite on a zoo model against hand-written
tests of the same checks.

    python benchmarks/suite_overhead.py                              # gpt2, transformer_classifier
    python benchmarks/suite_overhead.py --models gpt2 --rounds 5 --json overhead.json

Issue 18's budget: one suite on a zoo transformer takes at most the sum of its checks plus 10%
(the collection, the fixtures and the reports). Three ways to run the checks of the model's row
in the compatibility table, each building a fresh model and batch per check:

- ``loop``: the ``assert_*`` calls in a plain loop (no pytest);
- ``hand``: a test file with one hand-written test function per check, as users write today,
  through ``pytest.main`` in this interpreter;
- ``suite``: one ``SanitySuite`` class, through ``pytest.main`` the same way (collection, the
  seed fixture, the applicability predicates, the result records and the terminal summary).

``suite/hand`` is what the suite adds (the budget); ``suite/loop`` adds pytest's own start-up
and reporting, which any test file pays. They alternate on one CPU thread and are timed in this
thread's CPU time (``time.thread_time``), so time the scheduler gives other processes is not
counted; each is the minimum over rounds (the least-disturbed run, as ``timeit`` advises), after
one warm-up of each. Exit status 1 when ``suite/hand`` exceeds ``--budget``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import textwrap
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from architectures import EVERY_MODEL, TABLE_CHECKS, ZOO, Arch  # noqa: E402

from nnsanity.catalogue import Subject, get  # noqa: E402

SUITE = """
from architectures import ZOO
from nnsanity import SanitySuite

ARCH = ZOO[{name!r}]


class TestZoo(SanitySuite):
    checks = {checks!r}
    loss_fn = ARCH.loss_fn
    autoregressive = ARCH.causal_inputs is not None

    def model(self):
        return ARCH.build()

    def batch(self):
        return ARCH.batch()

    def inputs(self, batch):
        return ARCH.causal_inputs(batch) if ARCH.causal_inputs else None
"""


HAND = """
from architectures import ZOO
from nnsanity.catalogue import Subject, get

ARCH = ZOO[{name!r}]


def _check(name):
    model, batch = ARCH.build(), ARCH.batch()
    inputs = ARCH.causal_inputs(batch) if ARCH.causal_inputs else None
    get(name).check(Subject(model, batch, ARCH.loss_fn, inputs=inputs, autoregressive=bool(inputs)))
"""


def checks_of(arch: Arch) -> list[str]:
    return [c for c in TABLE_CHECKS if c in (*arch.checks, *EVERY_MODEL)]


def loop(arch: Arch, checks: list[str]) -> float:
    start = time.thread_time()
    for name in checks:
        model, batch = arch.build(), arch.batch()
        inputs = arch.causal_inputs(batch) if arch.causal_inputs else None
        subject = Subject(model, batch, arch.loss_fn, inputs=inputs, autoregressive=bool(inputs))
        get(name).check(subject)
    return time.thread_time() - start


def session(path: Path) -> float:
    args = [str(path), "-q", "-p", "no:randomly", "-p", "no:cacheprovider", "-o", "addopts="]
    start = time.thread_time()
    code = pytest.main([*args, "--rootdir", str(path.parent)])
    seconds = time.thread_time() - start
    if code != 0:
        raise SystemExit(f"a check failed (pytest exit {code}): {path}")
    return seconds


def measure(name: str, rounds: int, folder: Path) -> dict[str, Any]:
    arch = ZOO[name]
    checks = checks_of(arch)
    suite = folder / f"test_suite_{name}.py"
    suite.write_text(textwrap.dedent(SUITE.format(name=name, checks=checks)))
    hand = folder / f"test_hand_{name}.py"
    tests = "".join(f"\n\ndef test_{c}():\n    _check({c!r})\n" for c in checks)
    hand.write_text(textwrap.dedent(HAND.format(name=name)) + tests)
    times: dict[str, list[float]] = {"loop": [], "hand": [], "suite": []}
    for i in range(rounds + 1):  # round 0 warms up: imports, caches, first-call costs
        runs = {"loop": lambda: loop(arch, checks), "hand": lambda: session(hand),
                "suite": lambda: session(suite)}  # fmt: skip
        for way, run in runs.items():
            seconds = run()
            if i:
                times[way].append(seconds)
    best = {way: min(t) for way, t in times.items()}
    return {"model": name, "checks": len(checks), "seconds": times,
            "suite/hand": best["suite"] / best["hand"], "suite/loop": best["suite"] / best["loop"],
            **{f"{way}_s": b for way, b in best.items()}}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["gpt2", "transformer_classifier"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--budget", type=float, default=1.10)
    parser.add_argument("--json", help="write the rounds and ratios here")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    sys.path.insert(0, str(ROOT / "tests"))
    with tempfile.TemporaryDirectory() as folder:
        rows = [measure(name, args.rounds, Path(folder)) for name in args.models]
    print("model                    checks  loop (s)  hand (s)  suite (s)  suite/hand  suite/loop")
    for r in rows:
        print(
            f"{r['model']:<24} {r['checks']:>6}  {r['loop_s']:>8.2f}  {r['hand_s']:>8.2f}  "
            f"{r['suite_s']:>9.2f}  {r['suite/hand']:>10.3f}  {r['suite/loop']:>10.3f}"
        )
    print(f"CPU seconds of this thread, the minimum of {args.rounds} rounds")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    if any(r["suite/hand"] > args.budget for r in rows):
        raise SystemExit(f"a suite costs more than {args.budget}x its checks")


if __name__ == "__main__":
    main()
