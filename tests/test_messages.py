"""Failure messages: one shape for every check, after torch.testing.assert_close."""

from __future__ import annotations

import pytest
import torch
import zoo

from nnsanity import SanityError, assert_loss_decreases
from nnsanity._messages import Explanation, at_least, fail, render, up_to
from nnsanity._result import CheckResult

EXPLANATION = Explanation(
    header="Loss did not decrease enough!",
    lines=[f"Decrease over 25 steps: {at_least('0.0045', '0.023')}", "Loss: 2.303 -> 2.298"],
    causes=["the learning rate is too low", "most parameters are frozen"],
    relax="steps= (more) or min_decrease= (smaller).",
)
RESULT = CheckResult(seed=0)


def test_a_message_has_a_header_one_quantity_per_line_numbered_causes_the_relaxer_and_the_seed():
    assert render(EXPLANATION, seed=7) == (
        "Loss did not decrease enough!\n"
        "\n"
        "Decrease over 25 steps: 0.0045 (at least 0.023 required)\n"
        "Loss: 2.303 -> 2.298\n"
        "\n"
        "Likely causes:\n"
        "  1. the learning rate is too low\n"
        "  2. most parameters are frozen\n"
        "To relax: steps= (more) or min_decrease= (smaller).\n"
        "Seed: 7 (the check's seed=; the same seed reruns it the same way)"
    )


def test_bounds_read_as_torch_testing_writes_them():
    assert up_to("3.2", "1e-05") == "3.2 (up to 1e-05 allowed)"
    assert at_least("0.1", "0.2") == "0.1 (at least 0.2 required)"


def test_msg_replaces_the_message_or_extends_it_as_in_assert_close():
    with pytest.raises(SanityError, match=r"^custom$") as e:
        fail(EXPLANATION, RESULT, msg="custom")
    assert e.value.result is RESULT
    with pytest.raises(SanityError, match=r"(?s)^in my helper: Loss did not.*Seed: 0") as e:
        fail(EXPLANATION, RESULT, msg=lambda m: "in my helper: " + m)


def test_every_check_passes_msg_through():
    model, batch = zoo.mlp(), zoo.classification_batch()
    tiny = lambda p: torch.optim.Adam(p, lr=1e-9)  # noqa: E731
    with pytest.raises(SanityError, match=r"(?s)^MLP: Loss did not decrease enough!") as e:
        assert_loss_decreases(
            model,
            batch,
            torch.nn.functional.cross_entropy,
            optimizer=tiny,
            msg=lambda m: "MLP: " + m,
        )
    assert not e.value.result.passed
