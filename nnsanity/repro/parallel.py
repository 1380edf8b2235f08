"""Both CPU cores for independent trainings: forked workers of one thread each.

Small models with mini-batches of 10 gain little from a second intra-op thread, and on a busy
2-core machine OpenMP's spinning threads can make every step many times slower; two single-thread
processes side by side keep both cores busy instead (measured in benchmarks/bench_population.py:
1.75x one thread for N1's population, against 1.57x for two threads). Workers are forked, so the
data and the function (a closure is fine) reach them without pickling; results come back as
``torch.save`` bytes through a pipe.
"""

from __future__ import annotations

import io
import multiprocessing
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch

T = TypeVar("T")
Tick = Callable[[int], None]  # tick(n): n more units of work done


def processes_for(device: torch.device | str | None, cpu: int = 2) -> int:
    """``cpu`` worker processes on the CPU, one on an accelerator (a forked child cannot use
    the CUDA context of its parent, and one GPU needs no splitting)."""
    return cpu if device is None or torch.device(device).type == "cpu" else 1


def _worker(fn: Callable[[Any, Tick], Any], items: list[Any], counter: Any, pipe: Any) -> None:
    torch.set_num_threads(1)

    def tick(n: int) -> None:
        with counter.get_lock():
            counter.value += n

    try:
        buffer = io.BytesIO()
        torch.save([fn(item, tick) for item in items], buffer)
        pipe.send((True, buffer.getvalue()))
    except BaseException as e:  # the parent re-raises it
        pipe.send((False, f"{type(e).__name__}: {e}"))
    finally:
        pipe.close()


def map_processes(
    fn: Callable[[T, Tick], Any],
    items: Sequence[T],
    *,
    groups: Sequence[Sequence[int]] | None = None,
    processes: int = 2,
    progress: Callable[[int], None] | None = None,
) -> list[Any]:
    """``[fn(item, tick) for item in items]``, computed in ``processes`` forked single-thread
    workers (in this process, on its current threads, when ``processes`` is 1).

    ``groups`` assigns item indices to workers (default: round robin); ``fn`` calls ``tick(n)``
    as it finishes n units of work, and ``progress(done)`` is called about every half second
    with the units done so far. Each result must not depend on which worker computed it (seed
    every item's randomness from the item). Raises RuntimeError if a worker fails or dies.
    """
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    if groups is None:
        groups = [list(range(w, len(items), processes)) for w in range(processes)]
    groups = [list(g) for g in groups if len(g)]
    if processes == 1 or len(groups) <= 1:
        return _map_here(fn, items, progress)
    ctx = multiprocessing.get_context("fork")
    counter = ctx.Value("q", 0)
    workers, pipes = [], []
    for group in groups:
        receive, send = ctx.Pipe(duplex=False)
        args = (fn, [items[i] for i in group], counter, send)
        worker = ctx.Process(target=_worker, args=args, daemon=True)
        worker.start()
        send.close()
        workers.append(worker)
        pipes.append(receive)
    try:
        results = _collect(workers, pipes, lambda: progress(counter.value) if progress else None)
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.terminate()
            worker.join()
    out: list[Any] = [None] * len(items)
    for group, values in zip(groups, results, strict=True):
        for i, value in zip(group, values, strict=True):
            out[i] = value
    return out


def _map_here(
    fn: Callable[[T, Tick], Any], items: Sequence[T], progress: Callable[[int], None] | None
) -> list[Any]:
    done = [0]

    def tick(n: int) -> None:
        done[0] += n
        if progress is not None:
            progress(done[0])

    return [fn(item, tick) for item in items]


def _collect(workers: list[Any], pipes: list[Any], report: Callable[[], None]) -> list[list[Any]]:
    """Each worker's results, polling every half second; raises if one fails or dies."""
    results: list[list[Any] | None] = [None] * len(workers)
    while any(r is None for r in results):
        for w, pipe in enumerate(pipes):
            if results[w] is not None:
                continue
            if pipe.poll(0.5):
                ok, payload = pipe.recv()
                if not ok:
                    raise RuntimeError(f"a worker process failed: {payload}")
                results[w] = torch.load(io.BytesIO(payload), weights_only=False)
            elif not workers[w].is_alive() and not pipe.poll(0):
                raise RuntimeError(f"a worker process died (exit code {workers[w].exitcode})")
        report()
    return [r for r in results if r is not None]
