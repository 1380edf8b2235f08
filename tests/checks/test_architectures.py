"""Every applicable check passes, with default arguments, on the real-architecture zoo: one
``SanitySuite`` per architecture (``test_architectures.py::Test_gpt2::can_overfit``), the run
``benchmarks/compatibility.py`` makes the README's table from."""

from __future__ import annotations

from typing import Any

import pytest
from architectures import EVERY_MODEL, TABLE_CHECKS, ZOO, Arch, run_check

from nnsanity import SanitySuite

pytestmark = pytest.mark.usefixtures("one_thread")


def zoo_suite(name: str, arch: Arch) -> type[SanitySuite]:
    """The suite a user would write for this model: its factories, its loss, its table row."""

    class Suite(SanitySuite):
        checks = tuple(c for c in TABLE_CHECKS if c in (*arch.checks, *EVERY_MODEL))
        loss_fn = arch.loss_fn
        autoregressive = arch.causal_inputs is not None

        def model(self) -> Any:
            return arch.build()

        def batch(self) -> Any:
            return arch.batch()

        def inputs(self, batch: Any) -> Any:
            return arch.causal_inputs(batch) if arch.causal_inputs is not None else None

    Suite.__name__ = Suite.__qualname__ = f"Test_{name}"
    return Suite


globals().update({f"Test_{name}": zoo_suite(name, arch) for name, arch in ZOO.items()})


@pytest.mark.parametrize("name", ["gpt2", "timm_resnet18", "label_smoothing_lm"])
def test_results_are_the_same_run_after_run(name):
    arch = ZOO[name]
    for check in ("init_loss", "can_overfit", "uses_inputs", "gradient_ratio"):
        first = run_check(check, arch, arch.build(), arch.batch()).to_dict()
        assert run_check(check, arch, arch.build(), arch.batch()).to_dict() == first, check
