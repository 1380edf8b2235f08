"""The contract every check's result keeps: frozen, keyword-only, ``.passed``, ``causes``,
``to_dict()``."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from nnsanity._diagnosis import MEASURED, Cause, rank


@dataclasses.dataclass(frozen=True, kw_only=True)
class CheckResult:
    """Base of every ``*Result``: what a ``measure_*`` measured and the bound it was judged by.

    Subclasses are frozen keyword-only dataclasses that define ``passed``; ``seed`` is the
    check's ``seed=``, so a result says how to rerun it. ``causes`` is the diagnosis of a failed
    check, ranked by the evidence (empty when it passed): see ``nnsanity.Cause``.
    """

    seed: int
    causes: tuple[Cause, ...] = ()
    # attributes of the model holding a tensor that changed from one call on the batch to the
    # next (a hidden state kept on the module); measured by the checks a carried state fails
    carried_state: tuple[str, ...] = ()

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
    if result.carried_state:
        found = [carried_state_cause(result.carried_state), *found]
    forensics = getattr(result, "forensics", None)
    if forensics is not None:
        found = [*forensics.causes(), *found]
    return dataclasses.replace(result, causes=rank(found))


def carried_state_cause(names: tuple[str, ...]) -> Cause:
    """A state kept on the module between calls: measured, and it explains any output that
    changes with what the model saw before, so it goes first."""
    return Cause(
        id="carried_state",
        summary=f"a state carried between calls: {', '.join(names)} holds a tensor that "
        "changed from one call on the same batch to the next (a hidden state kept on the "
        "module), so each output depends on the calls before it",
        remedy="pass the state explicitly (out, hidden = model(x, hidden)), detached between "
        "batches, or reset it for every batch",
        evidence=tuple(f"{n} changed between two identical calls" for n in names),
        where=names[0],
        support=MEASURED + 1.0,
    )
