"""The contract every check's result keeps: frozen, keyword-only, ``.passed``, ``to_dict()``."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True, kw_only=True)
class CheckResult:
    """Base of every ``*Result``: what a ``measure_*`` measured and the bound it was judged by.

    Subclasses are frozen keyword-only dataclasses that define ``passed``; ``seed`` is the
    check's ``seed=``, so a result says how to rerun it.
    """

    seed: int

    @property
    def passed(self) -> bool:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """The fields and ``passed``, as plain data (for JSON, junit properties, logs)."""
        return {**dataclasses.asdict(self), "passed": self.passed}
