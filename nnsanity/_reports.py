"""The sanity suites' results as tables and data for CI: Markdown, JSON and a terminal summary.

Plain data in, text out (no pytest): the plugin gathers one :class:`Outcome` per suite test,
on the controller under xdist, and writes these.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from typing import Any, Literal

Verdict = Literal["pass", "fail", "error", "skip"]
_CELL = {"pass": "pass", "fail": "**FAIL**", "error": "**ERROR**", "skip": "skip"}


@dataclasses.dataclass(frozen=True)
class Outcome:
    """One suite test: which suite (its node id, ``file::Class``) and check, the verdict, the
    check's seconds (wall clock, the check's call alone; None when it did not run), why
    it was skipped or errored, and the result's ``to_dict()`` where the check measured one."""

    suite: str
    check: str
    verdict: Verdict
    seconds: float | None = None
    reason: str = ""
    result: dict[str, Any] | None = None


def _by_suite(outcomes: Iterable[Outcome]) -> dict[str, dict[str, Outcome]]:
    table: dict[str, dict[str, Outcome]] = {}
    for o in outcomes:
        table.setdefault(o.suite, {})[o.check] = o
    return table


def _cell(o: Outcome | None) -> str:
    if o is None:
        return ""
    mark = _CELL[o.verdict]
    return mark if o.seconds is None else f"{mark} {o.seconds:.2f}s"


def markdown(outcomes: Iterable[Outcome], order: Iterable[str]) -> str:
    """One row per suite, one column per check that any suite ran (in ``order``, the
    catalogue's), each cell the verdict and the seconds; the skip reasons below."""
    table = _by_suite(outcomes)
    if not table:
        return "## nnsanity\n\nNo SanitySuite ran.\n"
    ran = {check for row in table.values() for check in row}
    checks = [c for c in order if c in ran] + sorted(ran - set(order))
    lines = [
        "| suite | " + " | ".join(checks) + " |",
        "|---" * (len(checks) + 1) + "|",
        *(
            f"| `{suite}` | " + " | ".join(_cell(row.get(c)) for c in checks) + " |"
            for suite, row in table.items()
        ),
    ]
    notes = [
        f"- `{o.suite}::{o.check}` ({o.verdict}): {o.reason}"
        for row in table.values()
        for o in row.values()
        if o.reason
    ]
    return (
        "## nnsanity\n\n"
        + "\n".join(lines)
        + "\n"
        + ("\n" + "\n".join(notes) + "\n" if notes else "")
    )


def to_json(outcomes: Iterable[Outcome], seed: int) -> str:
    """Every outcome with its result's measured values and bounds; non-JSON values as repr."""
    data = {"seed": seed, "results": [dataclasses.asdict(o) for o in outcomes]}
    return json.dumps(data, indent=1, default=repr)


def summary(outcomes: Iterable[Outcome]) -> list[str]:
    """A short table for the terminal: per suite, the counts, the seconds and what failed."""
    table = _by_suite(outcomes)
    width = max([len("suite"), *map(len, table)])
    lines = [f"{'suite':<{width}}  pass  fail  skip  seconds  failed"]
    for suite, row in table.items():
        count = {v: sum(o.verdict == v for o in row.values()) for v in _CELL}
        seconds = sum(o.seconds or 0.0 for o in row.values())
        failed = ", ".join(c for c, o in row.items() if o.verdict in ("fail", "error"))
        lines.append(
            f"{suite:<{width}}  {count['pass']:>4}  {count['fail'] + count['error']:>4}  "
            f"{count['skip']:>4}  {seconds:>7.2f}  {failed}".rstrip()
        )
    return lines
