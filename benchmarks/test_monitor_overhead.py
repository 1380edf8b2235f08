"""What the TrainingMonitor adds to a training step, as a ratio to the bare loop in one run.

    pytest benchmarks/test_monitor_overhead.py -s       # 40 pairs of blocks each; prints ratios
    NNSANITY_BENCH_ROUNDS=4 pytest benchmarks/test_monitor_overhead.py   # quick

The targets (issue 16): at ``every=50`` (the default) at most 5% of the step time on a small MLP
and at most 2% on a zoo transformer. Two copies of the model (same init, same optimizer
settings, the same pre-drawn batches) train side by side inside one monitor that watches only
the first: each round runs one ``BLOCK`` of steps on each, in alternating order, so that both
see the same machine state within a second, and each block is timed in this thread's CPU time
(``time.thread_time``), so that time the scheduler gives other processes is not counted. The
unwatched copy pays only the global optimizer hooks' check that its optimizer is not the
watched one. A block is one monitor period
(``every`` steps: one measured step and the dead-unit window's steps), so every block costs what
a long run costs per period. ``extra_info["overhead"]`` is the median over rounds of monitored /
bare - 1, with its interquartile range. One CPU thread. A test here never fails on time (machines
differ, and the shared machine is noisy): it reports, and the README quotes a quiet
(``flock -x``) run.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import architectures

import nnsanity

ROUNDS = int(os.environ.get("NNSANITY_BENCH_ROUNDS", "40"))
BLOCK = 50  # steps per block: one monitor period at every=50


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _mlp():
    """An MNIST-sized MLP (784-256-256-10, ReLU), batches of 64."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256), torch.nn.ReLU(),
        torch.nn.Linear(256, 10),
    )  # fmt: skip
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(64, 784, generator=g), torch.randint(0, 10, (64,), generator=g))] * 8

    def loss(batch):
        return F.cross_entropy(model(batch[0]), batch[1])

    return model, data, loss


def _zoo(name):
    def build():
        arch = architectures.ZOO[name]
        model = arch.build()
        batch = arch.batch()

        def loss(b):
            if arch.loss_fn is None:
                return model(**b).loss
            return arch.loss_fn(model(b[0]), b[1])

        return model, [batch] * 8, loss

    return build


MODELS = {
    "mlp": _mlp,
    "gpt2": _zoo("gpt2"),
    "transformer_classifier": _zoo("transformer_classifier"),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_monitor_overhead_at_every_50(benchmark, name):
    watched, data, watched_loss = MODELS[name]()
    bare, _, bare_loss = MODELS[name]()  # seeded inside: the same weights
    runs = {
        "monitored": (watched_loss, torch.optim.Adam(watched.parameters(), lr=3e-4)),
        "bare": (bare_loss, torch.optim.Adam(bare.parameters(), lr=3e-4)),
    }
    times: dict[str, list[float]] = {"bare": [], "monitored": []}
    rounds = [0]
    found: list[nnsanity.Alert] = []

    def block(variant, monitor):
        loss_of, opt = runs[variant]
        start = time.thread_time()
        for step in range(BLOCK):
            loss = loss_of(data[step % len(data)])
            opt.zero_grad()
            loss.backward()
            if variant == "monitored":
                monitor.observe(loss)
            opt.step()
        return time.thread_time() - start

    with (
        warnings.catch_warnings(),
        nnsanity.TrainingMonitor(
            watched, optimizer=runs["monitored"][1], on_alert=found.append
        ) as monitor,
    ):
        warnings.simplefilter("ignore")  # torch/transformers deprecations are not the subject

        def pair():
            order = ("bare", "monitored") if rounds[0] % 2 == 0 else ("monitored", "bare")
            rounds[0] += 1
            for variant in order:
                times[variant].append(block(variant, monitor))

        for variant in runs:  # warm-up: allocator, Adam state, the monitor's first measurement
            block(variant, monitor)
        benchmark.pedantic(pair, rounds=ROUNDS, iterations=1)
    assert found == [], found  # a benchmark of an alerting run times the wrong path
    ratios = [m / b for m, b in zip(times["monitored"], times["bare"])]
    overhead = statistics.median(ratios) - 1
    q1, _, q3 = statistics.quantiles(ratios, n=4)
    step_ms = 1e3 * statistics.median(times["bare"]) / BLOCK
    benchmark.extra_info.update(
        overhead=overhead, overhead_iqr=(q1 - 1, q3 - 1), bare_step_ms=step_ms, ratios=ratios
    )
    print(
        f"\n{name}: bare step {step_ms:.3f} ms, monitor overhead {100 * overhead:+.2f}% "
        f"(median of {len(ratios)} rounds, interquartile range {100 * (q1 - 1):+.2f}% to "
        f"{100 * (q3 - 1):+.2f}%)"
    )
