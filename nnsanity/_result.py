"""The contract every check's result keeps: frozen, keyword-only, ``.passed``, ``causes``,
``to_dict()``."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from nnsanity._diagnosis import Cause, rank


@dataclasses.dataclass(frozen=True, kw_only=True)
class CheckResult:
    """Base of every ``*Result``: what a ``measure_*`` measured and the bound it was judged by.

    Subclasses are frozen keyword-only dataclasses that define ``passed``; ``seed`` is the
    check's ``seed=``, so a result says how to rerun it. ``causes`` is the diagnosis of a failed
    check, ranked by the evidence (empty when it passed): see ``nnsanity.Cause``.
    """

    seed: int
    causes: tuple[Cause, ...] = ()

    @property
    def passed(self) -> bool:
        raise NotImplementedError

    @property
    def cause(self) -> Cause | None:
        """The first (best supported) cause, or None when the check passed."""
        return self.causes[0] if self.causes else None

    def to_dict(self) -> dict[str, Any]:
        """The fields and ``passed``, as plain data (for JSON, junit properties, logs)."""
        return {**dataclasses.asdict(self), "passed": self.passed}


R = TypeVar("R", bound=CheckResult)


def diagnosed(result: R, diagnose: Callable[[R], Iterable[Cause]]) -> R:
    """``result`` with its ranked causes, when it failed (diagnosing costs nothing otherwise):
    the check's own and, for a check that ran the user's step, those its ``forensics``
    measured."""
    if result.passed:
        return result
    found = list(diagnose(result))
    forensics = getattr(result, "forensics", None)
    if forensics is not None:
        found = [*forensics.causes(), *found]
    return dataclasses.replace(result, causes=rank(found))
