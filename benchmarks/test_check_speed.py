"""What each default check costs on the reference models, on one CPU thread (pytest-benchmark).

    pytest benchmarks/test_check_speed.py                         # 3 rounds each
    NNSANITY_BENCH_ROUNDS=1 pytest benchmarks/test_check_speed.py # quick, as CI runs it

The budget (issue 8): every default check at most 2 s on torchvision's resnet18 (8 images of
32 px), the GPT-2 small config and timm's ViT-Tiny, and the whole set on one model under 10 s.
A test here reports against the budget; it never fails on time (machines differ), so the
numbers in the README come from a quiet run of this file.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from architectures import ZOO, run_check

REFERENCE = ("torchvision_resnet18", "gpt2", "timm_vit_tiny")
ROUNDS = int(os.environ.get("NNSANITY_BENCH_ROUNDS", "3"))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


CASES = [(n, c) for n in REFERENCE for c in ZOO[n].checks]


@pytest.mark.parametrize(("name", "check"), CASES, ids=[f"{n}-{c}" for n, c in CASES])
def test_default_check_cost(benchmark, name, check):
    arch = ZOO[name]

    def setup():
        return (arch.build(), arch.batch()), {}

    def call(model, batch):  # the zoo test's own call: defaults only
        return run_check(check, arch, model, batch)

    result = benchmark.pedantic(call, setup=setup, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    assert result.passed  # a benchmark of a failing check measures the wrong path
