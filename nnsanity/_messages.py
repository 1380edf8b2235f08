"""Failure messages in one shape, after ``torch.testing.assert_close`` and Hypothesis's health
checks: a header naming what failed, one measured quantity per line with its bound and where,
numbered likely causes (most likely first, each with its remedy), the argument that relaxes the
check, and the seed.

Each check module writes an ``_explain(result) -> Explanation`` from its frozen result alone, so
``assert_*`` is ``measure_*`` plus :func:`fail`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from nnsanity._diagnosis import Cause, Place
from nnsanity._diagnosis import shown as listed_causes
from nnsanity.errors import SanityError

Msg = str | Callable[[str], str] | None


@dataclass(frozen=True, kw_only=True)
class Explanation:
    """What a failed check says; rendered by :func:`render`."""

    header: str  # what failed, ending in "!": "Loss did not decrease enough!"
    lines: Sequence[str]  # one measured quantity per line, with its bound and where
    causes: Sequence[Cause | str] = ()  # best supported first; default: the result's causes
    relax: str | None = None  # the argument(s) that relax the check
    where: Place | str | None = None  # where in the model (or the step) it broke


def at_least(value: str, bound: str) -> str:
    return f"{value} (at least {bound} required)"


def up_to(value: str, bound: str) -> str:
    return f"{value} (up to {bound} allowed)"


def names(items: Sequence[str], limit: int = 5) -> str:
    """``'a', 'b' and 3 more``: the first few of a list of names, quoted."""
    shown = ", ".join(f"'{n}'" for n in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def indices(items: Sequence[int], limit: int = 8) -> str:
    """``0, 3, 5, ... (12 in all)``: the first few of a list of indices."""
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def render(explanation: Explanation, seed: int | None, causes: Sequence[Cause | str] = ()) -> str:
    """The message: ``explanation``'s causes, or ``causes`` (the result's) when it has none."""
    parts = [explanation.header, ""]
    if explanation.where is not None:
        parts.append(f"Where: {explanation.where}")
    parts += explanation.lines
    listed = explanation.causes or listed_causes(tuple(c for c in causes if isinstance(c, Cause)))
    if listed:
        parts += ["", "Likely causes:"]
        parts += [
            f"  {i}. {c.render() if isinstance(c, Cause) else c}" for i, c in enumerate(listed, 1)
        ]
    if explanation.relax:
        parts.append(f"To relax: {explanation.relax}")
    if seed is not None:
        parts.append(f"Seed: {seed} (the check's seed=; the same seed reruns it the same way)")
    return "\n".join(parts)


def fail(explanation: Explanation, result: Any, msg: Msg = None) -> NoReturn:
    """Raise the :class:`SanityError` of a failed check; the message shows ``result.causes``
    (unless the explanation lists its own) and ``result.seed``.

    ``msg`` works as in ``torch.testing.assert_close``: a string replaces the generated message,
    a callable receives it and returns the message to show.
    """
    __tracebackhide__ = True
    text = render(explanation, getattr(result, "seed", None), getattr(result, "causes", ()))
    if isinstance(msg, str):
        text = msg
    elif msg is not None:
        text = msg(text)
    raise SanityError(text, result=result)


def unpaired_explanation(how: str | None) -> Explanation:
    """What every loss-based check says when the loss does not pair outputs with targets (its
    causes: ``_outputs.unpaired_causes``)."""
    return Explanation(
        header="The loss does not pair each output with its own target!",
        lines=[
            f"Shapes: {how}",
            "Loss with the targets shuffled across the batch: unchanged (it must change)",
        ],
    )
