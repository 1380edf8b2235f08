"""Wall time of the instability, input-scale and learnable-signal checks on the reference models.

The budget is 2 s per check on one CPU thread for torchvision's ResNet-18 on 8 images of 32 px,
the GPT-2 small config and timm's ViT-Tiny (``tests/architectures.py``). Each check runs once to
warm up (lazy imports, first-call kernels), then ``REPEATS`` times; the median is printed, with
the machine's load average, since a shared machine slows everything down.

    python benchmarks/time_checks.py
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from architectures import ZOO
from learnable import SIGNAL

import nnsanity

REFERENCE = ("torchvision_resnet18", "gpt2", "timm_vit_tiny")
REPEATS = 3


def checks(name: str) -> dict[str, object]:
    arch = ZOO[name]
    batch, loss = arch.batch(), arch.loss_fn
    train = SIGNAL[name](8 if name != "gpt2" else 4, 10)
    return {
        "update_ratio": lambda m: nnsanity.measure_update_ratio(m, batch, loss),
        "activation_growth": lambda m: nnsanity.measure_activation_growth(m, batch),
        "dying_units": lambda m: nnsanity.measure_dying_units(m, batch, loss),
        "loss_stability": lambda m: nnsanity.measure_loss_stability(m, batch, loss),
        "input_scale": lambda m: nnsanity.measure_input_scale(m, batch),
        # a holdout as large as the batch (8 images, 4 rows), then 4x that, as the tests use
        "learns_signal (holdout 1x)": lambda m: nnsanity.measure_learns_signal(
            m, train, loss, holdout=SIGNAL[name](8 if name != "gpt2" else 4, 20)
        ),
        "learns_signal (holdout 4x)": lambda m: nnsanity.measure_learns_signal(
            m, train, loss, holdout=SIGNAL[name](32 if name != "gpt2" else 16, 20)
        ),
    }


def main() -> None:
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, load average {os.getloadavg()[0]:.1f}")
    for name in REFERENCE:
        for check, run in checks(name).items():
            times = []
            for _ in range(REPEATS + 1):
                model = ZOO[name].build()
                start = time.perf_counter()
                run(model)
                times.append(time.perf_counter() - start)
            print(f"{name:22s} {check:28s} {statistics.median(times[1:]):6.2f} s", flush=True)


if __name__ == "__main__":
    main()
