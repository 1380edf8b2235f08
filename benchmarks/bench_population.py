"""Model-epochs per second of every way this project can train network2, in one run.

    python benchmarks/bench_population.py [--synthetic] [--repeats 3] [--json out.json] [--profile]

The population is N1's full budget: 4 depths ([784,30,10] ... [784,30,30,30,30,10]) x 10 seeds
= 40 models,
network2's SGD (m = 10, eta = 0.1, lmbda = 5) on MNIST-sized data (50,000 images of 784 pixels:
the real training images when NNSANITY_DATA_DIR points at an MNIST copy, else random ones; the
cost is the same). Trainers, slowest first:

- ``numpy``: Nielsen's network2.py algorithm, per-example backprop in float64 numpy
  (``nielsen_network2.py``, written independently), timed on ``--numpy-images`` images;
- ``plain``: one model at a time in PyTorch (``train_single``: nn.Linear, autograd,
  torch.optim.SGD), timed on ``--baseline-images`` images;
- ``population``: the batched trainer (``nnsanity.repro.population``) on 1 and 2 threads, and
  split over 2 single-thread processes (``train_population(..., processes=2)``), timed on
  ``--pop-images`` images.

Each is scaled to 50,000 images (all are linear in the number of steps) and is the best of
``--repeats`` (other processes share the CPU). Before timing, the numpy trainer and the
population are run from the same initial parameters and data order in float64 and must agree
to rounding. FLOPs count the useful matmul work of forward and backward (no input gradient for
the first layer), against a large float32 ``torch.mm`` measured in the same process: the
*2-thread FLOP floor* is the time those FLOPs take at the 2-thread ``torch.mm`` rate, and every
trainer is reported as a multiple of it and of the numpy network2, all from this one run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from nielsen_network2 import Network2 as NumpyNetwork2

from nnsanity.repro.mnist import mnist
from nnsanity.repro.network2 import Network2Config, init_parameters, order_generator, train_single
from nnsanity.repro.population import Population, grid, train_population

SIZES = [(784, *([30] * h), 10) for h in (1, 2, 3, 4)]
SEEDS = list(range(10))  # N1's FULL.seeds
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


def numpy_model(config: Network2Config) -> NumpyNetwork2:
    weights, biases = init_parameters(config, dtype=torch.float64)
    return NumpyNetwork2([w.numpy() for w in weights], [b.numpy() for b in biases])


def numpy_epoch(config: Network2Config, x: np.ndarray, y: np.ndarray) -> NumpyNetwork2:
    """One epoch of the numpy network2 on the population's data order for this config."""
    net = numpy_model(config)
    order = torch.randperm(len(x), generator=order_generator(config.seed)).numpy()
    net.sgd_epoch(x, y, order, mini_batch_size=MINI_BATCH, eta=ETA, lmbda=LMBDA)
    return net


def agreement(x: torch.Tensor, y: torch.Tensor, n: int = 300) -> float:
    """Largest |parameter difference| between the numpy network2 and the population after one
    float64 epoch on n images, over the four N1 depths (rounding: about 1e-15)."""
    configs = grid(SIZES, [0])
    pop = train_population(
        configs, x[:n].double(), y[:n], epochs=1, eta=ETA, lmbda=LMBDA, dtype=torch.float64
    )
    worst = 0.0
    for k, config in enumerate(configs):
        net = numpy_epoch(config, x[:n].double().numpy(), y[:n].numpy())
        for ours, theirs in zip(pop.weights[k] + pop.biases[k], net.weights + net.biases):
            worst = max(worst, float(np.abs(ours.numpy().reshape(theirs.shape) - theirs).max()))
    return worst


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synthetic", action="store_true", help="random images (default: MNIST)")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many (default 3)")
    parser.add_argument("--pop-images", type=int, default=N_TRAIN, help="default 50000")
    parser.add_argument("--baseline-images", type=int, default=5000, help="default 5000")
    parser.add_argument("--numpy-images", type=int, default=1000, help="default 1000")
    parser.add_argument("--profile", action="store_true", help="print a per-step op profile")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()
    x, y, vx, vy = load(args.synthetic)
    configs = grid(SIZES, SEEDS)
    k = len(configs)
    flops = sum(flops_per_model_epoch(c.sizes) for c in configs)  # one epoch of all K models
    print(
        f"torch {torch.__version__}, numpy {np.__version__}, {os.cpu_count()} CPUs, {k} models, "
        f"data: {'synthetic' if args.synthetic else 'MNIST'} {tuple(x.shape)}; "
        f"{flops / 1e9:.1f} GFLOP per population epoch (matmuls of forward and backward)"
    )
    torch.set_num_threads(1)
    diff = agreement(x, y)
    print(f"numpy network2 vs population, float64, one epoch: max |difference| {diff:.1e}")

    def numpy_run() -> None:
        n = args.numpy_images
        xs, ys = x[:n].double().numpy(), y[:n].numpy()
        for c in configs:
            numpy_epoch(c, xs, ys)

    def plain_run() -> None:
        n = args.baseline_images
        for c in configs:
            train_single(c, x[:n], y[:n], epochs=1, eta=ETA, lmbda=LMBDA)

    def population_run(processes: int = 1):
        n = args.pop_images
        return lambda: train_population(
            configs, x[:n], y[:n], epochs=1, eta=ETA, lmbda=LMBDA, processes=processes
        )

    trainers = {  # name: (threads, the work, images it covers)
        "numpy network2 (per example, float64)": (1, numpy_run, args.numpy_images),
        "plain PyTorch loop, 1 thread": (1, plain_run, args.baseline_images),
        "population, 1 thread": (1, population_run(), args.pop_images),
        "population, 2 threads": (2, population_run(), args.pop_images),
        "population, 2 processes x 1 thread": (1, population_run(2), args.pop_images),
    }
    seconds: dict[str, list[float]] = {name: [] for name in trainers}
    for _ in range(args.repeats):  # interleaved, so all see the same background load
        for name, (threads, work, images) in trainers.items():
            torch.set_num_threads(threads)
            seconds[name].append(_timed(work) * N_TRAIN / images)
    torch.set_num_threads(1)
    peak = {t: (torch.set_num_threads(t), matmul_rate())[1] for t in (1, 2)}
    floor = flops / peak[2] / k  # s per model-epoch at the 2-thread torch.mm rate
    torch.set_num_threads(1)
    stack = Population(configs, torch.float32)
    eval_s = min(_timed(lambda: stack.evaluate(vx, vy, LMBDA)) for _ in range(args.repeats))
    rows = []
    base = k / min(seconds["numpy network2 (per example, float64)"])
    one = k / min(seconds["population, 1 thread"])
    for name, times in seconds.items():
        rate = k / min(times)
        rows.append(
            {
                "trainer": name,
                "model_epochs_per_s": rate,
                "s_per_model_epoch": 1 / rate,
                "gflops": flops / min(times) / 1e9,
                "vs_numpy": rate / base,
                "vs_population_1_thread": rate / one,
                "x_2_thread_flop_floor": (1 / rate) / floor,
                "timings_s_per_population_epoch": [round(t, 2) for t in times],
            }
        )
        print(
            f"  {name:40s} {rate:8.3f} model-epochs/s  {1 / rate:8.3f} s/model-epoch  "
            f"{rate / base:7.1f}x numpy  {rate / one:5.2f}x population@1  "
            f"{flops / min(times) / 1e9:5.1f} GFLOP/s  {(1 / rate) / floor:5.2f}x the floor"
        )
    best = max(rows, key=lambda r: r["model_epochs_per_s"])
    n1 = EPOCHS_N1 * (k / best["model_epochs_per_s"] + eval_s)
    print(
        f"torch.mm 4096^3: {peak[1] / 1e9:.0f} GFLOP/s on 1 thread, {peak[2] / 1e9:.0f} on 2 "
        f"(2-thread FLOP floor {floor:.4f} s per model-epoch); "
        f"validation of all {k} models {eval_s:.2f} s; one N1 run ({k} models x {EPOCHS_N1} "
        f"epochs) with the best trainer ({best['trainer']}): about {n1 / 60:.1f} min"
    )
    if args.json:
        doc = {
            "agreement_max_abs_diff": diff,
            "models": k,
            "mm_gflops": {str(t): r / 1e9 for t, r in peak.items()},
            "flop_floor_2_threads_s_per_model_epoch": floor,
            "validation_s": eval_s,
            "trainers": rows,
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    if args.profile:
        profile_step(configs, x, y)


if __name__ == "__main__":
    main()
