"""Why do N1's and N9's final-epoch accuracies run low? float32 vs float64, shared vs independent
data orders across depths (issue 10).

    python reproductions/studies/final_epoch.py --out reproductions/results/final_epoch.json

Trains N1's four depths ([784,30,10] ... [784,30,30,30,30,10], 30 epochs, eta 0.1, lambda 5)
and N9's 60-epoch runs ([784,100,10], eta 0.1, lambda 5, both inits), each in two variants:

- ``float32-shared``: the engine as the claims use it: float32, and seed s gives the same init
  of the shared layers and the same data order at every depth (paired by construction);
- ``float64-independent``: network2's float64, and every (depth, init) has seeds of its own
  (s + 1000 * depth), so its data order and init are independent of the other depths'.

Reports per depth the final-epoch and best-epoch accuracy (mean, sd, min), the share of runs
whose final epoch is more than 0.5 points below their best, and how the final-epoch
accuracies of the depths correlate across seeds. MNIST from NNSANITY_DATA_DIR.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from nnsanity.repro.mnist import mnist
from nnsanity.repro.network2 import Network2Config
from nnsanity.repro.population import train_population

N1_DEPTHS = (1, 2, 3, 4)
INDEPENDENT_STRIDE = 1000  # seeds of depth d: s + 1000 d, disjoint from every other depth's


def run(configs, epochs, eta, dtype, data, processes) -> np.ndarray:
    """(K, epochs) validation accuracy in %."""
    result = train_population(
        configs,
        data.train_x,
        data.train_y,
        epochs=epochs,
        eta=eta,
        lmbda=5.0,
        eval_x=data.validation_x,
        eval_y=data.validation_y,
        dtype=dtype,
        processes=processes,
    )
    return (100 * result.accuracy).numpy()


def summary(acc: np.ndarray) -> dict:
    """acc: (seeds, epochs) in %."""
    final, best = acc[:, -1], acc.max(1)
    return {
        "final_mean": float(final.mean()),
        "final_sd": float(final.std(ddof=1)),
        "final_min": float(final.min()),
        "best_mean": float(best.mean()),
        "best_sd": float(best.std(ddof=1)),
        "last10_mean": float(acc[:, -10:].mean()),
        "share_final_over_half_point_below_best": float(np.mean(best - final > 0.5)),
        "final": final.tolist(),
        "best": best.tolist(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--variants", default="float32-shared,float64-independent", help="comma-separated"
    )
    args = parser.parse_args()
    chosen = args.variants.split(",")
    data = mnist()
    seeds = list(range(args.seeds))
    out: dict = {"seeds": seeds, "torch": torch.__version__, "n1": {}, "n9": {}}
    for variant, dtype, stride in (
        ("float32-shared", torch.float32, 0),
        ("float64-independent", torch.float64, INDEPENDENT_STRIDE),
    ):
        if variant not in chosen:
            continue
        start = time.perf_counter()
        configs = [
            Network2Config((784, *[30] * d, 10), s + stride * d) for d in N1_DEPTHS for s in seeds
        ]
        acc = run(configs, 30, 0.1, dtype, data, args.processes).reshape(
            len(N1_DEPTHS), len(seeds), 30
        )
        finals = acc[:, :, -1]
        out["n1"][variant] = {
            "seconds": time.perf_counter() - start,
            "per_depth": {str(d): summary(acc[i]) for i, d in enumerate(N1_DEPTHS)},
            "final_correlation_across_depths": np.corrcoef(finals).tolist(),
        }
        start = time.perf_counter()
        configs = [
            Network2Config((784, 100, 10), s + stride * (1 + (init == "default")), init)
            for init in ("large", "default")
            for s in seeds
        ]
        acc = run(configs, 60, 0.1, dtype, data, args.processes).reshape(2, len(seeds), 60)
        out["n9"][variant] = {
            "seconds": time.perf_counter() - start,
            "per_init": {init: summary(acc[i]) for i, init in enumerate(("large", "default"))},
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1) + "\n")  # after every variant
        print(
            f"{variant}: N1 {out['n1'][variant]['seconds']:.0f} s, N9 "
            f"{out['n9'][variant]['seconds']:.0f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
