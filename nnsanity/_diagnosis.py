"""What went wrong, as data: causes with stable ids, the evidence for each, where it happened.

Every check's result carries ``causes``, ranked by what the check measured rather than listed in
a fixed order: a cause the measurements support comes first (the stronger the evidence, the
earlier), a generic suspect after it, and a cause the measurements contradict is dropped (kept
last only when nothing else is left). Tests and tools read ``cause.id`` and ``place``; the
message renders the same objects, so the text can change without breaking either.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["Cause", "Operation", "Place", "rank"]

# Support levels: what the measurements say about a cause.
MEASURED = 2.0  # the check measured the bug's own signature (the op, the setting, the value)
CONSISTENT = 1.0  # the measurements fit it and fit few other causes
GENERIC = 0.0  # a common cause of this failure that nothing measured speaks for or against
CONTRADICTED = -1.0  # a measurement rules it out


@dataclass(frozen=True, kw_only=True)
class Cause:
    """One likely cause of a failed check.

    ``id`` is stable (snake_case) for tests and tools; ``summary`` says what is wrong and
    ``remedy`` how to fix it; ``evidence`` lists the measured facts behind it, each with its
    value; ``where`` names the module, the line of a ``forward``, the parameter or the step it
    points at; ``support`` is how strongly the measurements back it (see ``rank``).
    """

    id: str
    summary: str
    remedy: str = ""
    evidence: tuple[str, ...] = ()
    where: str | None = None
    support: float = GENERIC

    def render(self) -> str:
        at = f" [{self.where}]" if self.where and self.where not in self.summary else ""
        text = f"{self.summary}{at}" + (f": {self.remedy}" if self.remedy else "")
        if self.evidence:
            text += "\n     evidence: " + "; ".join(self.evidence)
        return text


@dataclass(frozen=True, kw_only=True)
class Operation:
    """One operation inside a module's ``forward``: ``name`` as torch calls it
    (``log_softmax``, ``reshape``, ``masked_fill``), ``kind`` (``softmax``, ``reduction``,
    ``reshape``, ``mask`` or ``other``), ``text`` with the arguments that say what it does
    (``log_softmax(dim=0)``), the ``line`` that called it, the ``shape`` of its first input,
    its ``dim`` argument (non-negative), whether that dim is the property's own axis (the
    batch, the positions), and the value a masking op writes."""

    name: str
    kind: str
    text: str
    line: str | None = None
    shape: tuple[int, ...] | None = None
    dim: int | None = None
    on_axis: bool = False
    fill: float | None = None


@dataclass(frozen=True, kw_only=True)
class Place:
    """Where a property first breaks inside the model, found by hooks during the check's own
    perturbation (``nnsanity._localisation``).

    ``module`` is the name of the first module whose output breaks while its inputs still hold
    (``""`` for the model itself) and ``module_type`` its class. When that module's ``forward``
    is not PyTorch's own, ``forward`` is its ``file:line`` and ``operation`` the first operation
    inside it that breaks the property (``op`` ``"log_softmax(dim=0)"``, ``line``
    ``"file.py:33"``).
    When the break sits between submodules, ``after`` is the last one whose output still held
    and ``before`` the first one fed a broken input.
    """

    module: str
    module_type: str
    forward: str | None = None
    operation: Operation | None = None
    after: str | None = None
    before: str | None = None

    @property
    def op(self) -> str | None:
        return self.operation.text if self.operation else None

    @property
    def line(self) -> str | None:
        return self.operation.line if self.operation else None

    @property
    def label(self) -> str:
        return f"'{self.module}' ({self.module_type})" if self.module else self.module_type

    @property
    def short(self) -> str:
        """The op's line where one was found, else the module: for a cause's ``where``."""
        return f"{self.op} at {self.line}" if self.op and self.line else self.label

    def __str__(self) -> str:
        text = self.label
        if self.op:
            text += f": {self.op}" + (f" at {self.line}" if self.line else "")
            text += f", in {self.module_type}.forward"
        elif self.forward:
            text += f", in {self.module_type}.forward ({self.forward})"
        if self.after and self.before:
            text += f", between '{self.after}' (still holds) and '{self.before}'"
        elif self.after:
            text += f", after '{self.after}' (still holds)"
        elif self.before:
            text += f", before '{self.before}'"
        return text


def cause(id: str, text: str, support: float = GENERIC, **fields: Any) -> Cause:
    """A cause from one sentence "what is wrong: how to fix it" (split at the first ": ")."""
    summary, _, remedy = text.partition(": ")
    return Cause(id=id, summary=summary, remedy=remedy, support=support, **fields)


def shown(causes: tuple[Cause, ...], generic: int = 2) -> tuple[Cause, ...]:
    """The causes a message lists: every supported one, then at most ``generic`` generic
    suspects after them (all of them when nothing is supported)."""
    supported = [c for c in causes if c.support > GENERIC]
    rest = [c for c in causes if c.support <= GENERIC]
    return tuple(supported + (rest[:generic] if supported else rest))


def rank(candidates: Iterable[Cause]) -> tuple[Cause, ...]:
    """The causes in order of support (stable for equal support); contradicted ones dropped,
    unless nothing else is left."""
    found = list(candidates)
    kept = [c for c in found if c.support > CONTRADICTED] or found
    seen: set[str] = set()
    unique = []
    for c in sorted(kept, key=lambda c: -c.support):
        if c.id not in seen:
            seen.add(c.id)
            unique.append(c)
    return tuple(unique)
