"""Every applicable check passes, with default arguments, on the real-architecture zoo."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from architectures import ZOO, Arch

import nnsanity

pytestmark = pytest.mark.usefixtures("one_thread")


def run_check(check: str, arch: Arch, model: torch.nn.Module, batch: Any) -> Any:
    """The check as a new user calls it: the model, the batch, the loss (if any), defaults."""
    loss_fn = arch.loss_fn
    if check == "batch_independence":
        return nnsanity.measure_batch_independence(model, batch)
    if check == "causal":
        assert arch.causal_inputs is not None
        return nnsanity.measure_causal(model, arch.causal_inputs(batch))
    if check == "reproducible":
        model.train()  # dropout on: the forward pass draws random numbers where it has any

        def forward() -> Any:
            with torch.no_grad():
                if isinstance(batch, dict):
                    return model(**batch)
                inputs = batch[0]
                return model(inputs)

        return nnsanity.measure_reproducibility(forward)
    measure = {
        "init_loss": nnsanity.measure_init_loss,
        "finite": nnsanity.measure_finite,
        "loss_decreases": nnsanity.measure_loss_decrease,
        "can_overfit": nnsanity.measure_overfit,
        "params_update": nnsanity.measure_params_update,
        "gradient_ratio": nnsanity.measure_gradient_ratio,
        "uses_inputs": nnsanity.measure_uses_inputs,
    }[check]
    return measure(model, batch, loss_fn)


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
