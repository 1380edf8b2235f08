"""A reproduced claim as data: what was published, what we measured, and the honest verdict.

Reproduction tests build a :class:`Claim` and hand it to the ``nnsanity_claim`` fixture, which
records it for the end-of-run claim table and the JSON report (``--nnsanity-report``).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from nnsanity.repro.stats import (
    confidence_interval,
    paired_p_greater,
    prediction_interval,
    proportion_interval,
    summarize,
    welch_p_greater,
)


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

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["verdict"] = self.verdict.value
        if self.measured:
            s = summarize(self.measured)
            d["mean"], d["sd"], d["n"] = s.mean, s.sd, s.n
        return d


def single_run_claim(
    published: float,
    measured: Sequence[float],
    *,
    level: float = 0.95,
    **fields: Any,
) -> Claim:
    """Judge a published single-run number against our single runs over seeds.

    REPRODUCED when ``published`` lies in the ``level`` prediction interval of one further run
    (``nnsanity.repro.stats.prediction_interval``), NOT_REPRODUCED otherwise. ``fields`` are the
    other :class:`Claim` fields (id, source, statement, unit, details).
    """
    lo, hi = prediction_interval(measured, level)
    verdict = Verdict.REPRODUCED if lo <= published <= hi else Verdict.NOT_REPRODUCED
    return Claim(
        published=published,
        measured=measured,
        statistic=f"{level:.0%} prediction interval of a single run",
        verdict=verdict,
        interval=(lo, hi),
        **fields,
    )


def ordering_claim(
    higher: Sequence[float],
    lower: Sequence[float],
    *,
    paired: bool,
    alpha: float = 0.05,
    **fields: Any,
) -> Claim:
    """Judge a published ordering "``higher`` beats ``lower``" with one-sided t-tests.

    ``paired=True`` when run i of both arms shares its seed (its data order, its init): a paired
    t-test on the per-seed differences, which are what ``measured`` records. Otherwise Welch's
    test, and ``measured`` records ``higher``. REPRODUCED when higher > lower at significance
    ``alpha``; NOT_REPRODUCED when the reverse is significant; WITHIN_NOISE otherwise, so a noisy
    ordering is never asserted.
    """
    test = paired_p_greater if paired else welch_p_greater
    p_right, p_wrong = test(higher, lower), test(lower, higher)
    if p_right < alpha:
        verdict = Verdict.REPRODUCED
    elif p_wrong < alpha:
        verdict = Verdict.NOT_REPRODUCED
    else:
        verdict = Verdict.WITHIN_NOISE
    details = dict(fields.pop("details", {}))
    details.update(
        higher=list(map(float, higher)),
        lower=list(map(float, lower)),
        p_ordering=p_right,
        p_reverse=p_wrong,
        alpha=alpha,
    )
    if paired:
        diffs = [h - lo for h, lo in zip(higher, lower, strict=True)]
        return Claim(
            measured=diffs,
            statistic=f"one-sided paired t-test at alpha={alpha}; measured: per-seed differences; "
            f"interval: {1 - alpha:.0%} confidence interval of their mean",
            verdict=verdict,
            interval=confidence_interval(diffs, 1 - alpha),
            details=details,
            **fields,
        )
    return Claim(
        measured=list(higher),
        statistic=f"one-sided Welch t-test at alpha={alpha}",
        verdict=verdict,
        details=details,
        **fields,
    )


def exact_claim(holds: bool, measured: Sequence[float], **fields: Any) -> Claim:
    """An exact check (a count, a truth table, an identity to float rounding): REPRODUCED when
    ``holds``, NOT_REPRODUCED otherwise. ``measured`` is what was compared, ``holds`` the whole
    criterion (every part of it, controls included)."""
    verdict = Verdict.REPRODUCED if holds else Verdict.NOT_REPRODUCED
    return Claim(measured=measured, verdict=verdict, **fields)


def every_seed_claim(per_seed: Sequence[bool], measured: Sequence[float], **fields: Any) -> Claim:
    """REPRODUCED when the criterion holds for every seed (``per_seed``, one bool per seed)."""
    per_seed = [bool(ok) for ok in per_seed]
    if not per_seed:
        raise ValueError("every_seed_claim needs at least one seed.")
    details = {**fields.pop("details", {}), "holds_per_seed": per_seed}
    verdict = Verdict.REPRODUCED if all(per_seed) else Verdict.NOT_REPRODUCED
    return Claim(measured=measured, verdict=verdict, details=details, **fields)


def proportion_claim(
    successes: int,
    trials: int,
    *,
    above: float,
    level: float = 0.99,
    measured: Sequence[float] | None = None,
    **fields: Any,
) -> Claim:
    """A Monte Carlo proportion judged against "more than ``above`` of the trials".

    REPRODUCED when the ``level`` Wilson interval of the proportion
    (``nnsanity.repro.stats.proportion_interval``) lies above ``above``, NOT_REPRODUCED when it
    lies below, WITHIN_NOISE when it straddles it. ``measured`` defaults to ``[proportion]``.
    """
    p = successes / trials
    lo, hi = proportion_interval(successes, trials, level)
    if lo > above:
        verdict = Verdict.REPRODUCED
    elif hi < above:
        verdict = Verdict.NOT_REPRODUCED
    else:
        verdict = Verdict.WITHIN_NOISE
    details = {**fields.pop("details", {}), "successes": successes, "trials": trials}
    return Claim(
        measured=[p] if measured is None else measured,
        verdict=verdict,
        interval=(lo, hi),
        details=details,
        **fields,
    )
