"""Reading a failed check's diagnosis in tests: by cause id and place, never by message text."""

from __future__ import annotations

from typing import Any

import pytest

from nnsanity import Cause


def result_of(failure: Any) -> Any:
    """The result of a failed check: from ``pytest.raises``' ExceptionInfo, a SanityError, or a
    result itself."""
    if isinstance(failure, pytest.ExceptionInfo):
        failure = failure.value
    return getattr(failure, "result", failure)


def cause_ids(failure: Any) -> list[str]:
    """The ids of the ranked causes, best supported first."""
    return [c.id for c in result_of(failure).causes]


def first_cause(failure: Any) -> Cause:
    causes = result_of(failure).causes
    assert causes, "the check failed without a diagnosis"
    return causes[0]
