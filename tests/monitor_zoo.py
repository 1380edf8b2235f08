"""Healthy training runs of the real-architecture zoo under the TrainingMonitor: the false-alarm
sweep (tests/test_monitor_zoo.py asserts it, benchmarks/monitor_false_alarms.py publishes it).

A run is what a user's loop does with a zoo model: Adam at the learning rate the zoo's checks
train with (3e-4, Karpathy's "safe" rate; ``lr=1e-3`` the rate of its fitting checks), a fresh
batch per step drawn the way the zoo draws its one batch (the same shapes, the generator seeded
per batch), over a dataset of ``pool`` batches cycled epoch after epoch (``pool=None``: a new
batch every step, an endless stream), ``monitor.observe(loss)`` between backward and step.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from typing import Any

import architectures
import torch

import nnsanity

STEPS, POOL = 300, 16


@contextlib.contextmanager
def _batch_seed(offset: int) -> Iterator[None]:
    """The zoo's batch functions draw from ``architectures._generator(seed)``: shift its seeds
    so the same function gives the offset-th batch of a dataset."""
    original = architectures._generator
    architectures._generator = lambda seed=1: original(seed + 7919 * offset)
    try:
        yield
    finally:
        architectures._generator = original


def batches(arch: architectures.Arch, count: int) -> list[Any]:
    out = []
    for i in range(count):
        with _batch_seed(i):
            out.append(arch.batch())
    return out


def _takes_keywords(model: torch.nn.Module, inputs: Any) -> bool:
    """A mapping the forward takes as keywords (a graph's x, edge_index, batch)."""
    if not isinstance(inputs, dict):
        return False
    try:
        inspect.signature(model.forward).bind(**inputs)
    except TypeError:
        return False
    return True


def loss_of(arch: architectures.Arch, model: torch.nn.Module, batch: Any) -> torch.Tensor:
    if arch.loss_fn is None and isinstance(batch, tuple):  # a detector: a dict of losses
        losses = model(*batch)
        return sum(losses.values())
    if arch.loss_fn is None:  # a Hugging Face model computing its own loss from the labels
        return model(**batch).loss
    inputs, targets = batch
    outputs = model(**inputs) if _takes_keywords(model, inputs) else model(inputs)
    return arch.loss_fn(outputs, targets)


def healthy_run(
    name: str,
    *,
    steps: int = STEPS,
    lr: float = 3e-4,
    every: int = 10,
    pool: int | None = POOL,
    trace: list[dict[str, float]] | None = None,
) -> nnsanity.TrainingMonitor:
    """Train zoo model ``name`` for ``steps`` optimizer steps under a monitor that collects its
    alerts (never raises); ``trace`` receives ``monitor.metrics()`` after each measured step."""
    arch = architectures.ZOO[name]
    model = arch.build()
    model.train()
    data = batches(arch, pool if pool is not None else steps)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    torch.manual_seed(0)  # dropout
    found: list[nnsanity.Alert] = []
    with nnsanity.TrainingMonitor(model, every=every, on_alert=found.append) as monitor:
        for step in range(steps):
            loss = loss_of(arch, model, data[step % len(data)])
            opt.zero_grad()
            loss.backward()
            monitor.observe(loss)
            opt.step()
            if trace is not None and step % every == 0:
                trace.append(monitor.metrics())
    return monitor
