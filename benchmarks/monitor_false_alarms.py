"""The TrainingMonitor's false-alarm rate on healthy runs of the real-architecture zoo.

    python benchmarks/monitor_false_alarms.py                    # every regime, one CPU thread
    python benchmarks/monitor_false_alarms.py --regime dataset   # the one the tests assert

Each zoo model trains for 300 steps (tests/monitor_zoo.py: Adam, a fresh batch per step drawn as
the zoo draws its batch, ``monitor.observe`` between backward and step, measured every 10
steps, stricter than the default 50). The regimes:

- ``dataset``: 16 batches cycled, Adam 3e-4 (the rate the zoo's training checks use). The goal
  is 0 alerts; tests/test_monitor_zoo.py asserts it.
- ``dataset_1e-3``: the same at 1e-3, the rate of the zoo's fitting checks.
- ``stream``: a new batch every step, Adam 3e-4: random labels that cannot be learned, so the
  loss stays at its start and the network has nothing to fit.
- ``lr_3e-2``: the dataset at 100x the safe rate, the failure side: how far the statistics go
  when training is broken (the grad_explosion bound must sit between the two sides).

Per model it records the alerts and the statistics the bounds judge: the largest total
gradient norm over the median of the first 5 measured ones (grad_explosion's), the largest
update ratio, the largest dead fraction. Writes benchmarks/monitor_false_alarms.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from architectures import ZOO  # noqa: E402
from monitor_zoo import POOL, healthy_run  # noqa: E402

REGIMES = {
    "dataset": {"lr": 3e-4, "pool": POOL},
    "dataset_1e-3": {"lr": 1e-3, "pool": POOL},
    "stream": {"lr": 3e-4, "pool": None},
    "lr_3e-2": {"lr": 3e-2, "pool": POOL},
}
OUT = ROOT / "benchmarks" / "monitor_false_alarms.json"


def run(regime: str, names: list[str]) -> dict[str, object]:
    rows = {}
    for name in names:
        trace: list[dict[str, float]] = []
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # library deprecations, not the monitor's
            monitor = healthy_run(name, trace=trace, **REGIMES[regime])
        norms = [t.get("grad_norm", math.nan) for t in trace]
        finite = [n for n in norms if math.isfinite(n)]
        early = statistics.median(finite[:5]) if len(finite) >= 5 else math.nan
        rows[name] = {
            "steps": monitor.step,
            "alerts": [
                {"kind": a.kind, "step": a.step, "where": list(a.where[:3]), "value": a.value}
                for a in monitor.alerts
            ],
            "grad_norm_over_early": max(finite[5:], default=math.nan) / early,
            "max_update_ratio": max((t.get("max_update_ratio", 0.0) for t in trace), default=0),
            "max_dead_fraction": max((t.get("max_dead_fraction", 0.0) for t in trace), default=0),
            "final_loss": monitor.metrics()["loss"],
            "seconds": round(time.perf_counter() - start, 1),
        }
        a = rows[name]
        print(
            f"{regime:13s} {name:32s} {a['seconds']:6.1f}s alerts {len(a['alerts']):3d} "
            f"{sorted({x['kind'] for x in a['alerts']})} grad/early "
            f"{a['grad_norm_over_early']:.3g} update {a['max_update_ratio']:.3g} dead "
            f"{a['max_dead_fraction']:.2f} loss {a['final_loss']:.3g}",
            flush=True,
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regime", choices=list(REGIMES), action="append")
    parser.add_argument("--model", choices=list(ZOO), action="append")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = json.loads(OUT.read_text()) if OUT.exists() else {}
    for regime in args.regime or list(REGIMES):
        rows = run(regime, args.model or list(ZOO))
        alerts = sum(len(r["alerts"]) for r in rows.values())
        steps = sum(r["steps"] for r in rows.values())
        results[regime] = {
            **REGIMES[regime],
            "every": 10,
            "models": len(rows),
            "steps": steps,
            "alerts": alerts,
            "alerts_per_1000_steps": round(1000 * alerts / steps, 3),
            "runs": rows,
        }
        print(f"{regime}: {alerts} alerts in {steps} steps of {len(rows)} models")
    results["_machine"] = (
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, one thread, "
        f"{datetime.date.today().isoformat()}"
    )
    OUT.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
