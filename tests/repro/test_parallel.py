"""Forked single-thread workers give what a plain loop gives, in order, and report failures; the
population split over two of them is deterministic and agrees with one process to rounding."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from nnsanity.repro.parallel import map_processes
from nnsanity.repro.population import grid, split, train_population

DEPTHS = [(784, 30, 10), (784, 30, 30, 10), (784, 30, 30, 30, 10)]


def square_and_threads(x: int, tick) -> tuple[int, int]:
    tick(1)
    return x * x, torch.get_num_threads()


def test_workers_return_what_a_loop_returns_in_order_on_one_thread_each():
    seen = []
    out = map_processes(square_and_threads, list(range(7)), progress=seen.append)
    assert [v for v, _ in out] == [x * x for x in range(7)]
    assert {threads for _, threads in out} == {1}
    assert map_processes(square_and_threads, [3], processes=1) == [(9, torch.get_num_threads())]
    assert not seen or max(seen) <= 7


def test_a_failing_worker_raises_with_its_error():
    def fail(x: int, tick) -> int:
        raise ValueError(f"bad item {x}")

    with pytest.raises(RuntimeError, match="ValueError: bad item"):
        map_processes(fail, [1, 2])


def test_the_split_is_balanced_by_work_and_deterministic():
    configs = grid(DEPTHS, [0, 1, 2, 3])
    parts = split(configs, 2)
    assert sorted(k for p in parts for k in p) == list(range(len(configs)))
    work = [
        sum(sum(i * o for i, o in zip(configs[k].sizes, configs[k].sizes[1:])) for k in p)
        for p in parts
    ]
    assert max(work) / min(work) < 1.1
    assert split(configs, 2) == parts


def synthetic(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 784, generator=g, dtype=torch.float64), torch.randint(
        0, 10, (n,), generator=g
    )


def test_a_population_in_two_processes_matches_one_process_and_repeats_exactly():
    configs = grid(DEPTHS, [0, 1])
    x, y = synthetic(120, 1)
    vx, vy = synthetic(50, 2)
    kw = {"epochs": 2, "eta": 0.5, "lmbda": 5.0, "eval_x": vx, "eval_y": vy}
    kw["dtype"] = torch.float64
    one = train_population(configs, x, y, **kw)
    two = train_population(configs, x, y, processes=2, **kw)
    again = train_population(configs, x, y, processes=2, **kw)
    for k in range(len(configs)):
        for a, b, c in zip(one.weights[k], two.weights[k], again.weights[k], strict=True):
            assert_close(b, a, rtol=1e-10, atol=1e-12)
            assert torch.equal(b, c)
    assert torch.equal(one.correct, two.correct)
    assert_close(two.evaluation_cost, one.evaluation_cost, rtol=1e-10, atol=1e-12)
