"""Every applicable check passes, with default arguments, on the real-architecture zoo."""

from __future__ import annotations

import pytest
from architectures import ZOO, run_check

pytestmark = pytest.mark.usefixtures("one_thread")


CASES = [(name, check) for name, arch in ZOO.items() for check in arch.checks]


@pytest.mark.parametrize(("name", "check"), CASES, ids=[f"{n}-{c}" for n, c in CASES])
def test_passes_with_default_arguments(name, check):
    arch = ZOO[name]
    result = run_check(check, arch, arch.build(), arch.batch())
    assert result.passed, result


@pytest.mark.parametrize("name", ["gpt2", "timm_resnet18", "label_smoothing_lm"])
def test_results_are_the_same_run_after_run(name):
    arch = ZOO[name]
    for check in ("init_loss", "can_overfit", "uses_inputs", "gradient_ratio"):
        first = run_check(check, arch, arch.build(), arch.batch()).to_dict()
        assert run_check(check, arch, arch.build(), arch.batch()).to_dict() == first, check
