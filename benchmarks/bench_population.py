"""Model-epochs per second: the batched population trainer vs the plain one-model-at-a-time loop.

    python benchmarks/bench_population.py [--synthetic] [--repeats 3] [--threads 1,2] [--profile]

The population is N1's: 4 depths ([784,30,10] ... [784,30,30,30,30,10]) x 5 seeds = 20 models,
network2's SGD (m = 10, eta = 0.1, lmbda = 5) on MNIST-sized data (50,000 images of 784 pixels:
the real training images when NNSANITY_DATA_DIR points at an MNIST copy, else random ones; the
cost is the same). The population trains one full epoch; the plain loop (``train_single``:
nn.Linear, autograd, torch.optim.SGD) trains each model on the first ``--baseline-images``
images and is scaled up to 50,000, as it is linear in the number of steps. Evaluation is timed
apart. Each timing is the best of ``--repeats`` (other processes share the CPU). FLOPs count
the useful matmul work of forward and backward (no input gradient for the first layer; the
population's zero padding of the first layer is not counted), against a large float32
``torch.mm`` measured in the same process.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from pathlib import Path

import torch

from nnsanity.repro.mnist import mnist
from nnsanity.repro.network2 import train_single
from nnsanity.repro.population import Population, grid, train_population

SIZES = [(784, *([30] * h), 10) for h in (1, 2, 3, 4)]
SEEDS = [0, 1, 2, 3, 4]
N_TRAIN, MINI_BATCH, ETA, LMBDA, EPOCHS_N1 = 50_000, 10, 0.1, 5.0, 30


def load(synthetic: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train_x, train_y, validation_x, validation_y): the mnist.pkl.gz split, pixels / 256."""
    if not synthetic and os.environ.get("NNSANITY_DATA_DIR"):
        m = mnist()
        return m.train_x, m.train_y, m.validation_x, m.validation_y
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (60_000, 784), generator=g, dtype=torch.uint8).float() / 256
    y = torch.randint(0, 10, (60_000,), generator=g)
    return x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:]


def flops_per_model_epoch(sizes: tuple[int, ...], n: int = N_TRAIN) -> int:
    """Matmul FLOPs of forward + weight gradient + input gradient (not for the input layer)."""
    macs = [i * o for i, o in itertools.pairwise(sizes)]
    return 2 * n * (2 * sum(macs) + sum(macs[1:]))


def matmul_rate(size: int = 4096, repeats: int = 5) -> float:
    """The machine's float32 matmul rate in FLOP/s: best of a few large torch.mm calls."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * size**3 / best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def profile_step(configs, x, y) -> None:
    """The aten ops one population step runs, and where its time goes."""
    stack = Population(configs, torch.float32)
    onehot = torch.nn.functional.one_hot(y, 10).float()
    step = stack.sgd_step(MINI_BATCH, x, onehot, ETA / MINI_BATCH, 1 - ETA * LMBDA / len(x))
    idx = torch.randperm(len(x))[: stack.k * MINI_BATCH]
    with torch.no_grad():
        for _ in range(50):
            step(idx)
        with torch.profiler.profile() as prof:
            for _ in range(100):
                step(idx)
    top = [e for e in prof.events() if e.cpu_parent is None and e.name not in _VIEWS]
    per_op: dict[str, list[float]] = {}
    for e in top:
        per_op.setdefault(e.name, []).append(e.cpu_time_total)
    print(
        f"ops per population step (top-level, views not counted): {len(top) / 100:.0f}; "
        f"{sum(e.cpu_time_total for e in top) / 100:.0f} us per step in them"
    )
    for name, times in sorted(per_op.items(), key=lambda kv: -sum(kv[1])):
        print(f"  {name:22s} {len(times) / 100:4.0f} per step, {sum(times) / 100:6.1f} us per step")


_VIEWS = {
    "aten::slice",
    "aten::select",
    "aten::transpose",
    "aten::view",
    "aten::unbind",
    "aten::as_strided",
    "aten::expand",
    "aten::reshape",
    "aten::alias",
    "aten::t",
}


def measure(threads: int, args, data, configs) -> dict[str, float]:
    """One thread count: the torch.mm rate, both trainers (best of ``args.repeats``), validation."""
    torch.set_num_threads(threads)
    x, y, vx, vy = data
    k = len(configs)
    flops = sum(flops_per_model_epoch(c.sizes) for c in configs)  # one epoch of all K models

    def population() -> None:
        n = args.pop_images
        train_population(configs, x[:n], y[:n], epochs=1, eta=ETA, lmbda=LMBDA)

    def plain() -> None:
        n = args.baseline_images
        for c in configs:
            train_single(c, x[:n], y[:n], epochs=1, eta=ETA, lmbda=LMBDA)

    peak = matmul_rate()
    pop_s, plain_s = [], []
    for _ in range(args.repeats):  # interleaved, so both see the same background load
        pop_s.append(_timed(population) * N_TRAIN / args.pop_images)
        plain_s.append(_timed(plain) * N_TRAIN / args.baseline_images)
    stack = Population(configs, torch.float32)
    eval_s = min(_timed(lambda: stack.evaluate(vx, vy, LMBDA)) for _ in range(args.repeats))
    r = {
        "threads": threads,
        "mm_gflops": peak / 1e9,
        "population_s_per_epoch": min(pop_s),
        "plain_s_per_model_epoch": min(plain_s) / k,
        "population_model_epochs_per_s": k / min(pop_s),
        "plain_model_epochs_per_s": k / min(plain_s),
        "population_gflops": flops / min(pop_s) / 1e9,
        "plain_gflops": flops / min(plain_s) / 1e9,
        "validation_s": eval_s,
    }
    r["speedup"] = r["population_model_epochs_per_s"] / r["plain_model_epochs_per_s"]
    r["fraction_of_mm"] = r["population_gflops"] / r["mm_gflops"]
    print(
        f"[{threads} thread{'s' * (threads > 1)}] torch.mm 4096^3 {peak / 1e9:.0f} GFLOP/s\n"
        f"  population: {r['population_model_epochs_per_s']:.2f} model-epochs/s "
        f"({min(pop_s):.2f} s per epoch of all {k}; {args.pop_images} images timed), "
        f"{r['population_gflops']:.1f} GFLOP/s = {r['fraction_of_mm']:.0%} of torch.mm\n"
        f"  plain loop: {r['plain_model_epochs_per_s']:.3f} model-epochs/s "
        f"({r['plain_s_per_model_epoch']:.2f} s per model-epoch; {args.baseline_images} images "
        f"timed, scaled), {r['plain_gflops']:.1f} GFLOP/s\n"
        f"  speed-up {r['speedup']:.1f}x; every timing (s per population epoch): population "
        f"{[round(t, 2) for t in pop_s]}, plain {[round(t, 1) for t in plain_s]}"
    )
    return r


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synthetic", action="store_true", help="random images (default: MNIST)")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many (default 3)")
    parser.add_argument("--pop-images", type=int, default=N_TRAIN, help="default 50000")
    parser.add_argument("--baseline-images", type=int, default=5000, help="default 5000")
    parser.add_argument("--threads", default="1,2", help="torch thread counts (default 1,2)")
    parser.add_argument("--profile", action="store_true", help="print a per-step op profile")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()
    data = load(args.synthetic)
    configs = grid(SIZES, SEEDS)
    k = len(configs)
    flops = sum(flops_per_model_epoch(c.sizes) for c in configs)
    print(
        f"torch {torch.__version__}, {k} models, data: "
        f"{'synthetic' if args.synthetic else 'MNIST'} {tuple(data[0].shape)}; work "
        f"{flops / k / 1e9:.2f} GFLOP per model-epoch on average, {flops / 1e9:.1f} GFLOP per "
        f"population epoch (matmuls of forward and backward)"
    )
    results = [measure(int(t), args, data, configs) for t in args.threads.split(",")]
    best_pop = max(results, key=lambda r: r["population_model_epochs_per_s"])
    best_plain = max(results, key=lambda r: r["plain_model_epochs_per_s"])
    ratio = best_pop["population_model_epochs_per_s"] / best_plain["plain_model_epochs_per_s"]
    full = EPOCHS_N1 * (best_pop["population_s_per_epoch"] + best_pop["validation_s"])
    print(
        f"best against best: population at {best_pop['threads']} thread(s) vs plain loop at "
        f"{best_plain['threads']}: {ratio:.1f}x (target >= 10x)\n"
        f"one N1 run ({k} models x {EPOCHS_N1} epochs x {N_TRAIN} images, validating each "
        f"epoch in {best_pop['validation_s']:.2f} s): about {full / 60:.1f} min; the plain loop "
        f"about {EPOCHS_N1 / best_plain['plain_model_epochs_per_s'] * k / 60:.0f} min"
    )
    if args.json:
        args.json.write_text(json.dumps({"results": results, "best_ratio": ratio}, indent=2))
    if args.profile:
        profile_step(configs, data[0], data[1])


if __name__ == "__main__":
    main()
