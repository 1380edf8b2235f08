"""A reproduced claim as data: what was published, what we measured, and the honest verdict.

Every claim test builds a :class:`Claim` with one of the helpers below, each of which encodes one
kind of criterion, declared in the claim card before the data:

- ``single_run_claim``: a published single run against the prediction interval of our runs;
- ``ordering_claim``: "A beats B", a one-sided t-test (paired by seed where seeds are shared);
- ``equivalence_claim``: "A is about B" or "not significantly different", a TOST with a margin;
- ``proportion_claim``: "usually" / "wins", a Monte Carlo proportion with its Wilson interval;
- ``every_seed_claim``: a property every seed must show, with margins far from the bound;
- ``exact_claim``: an identity (a definition, a formula, our own code) checked exactly.

Verdicts: REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE (the interval is too wide to decide),
NOT_TESTABLE (our budget cannot test the claim, by a precondition the card declares: a run that
has not left chance, or has not converged, says nothing about the source's end-of-training
numbers; ``not_testable``) and IDENTITY (an exact check that holds: reported apart from the
empirical reproductions). A claim whose source is our own prediction, not the notes', has
``origin="ours"`` and is counted apart too. Each
helper also estimates ``flip``, the probability that a fresh set of seeds would give a different
verdict: it draws 2,000 new measurements from a normal fit to ours (or resamples ours, or redraws
a binomial count) and judges each with the same criterion. The estimate treats our measurement
as the truth, so a claim whose statistic sits on its bound flips with probability about 1/2.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import stats as st

from nnsanity.repro.stats import prediction_interval, proportion_interval, summarize

FLIP_DRAWS = 2000  # fresh measurement sets per flip estimate: SE <= 0.011
_FLIP_SEED = 20261129  # flip estimates are deterministic


class Verdict(str, enum.Enum):
    REPRODUCED = "reproduced"
    NOT_REPRODUCED = "not reproduced"
    INCONCLUSIVE = "inconclusive"
    NOT_TESTABLE = "not testable at this budget"
    IDENTITY = "identity"

    def __str__(self) -> str:
        return self.value


class ClaimNotReproduced(AssertionError):
    """The claim's criterion failed: mark a known case ``xfail(strict=True, raises=...)``."""


class ClaimInconclusive(AssertionError):
    """The measurement cannot decide the claim (its interval is too wide)."""


class ClaimNotTestable(AssertionError):
    """The claim's declared precondition fails at this budget: nothing was tested."""


@dataclass
class Claim:
    """One claim of the notes, as measured here.

    ``measured`` holds one value per seed (or per init, per run); ``estimate`` is the number the
    verdict was judged on and ``estimator`` says what it is (a mean, a median, a proportion...);
    ``interval`` is the interval the verdict used and ``interval_kind`` names it. ``statistic``
    states the criterion in words. ``fidelity`` is "faithful" (the source's own setting) or
    "scaled" (a smaller one, said in the card); ``changed`` discloses a criterion changed after
    seeing data, with its date and reason. ``origin`` is "source" (a claim of the notes or
    their sources) or "ours" (our own prediction, counted apart). ``seeds`` and ``seconds`` are
    filled in by the recording fixture when the test does not set them.
    """

    id: str
    source: str
    statement: str
    published: float | str | None
    measured: Sequence[float]
    statistic: str
    verdict: Verdict
    interval: tuple[float, float] | None = None
    interval_kind: str = ""
    estimate: float | None = None
    estimator: str = ""
    unit: str = ""
    fidelity: str = "faithful"
    flip: float | None = None
    changed: str = ""
    origin: str = "source"
    seeds: list[int] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.verdict = Verdict(self.verdict)
        self.measured = [float(v) for v in self.measured]
        if self.interval is not None:
            self.interval = (float(self.interval[0]), float(self.interval[1]))
        if self.estimate is None and self.measured:
            self.estimate, self.estimator = float(np.mean(self.measured)), "mean"
        if self.fidelity not in ("faithful", "scaled"):
            raise ValueError(f"fidelity must be 'faithful' or 'scaled', got {self.fidelity!r}")
        if self.origin not in ("source", "ours"):
            raise ValueError(f"origin must be 'source' or 'ours', got {self.origin!r}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["verdict"] = self.verdict.value
        if self.measured:
            s = summarize(self.measured)
            d["mean"], d["sd"], d["n"] = s.mean, s.sd, s.n
        return d

    def __str__(self) -> str:
        lo_hi = "" if self.interval is None else f", {self.interval_kind} {self.interval}"
        return (
            f"{self.id}: {self.verdict} ({self.statement}; published {self.published}; "
            f"{self.estimator} {self.estimate}{self.unit}{lo_hi}; {self.statistic})"
        )


def _make(fields: dict[str, Any], **defaults: Any) -> Claim:
    """A Claim from a helper's defaults, any of which the caller's ``fields`` override (a
    statistic stated in the caller's words, say)."""
    return Claim(**{**defaults, **fields})


# -- flip probabilities ----------------------------------------------------------------------
_R, _N, _I = (v.value for v in (Verdict.REPRODUCED, Verdict.NOT_REPRODUCED, Verdict.INCONCLUSIVE))
Judge = Callable[[np.ndarray], np.ndarray]  # (sets, n) measurements -> (sets,) verdicts


def _draws(
    values: Sequence[float] | np.ndarray, model: str, rng: np.random.Generator
) -> np.ndarray:
    """(FLIP_DRAWS, n) fresh measurement sets like ``values``."""
    x = np.asarray(values, dtype=float)
    if model == "normal":
        sd = x.std(ddof=1) if x.size > 1 else 0.0
        return rng.normal(x.mean(), sd, size=(FLIP_DRAWS, x.size))
    if model == "resample":
        return rng.choice(x, size=(FLIP_DRAWS, x.size), replace=True)
    raise ValueError(f"model must be 'normal' or 'resample', got {model!r}")


def flip_probability(
    judge: Judge, values: Sequence[float] | np.ndarray, verdict: Verdict, *, model: str = "normal"
) -> float:
    """Share of FLIP_DRAWS fresh measurement sets (``model``: a normal fit to ``values``, or
    resampling them) that ``judge`` gives another verdict than ``verdict``. ``judge`` maps a
    (sets, n) array to an array of verdicts, one per set."""
    sets = _draws(values, model, np.random.default_rng(_FLIP_SEED))
    return float(np.mean(judge(sets) != verdict))


def _mean_sd(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row means and sample sds of a (sets, n) array."""
    return x.mean(axis=-1), x.std(axis=-1, ddof=1)


def _t_interval(x: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise t confidence interval of the mean, (sets,) each; as scipy's ttest_1samp."""
    n = x.shape[-1]
    mean, sd = _mean_sd(x)
    half = st.t.ppf((1 + level) / 2, n - 1) * sd / math.sqrt(n)
    return mean - half, mean + half


def _p_greater(d: np.ndarray) -> np.ndarray:
    """Row-wise one-sided one-sample t-test p-value for mean(d) > 0 (0 or 1 when sd is 0)."""
    n = d.shape[-1]
    mean, sd = _mean_sd(d)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = mean / (sd / math.sqrt(n))
    p = st.t.sf(t, n - 1)
    return np.where(sd == 0, np.where(mean > 0, 0.0, 1.0), p)


# -- the helpers -----------------------------------------------------------------------------
def single_run_claim(
    published: float,
    measured: Sequence[float],
    *,
    max_half_width: float,
    level: float = 0.95,
    **fields: Any,
) -> Claim:
    """Judge a published single-run number against our single runs over seeds.

    REPRODUCED when ``published`` lies in the ``level`` prediction interval of one further run
    (``nnsanity.repro.stats.prediction_interval``), NOT_REPRODUCED when it lies outside;
    INCONCLUSIVE when it lies inside but the interval's half width exceeds ``max_half_width``
    (declared in the card: the interval is then too wide to tell the published number from a
    different result).
    """
    x = np.asarray(measured, dtype=float)
    n = x.size
    t = st.t.ppf((1 + level) / 2, n - 1) * math.sqrt(1 + 1 / n)

    def judge(v: np.ndarray) -> np.ndarray:
        mean, sd = _mean_sd(v)
        half = t * sd
        inside = (mean - half <= published) & (published <= mean + half)
        return np.where(inside, np.where(half > max_half_width, _I, _R), _N)

    verdict = Verdict(judge(x[None])[0])
    lo, hi = prediction_interval(x, level)
    return _make(
        fields,
        published=published,
        measured=x,
        statistic=f"reproduced if the published value lies in the {level:.0%} prediction "
        f"interval of one of our runs (inconclusive if it does only because that interval's "
        f"half width exceeds {max_half_width:g}), not reproduced if it lies outside",
        verdict=verdict,
        interval=(lo, hi),
        interval_kind=f"{level:.0%} prediction interval of one run",
        estimate=float(x.mean()),
        estimator="mean",
        flip=flip_probability(judge, x, verdict),
    )


def single_run_readings_claim(
    published: float,
    readings: dict[str, Sequence[float]],
    *,
    max_half_width: float,
    level: float = 0.95,
    **fields: Any,
) -> Claim:
    """``single_run_claim`` when the source does not say which of several readings of a run it
    quotes (network2 prints every epoch; the book does not say whether it quotes the last or
    the best): each reading (name -> one value per seed) is judged as ``single_run_claim``
    judges it; REPRODUCED when some reading reproduces, NOT_REPRODUCED when every reading
    excludes the number, INCONCLUSIVE otherwise. The first reading is the one reported as the
    estimate and interval; every reading's interval is in details. The flip estimate draws each
    reading from its own normal fit (independently: the readings' correlation is ignored)."""
    names = list(readings)
    xs = [np.asarray(readings[k], dtype=float) for k in names]
    n = xs[0].size
    t = st.t.ppf((1 + level) / 2, n - 1) * math.sqrt(1 + 1 / n)

    def one(v: np.ndarray) -> np.ndarray:
        mean, sd = _mean_sd(v)
        half = t * sd
        inside = (mean - half <= published) & (published <= mean + half)
        return np.where(inside, np.where(half > max_half_width, _I, _R), _N)

    def judge_all(vs: list[np.ndarray]) -> np.ndarray:
        each = np.stack([one(v) for v in vs])
        return np.where((each == _R).any(0), _R, np.where((each == _N).all(0), _N, _I))

    verdict = Verdict(judge_all([x[None] for x in xs])[0])
    rng = np.random.default_rng(_FLIP_SEED)
    flip = float(np.mean(judge_all([_draws(x, "normal", rng) for x in xs]) != verdict))
    details = dict(fields.pop("details", {}))
    details["readings"] = {
        k: {
            "values": x.tolist(),
            "prediction_interval": prediction_interval(x, level),
            "verdict": str(Verdict(one(x[None])[0])),
        }
        for k, x in zip(names, xs, strict=True)
    }
    return _make(
        fields,
        published=published,
        measured=xs[0],
        statistic=f"per reading ({', '.join(names)}): the published value in the {level:.0%} "
        f"prediction interval of one of our runs, narrower than ±{max_half_width:g}; "
        "reproduced if some reading holds it, not reproduced if every reading excludes it, "
        "else inconclusive",
        verdict=verdict,
        interval=prediction_interval(xs[0], level),
        interval_kind=f"{level:.0%} prediction interval of one run ({names[0]}; the others in "
        "details)",
        estimate=float(xs[0].mean()),
        estimator=f"mean ({names[0]})",
        flip=flip,
        details=details,
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
    ``alpha``; NOT_REPRODUCED when the reverse is significant; INCONCLUSIVE otherwise, so a noisy
    ordering is never asserted.
    """
    a, b = np.asarray(higher, float), np.asarray(lower, float)
    rng = np.random.default_rng(_FLIP_SEED)
    details = dict(fields.pop("details", {}))
    if paired:
        if a.shape != b.shape:
            raise ValueError(f"paired runs need equal lengths, got {a.size} and {b.size}.")
        d = a - b

        def judge(v: np.ndarray) -> np.ndarray:
            right, wrong = _p_greater(v), _p_greater(-v)
            return np.where(right < alpha, _R, np.where(wrong < alpha, _N, _I))

        verdict = Verdict(judge(d[None])[0])
        lo, hi = (x[0] for x in _t_interval(d[None], 1 - 2 * alpha))
        details.update(
            higher=a.tolist(),
            lower=b.tolist(),
            p_ordering=float(_p_greater(d[None])[0]),
            p_reverse=float(_p_greater(-d[None])[0]),
            alpha=alpha,
        )
        return _make(
            fields,
            measured=d,
            statistic=f"one-sided paired t-test at alpha={alpha}: reproduced if higher > lower "
            "is significant, not reproduced if the reverse is, else inconclusive",
            verdict=verdict,
            interval=(lo, hi),
            interval_kind=f"{1 - 2 * alpha:.0%} CI of the mean per-seed difference",
            estimate=float(d.mean()),
            estimator="mean difference",
            flip=float(np.mean(judge(_draws(d, "normal", rng)) != verdict)),
            details=details,
        )

    def welch_p(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Row-wise one-sided Welch p-value for mean(x) > mean(y)."""
        (mx, sx), (my, sy) = _mean_sd(x), _mean_sd(y)
        vx, vy = sx**2 / x.shape[-1], sy**2 / y.shape[-1]
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (mx - my) / np.sqrt(vx + vy)
            df = (vx + vy) ** 2 / (vx**2 / (x.shape[-1] - 1) + vy**2 / (y.shape[-1] - 1))
        p = st.t.sf(t, df)
        return np.where(vx + vy == 0, np.where(mx > my, 0.0, 1.0), p)

    def judge_two(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        right, wrong = welch_p(x, y), welch_p(y, x)
        return np.where(right < alpha, _R, np.where(wrong < alpha, _N, _I))

    verdict = Verdict(judge_two(a[None], b[None])[0])
    ci = st.ttest_ind(a, b, equal_var=False).confidence_interval(1 - 2 * alpha)
    details.update(
        higher=a.tolist(),
        lower=b.tolist(),
        p_ordering=float(welch_p(a[None], b[None])[0]),
        p_reverse=float(welch_p(b[None], a[None])[0]),
        alpha=alpha,
    )
    flip = judge_two(_draws(a, "normal", rng), _draws(b, "normal", rng)) != verdict
    return _make(
        fields,
        measured=a,
        statistic=f"one-sided Welch t-test at alpha={alpha}: reproduced if higher > lower is "
        "significant, not reproduced if the reverse is, else inconclusive; measured: the "
        "higher arm's runs",
        verdict=verdict,
        interval=(float(ci.low), float(ci.high)),
        interval_kind=f"{1 - 2 * alpha:.0%} Welch CI of the difference of means",
        estimate=float(a.mean() - b.mean()),
        estimator="difference of means",
        flip=float(np.mean(flip)),
        details=details,
    )


def equivalence_claim(
    measured: Sequence[float],
    *,
    target: float,
    margin: float,
    alpha: float = 0.05,
    **fields: Any,
) -> Claim:
    """ "The mean of ``measured`` is ``target`` within ``margin``": two one-sided t-tests (TOST).

    REPRODUCED when the ``1 - 2 alpha`` confidence interval of the mean lies inside
    ``target ± margin`` (equivalence at level ``alpha``); NOT_REPRODUCED when it lies wholly
    outside (a difference beyond the margin is significant); INCONCLUSIVE otherwise. For a
    paired comparison pass the per-seed differences and target 0; for "about k times" pass
    logarithms. The margin is declared in the card.
    """
    x = np.asarray(measured, dtype=float)
    lo_bound, hi_bound = target - margin, target + margin

    def judge(v: np.ndarray) -> np.ndarray:
        lo, hi = _t_interval(v, 1 - 2 * alpha)
        inside = (lo_bound <= lo) & (hi <= hi_bound)
        outside = (hi < lo_bound) | (lo > hi_bound)
        return np.where(inside, _R, np.where(outside, _N, _I))

    verdict = Verdict(judge(x[None])[0])
    lo, hi = (v[0] for v in _t_interval(x[None], 1 - 2 * alpha))
    details = dict(fields.pop("details", {}))
    details.update(target=target, margin=margin, alpha=alpha, equivalence=(lo_bound, hi_bound))
    return _make(
        fields,
        measured=x,
        statistic=f"TOST at alpha={alpha}: reproduced if the {1 - 2 * alpha:.0%} CI of the mean "
        f"lies inside {target:g} ± {margin:g}, not reproduced if it lies wholly outside, else "
        "inconclusive",
        verdict=verdict,
        interval=(float(lo), float(hi)),
        interval_kind=f"{1 - 2 * alpha:.0%} CI of the mean (TOST, margin ±{margin:g})",
        estimate=float(x.mean()),
        estimator="mean",
        flip=flip_probability(judge, x, verdict),
        details=details,
    )


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
    lies below, INCONCLUSIVE when it straddles it. ``measured`` defaults to ``[proportion]``.
    """

    def judge(k: int) -> Verdict:
        lo, hi = proportion_interval(k, trials, level)
        return _R if lo > above else (_N if hi < above else _I)

    p = successes / trials
    verdict = Verdict(judge(successes))
    counts = np.random.default_rng(_FLIP_SEED).binomial(trials, p, size=FLIP_DRAWS)
    flips = {int(k): judge(int(k)) != verdict for k in np.unique(counts)}
    details = {**fields.pop("details", {}), "successes": successes, "trials": trials}
    return _make(
        fields,
        measured=[p] if measured is None else measured,
        statistic=f"proportion of {trials} trials; reproduced if its {level:.2%} Wilson "
        f"interval lies above {above:g}, not reproduced if below, else inconclusive",
        verdict=verdict,
        interval=proportion_interval(successes, trials, level),
        interval_kind=f"{level:.2%} Wilson interval",
        estimate=p,
        estimator="proportion",
        flip=float(np.mean([flips[int(k)] for k in counts])),
        details=details,
    )


def every_seed_claim(
    measured: Sequence[float],
    *,
    low: float = -math.inf,
    high: float = math.inf,
    **fields: Any,
) -> Claim:
    """REPRODUCED when every seed's value lies in [``low``, ``high``].

    For properties whose per-seed margin is far from the bound (more seeds make an every-seed
    criterion harder to meet, so the flip estimate matters): the chance that n fresh seeds from
    a normal fit to ours do not all pass (or, after a failure, all pass); from the count of
    passing seeds when the values do not spread (``_every_seed_flip``). The estimate is the
    seed nearest a bound.
    """
    x = np.asarray(measured, dtype=float)
    if x.size == 0:
        raise ValueError("every_seed_claim needs at least one seed.")

    def judge(v: np.ndarray) -> np.ndarray:
        return np.where(np.all((v >= low) & (v <= high), axis=-1), _R, _N)

    verdict = Verdict(judge(x[None])[0])
    worst = x[np.argmin(np.minimum(x - low, high - x))]
    details = {**fields.pop("details", {}), "holds_per_seed": ((x >= low) & (x <= high)).tolist()}
    return _make(
        fields,
        measured=x,
        statistic=f"reproduced if every seed lies in [{low:g}, {high:g}]",
        verdict=verdict,
        interval=(low, high),
        interval_kind="bound every seed must meet",
        estimate=float(worst),
        estimator="seed nearest the bound",
        flip=_every_seed_flip(judge, x, verdict),
        details=details,
    )


def _every_seed_flip(judge: Judge, x: np.ndarray, verdict: Verdict) -> float | None:
    """The flip estimate of an every-seed claim: the share of fresh seed sets, drawn from a
    normal fit to the seeds' values, that ``judge`` gives another verdict. None when the values
    do not spread (or there is one seed): a normal fit would call the verdict certain, and a
    count of passing seeds cannot say more than its own size (with k = 0 failures in n, any
    prior gives a flip near 0.3 whatever n, which is about the estimator, not the claim), so a
    claim file must measure a continuous per-seed margin instead of a share capped at 1."""
    if x.size < 2 or np.ptp(x) == 0:
        return None
    return flip_probability(judge, x, verdict)


def not_testable(claim: Claim, why: str) -> Claim:
    """``claim`` with the verdict NOT_TESTABLE: its declared precondition failed at this
    budget (``why`` says which, in measured terms). The statistic and interval stay as measured,
    for the record; no flip is estimated, since no verdict on the claim was reached."""
    out = Claim(**{**claim.__dict__, "verdict": Verdict.NOT_TESTABLE, "flip": None})
    out.details = {**claim.details, "why": why, "verdict_if_testable": str(claim.verdict)}
    return out


def exact_claim(holds: bool, measured: Sequence[float], **fields: Any) -> Claim:
    """An exact check (a count, a truth table, an identity to float rounding): IDENTITY when
    ``holds``, NOT_REPRODUCED otherwise. ``measured`` is what was compared, ``holds`` the whole
    criterion (every part of it, controls included). It cannot flip: it is exact or seeded."""
    fields.setdefault("interval_kind", "exact")
    return _make(
        fields,
        measured=measured,
        verdict=Verdict.IDENTITY if holds else Verdict.NOT_REPRODUCED,
        flip=0.0,
    )
