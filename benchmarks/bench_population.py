"""Model-epochs per second: the batched population trainer vs the plain one-model-at-a-time loop.

    python benchmarks/bench_population.py [--synthetic] [--repeats 3] [--profile]

The population is N1's: 4 depths ([784,30,10] ... [784,30,30,30,30,10]) x 5 seeds = 20 models,
network2's SGD (m = 10, eta = 0.1, lmbda = 5) on MNIST-sized data (50,000 images of 784 pixels;
the real training images when /work/shared/data/MNIST is there, else random ones: the cost is
the same). The population trains one full epoch; the plain loop (``train_single``: nn.Linear,
autograd, torch.optim.SGD) trains each model on the first ``--baseline-images`` images and is
scaled up to 50,000, as it is linear in the number of steps. Evaluation is timed apart. Each
timing is the best of ``--repeats`` (other processes share the CPU). FLOPs count the useful
matmul work of forward and backward (no input gradient for the first layer; the population's
zero padding of the first layer is not counted), against a large float32 ``torch.mm`` measured
in the same process.
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import torch

from nnsanity.network2 import train_single
from nnsanity.population import _evaluate, _Stack, _Step, grid, train_population

MNIST = Path("/work/shared/data/MNIST/raw")
SIZES = [(784, *([30] * h), 10) for h in (1, 2, 3, 4)]
SEEDS = [0, 1, 2, 3, 4]
N_TRAIN, MINI_BATCH, ETA, LMBDA, EPOCHS_N1 = 50_000, 10, 0.1, 5.0, 30


def load(synthetic: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train_x, train_y, validation_x, validation_y): the mnist.pkl.gz split, pixels / 256."""
    if not synthetic and (MNIST / "train-images-idx3-ubyte").exists():
        pixels = (MNIST / "train-images-idx3-ubyte").read_bytes()[16:]
        labels = (MNIST / "train-labels-idx1-ubyte").read_bytes()[8:]
        x = torch.frombuffer(bytearray(pixels), dtype=torch.uint8).view(-1, 784).float() / 256
        y = torch.frombuffer(bytearray(labels), dtype=torch.uint8).long()
    else:
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
    stack = _Stack(configs, torch.float32, None)
    onehot = torch.nn.functional.one_hot(y, 10).float()
    step = _Step(stack, MINI_BATCH, x, onehot, ETA / MINI_BATCH, 1 - ETA * LMBDA / len(x))
    idx = torch.randperm(len(x))[: stack.k * MINI_BATCH]
    with torch.no_grad():
        for _ in range(50):
            step(idx)
        with torch.profiler.profile() as prof:
            for _ in range(100):
                step(idx)
    events = prof.key_averages()
    top_level = sum(e.count for e in events if e.key in _TOP_OPS) / 100
    print(f"compute ops per population step: {top_level:.0f}")
    print(events.table(sort_by="self_cpu_time_total", row_limit=14))


_TOP_OPS = {
    "aten::index_select",
    "aten::baddbmm",
    "aten::sigmoid",
    "aten::sigmoid_",
    "aten::sub_",
    "aten::bmm",
    "aten::baddbmm_",
    "aten::add_",
    "aten::sum",
    "aten::mul",
    "aten::addcmul_",
    "aten::copy_",
}  # fmt: skip  (compute ops; views such as slice and transpose are not counted)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synthetic", action="store_true", help="random images (default: MNIST)")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many (default 3)")
    parser.add_argument("--pop-images", type=int, default=N_TRAIN, help="default 50000")
    parser.add_argument("--baseline-images", type=int, default=5000, help="default 5000")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--profile", action="store_true", help="print a per-step op profile")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    x, y, vx, vy = load(args.synthetic)
    configs = grid(SIZES, SEEDS)
    k = len(configs)
    flops = sum(flops_per_model_epoch(c.sizes) for c in configs)  # one epoch of all K models
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, K = {k} models, "
        f"data: {'synthetic' if args.synthetic else 'MNIST'} {tuple(x.shape)}"
    )
    peak = matmul_rate()
    print(f"float32 torch.mm 4096^3: {peak / 1e9:.1f} GFLOP/s")

    def population() -> None:
        n = args.pop_images
        train_population(configs, x[:n], y[:n], epochs=1, eta=ETA, lmbda=LMBDA)

    def baseline() -> None:
        n = args.baseline_images
        for c in configs:
            train_single(c, x[:n], y[:n], epochs=1, eta=ETA, lmbda=LMBDA)

    # interleaved so both see the same background load
    pop_s, base_s = [], []
    for _ in range(args.repeats):
        pop_s.append(_timed(population) * N_TRAIN / args.pop_images)
        base_s.append(_timed(baseline) * N_TRAIN / args.baseline_images)
    pop_rate, base_rate = k / min(pop_s), k / min(base_s)
    stack = _Stack(configs, torch.float32, None)
    eval_s = min(_timed(lambda: _evaluate(stack, vx, vy, LMBDA)) for _ in range(args.repeats))

    gflops = flops / min(pop_s) / 1e9
    print(
        f"work: {flops / k / 1e9:.2f} GFLOP per model-epoch on average "
        f"({flops / 1e9:.1f} GFLOP per population epoch)"
    )
    print(
        f"population ({args.pop_images} images timed): {pop_rate:.2f} model-epochs/s, "
        f"{min(pop_s):.2f} s per epoch of all {k}; {gflops:.1f} GFLOP/s = "
        f"{gflops * 1e9 / peak:.1%} of the torch.mm rate"
    )
    print(
        f"plain loop ({args.baseline_images} images timed, scaled): {base_rate:.3f} "
        f"model-epochs/s, {min(base_s) / k:.2f} s per model-epoch; "
        f"{flops / min(base_s) / 1e9:.1f} GFLOP/s"
    )
    print(
        f"speed-up: {pop_rate / base_rate:.1f}x (target >= 10x); all timings s: "
        f"population {[round(t, 2) for t in pop_s]}, plain {[round(t, 1) for t in base_s]}"
    )
    full = EPOCHS_N1 * (min(pop_s) + eval_s)
    print(
        f"one N1 run ({k} models x {EPOCHS_N1} epochs x {N_TRAIN} images, validating every "
        f"epoch, {eval_s:.2f} s per validation): about {full / 60:.1f} min; the plain loop: "
        f"about {EPOCHS_N1 * k / base_rate / 3600:.1f} h"
    )
    if args.profile:
        profile_step(configs, x, y)


if __name__ == "__main__":
    main()
