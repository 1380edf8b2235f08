"""A reproduced claim as data: what was published, what we measured, and the honest verdict.

Reproduction tests build a :class:`Claim` and hand it to the ``nnsanity_claim`` fixture, which
records it for the end-of-run claim table and the JSON report (``--nnsanity-report``).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from nnsanity.statistics import summarize


class Verdict(str, enum.Enum):
    REPRODUCED = "reproduced"
    NOT_REPRODUCED = "not reproduced"
    WITHIN_NOISE = "within noise"

    def __str__(self) -> str:
        return self.value


@dataclass
class Claim:
    """One claim of the notes, as measured here.

    ``measured`` holds one value per seed (or per init, per run); ``interval`` is the interval
    the verdict was judged with (a prediction interval for a single published run, a confidence
    interval for a mean, or an exact value's rounding range); ``statistic`` says which.
    """

    id: str
    source: str
    statement: str
    published: float | str | None
    measured: Sequence[float]
    statistic: str
    verdict: Verdict
    interval: tuple[float, float] | None = None
    unit: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.verdict = Verdict(self.verdict)
        self.measured = [float(v) for v in self.measured]
        if self.interval is not None:
            self.interval = (float(self.interval[0]), float(self.interval[1]))

    def measured_text(self) -> str:
        if not self.measured:
            return "-"
        s = summarize(self.measured)
        if s.n == 1:
            return f"{s.mean:.4g}{self.unit}"
        return f"{s.mean:.4g} ± {s.sd:.2g}{self.unit} (n={s.n})"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["verdict"] = self.verdict.value
        if self.measured:
            s = summarize(self.measured)
            d["mean"], d["sd"], d["n"] = s.mean, s.sd, s.n
        return d
