"""The claim table printed at the end of `pytest reproductions`, its JSON twin, and the report.

``python -m nnsanity.repro.report --markdown RESULTS.json [--figures DIR] [-o REPORT.md]``
renders a JSON claim report (``--nnsanity-report``) as the Markdown report a student can read:
provenance, the verdict counts with identities apart, every claim with the statistic its verdict
used, what does not reproduce, criteria changed after seeing data, fragile verdicts, per-claim
wall time and the figures. ``--compare OTHER.json`` lists the claims whose verdicts differ
between two reports (two seeds, two budgets, two machines).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from nnsanity.repro.stats import summarize

_COLUMNS = (
    "claim",
    "fidelity",
    "published",
    "verdict used",
    "n",
    "interval",
    "interval kind",
    "verdict",
    "flip",
)
_ORDER = ("reproduced", "not reproduced", "inconclusive", "not testable at this budget", "identity")
# The order a reader of the notes meets the claims (shared/notes: the chapter's introduction,
# the vanishing gradient, its causes, the papers, then Karpathy's recipe step by step); a claim
# sorts by the first prefix its id starts with, then by id.
NOTES_ORDER = (
    "N8.",  # why not one layer; deep circuits
    "N9.",  # "we could still classify stuff to 98% accuracy"
    "N2.opposite",  # different layers learn at vastly different speeds, both ways
    "N1.accuracy",
    "N1.two",
    "N1.third",
    "N1.four",
    "N1.deep",
    "N2.",
    "N3.",
    "N1.early",  # "is this really a problem?"
    "N1.random",
    "N4.",
    "N5.",
    "N6.",
    "N7.",
    "G1.",
    "S1.",
    "K11.",  # training fails silently
    "K12.",  # become one with the data
    "K4.",  # skeleton: fixed seed
    "K5.",  # dumb baselines
    "K2.",
    "K3.",  # overfit
    "K6.",
    "K1.",  # Adam 3e-4
    "K13.",  # learning-rate decay defaults
    "K10.",  # regularise: more data, smaller model, weight decay
    "K9.",  # smaller batch (batch norm)
    "K8.",  # tune: random search
    "K7.",  # squeeze out the juice: ensembles
    "K14.",  # train longer
)


def notes_order(claims: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``claims`` in the notes' order (``NOTES_ORDER``), ids unknown to it last."""

    def key(c: dict[str, Any]) -> tuple[int, str]:
        cid = c["id"]
        rank = next((i for i, p in enumerate(NOTES_ORDER) if cid.startswith(p)), len(NOTES_ORDER))
        return rank, cid

    return sorted(claims, key=key)


def portable_command(args: Sequence[str]) -> str:
    """The command line with every path argument cut to its last component, so that a report
    never records a folder of the machine it ran on (``--nnsanity-report=/home/a/x.json`` is
    written ``--nnsanity-report=x.json``)."""

    def cut(value: str) -> str:
        return os.path.basename(value.rstrip("/")) if "/" in value else value

    out = []
    for arg in args:
        if arg.startswith("-") and "=" in arg:
            name, value = arg.split("=", 1)
            out.append(f"{name}={cut(value)}")
        else:
            out.append(arg if arg.startswith("-") else cut(arg) if os.path.isabs(arg) else arg)
    return " ".join(out)


FLIP_TARGET = 0.05  # the flip probability a verdict should stay under (issue 10)
_PACKAGES = ("nnsanity", "torch", "numpy", "scipy", "torchvision", "matplotlib", "pytest")


def _num(x: float | None) -> str:
    """Four significant digits, but whole numbers and large values in full (3906.25, 65812)."""
    if x is None or not math.isfinite(x):  # JSON writes inf as null
        return "inf" if x is None else str(x)
    return f"{x:.6g}" if x == int(x) or abs(x) >= 1000 else f"{x:.4g}"


def _is_share(c: dict[str, Any]) -> bool:
    """A proportion (a share of trials), printed as a percent whatever the claim's unit."""
    return c.get("estimator") == "proportion"


def _published(c: dict[str, Any]) -> str:
    p = c.get("published")
    if p is None:
        return "-"
    if isinstance(p, (int, float)):
        return _num(float(p)) + c.get("unit", "")
    return str(p)


def _measured(c: dict[str, Any]) -> str:
    values, unit = c.get("measured") or [], c.get("unit", "")
    if not values:
        return "-"
    if len(values) == 1:
        return f"{_num(values[0])}{unit}"
    s = summarize(values)
    return f"{_num(s.mean)} ± {'0' if s.sd == 0 else f'{s.sd:.2g}'}{unit} (n={s.n})"


def _used(c: dict[str, Any]) -> str:
    """The statistic the verdict was judged on, named: 'median 118.7', 'proportion 0.6'."""
    if c.get("estimate") is None:
        return "-"
    if _is_share(c):
        return f"proportion {100 * c['estimate']:.4g}%"
    return f"{c.get('estimator', '')} {_num(c['estimate'])}{c.get('unit', '')}".strip()


def _interval(c: dict[str, Any]) -> str:
    lo_hi = c.get("interval")
    if not lo_hi:
        return "-"
    lo, hi = lo_hi  # an infinite end was written as null: its side gives its sign
    if _is_share(c) and lo is not None and hi is not None:
        return f"[{100 * lo:.4g}%, {100 * hi:.4g}%]"
    return f"[{'-inf' if lo is None else _num(lo)}, {_num(hi)}]"


def _flip(c: dict[str, Any]) -> str:
    flip = c.get("flip")
    return "-" if flip is None else f"{flip:.2f}"


def _row(c: dict[str, Any]) -> tuple[str, ...]:
    return (
        c["id"],
        c.get("fidelity", "faithful"),
        _published(c),
        _used(c),
        str(len(c.get("measured") or [])),
        _interval(c),
        c.get("interval_kind", "") or "-",
        c["verdict"],
        _flip(c),
    )


def counts(claims: list[dict[str, Any]]) -> str:
    """'40 reproduced, 6 not reproduced, 2 inconclusive, 3 not testable at this budget;
    2 of our own predictions; 34 identities', in a fixed order."""
    ours = [c for c in claims if c.get("origin") == "ours" and c["verdict"] != "identity"]
    theirs = [c for c in claims if c not in ours]
    n = {v: sum(c["verdict"] == v for c in theirs) for v in _ORDER}
    empirical = ", ".join(f"{n[v]} {v}" for v in _ORDER[:4] if n[v] or v == "reproduced")
    mine = ""
    if ours:
        held = sum(c["verdict"] == "reproduced" for c in ours)
        mine = f"; {len(ours)} of our own predictions ({held} held), counted apart"
    return (
        f"{empirical}{mine}; {n['identity']} identities (exact checks, not counted as "
        "reproductions)"
    )


def table(claims: list[dict[str, Any]]) -> list[str]:
    """Fixed-width lines: one per claim, in the notes' order, then the verdict counts."""
    rows = [_COLUMNS] + [_row(c) for c in notes_order(claims)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(counts(claims))
    return lines


# -- provenance --------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        info["cpu"] = names[0] if names else None
    except OSError:
        pass
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["cuda_device"] = torch.cuda.get_device_name()
    except ImportError:
        pass
    return info


def packages() -> dict[str, str | None]:
    """Installed versions of the packages a verdict depends on."""
    return {name: _version(name) for name in _PACKAGES}


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def git(root: Path) -> dict[str, Any]:
    """The commit the run ran, and whether the work tree differed from it."""

    def run(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip()

    commit = run("rev-parse", "HEAD")
    status = run("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def _strict(x: Any) -> Any:
    """JSON has no NaN or Infinity: write them as null."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _strict(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_strict(v) for v in x]
    return x


def write_json(
    path: Path, claims: list[dict[str, Any]], meta: dict[str, Any], root: Path | None = None
) -> Path:
    """The claims with the run's provenance: git commit, package versions, machine, seeds and
    budget (in ``meta``), wall time per claim (in each claim) and in all."""
    doc = {
        "datetime": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git": git(root or Path.cwd()),
        "packages": packages(),
        "machine": machine(),
        **meta,
        "counts": counts(claims),
        "claims": notes_order(claims),
    }
    if isinstance(doc.get("command"), str):  # never a folder of this machine
        doc["command"] = portable_command(doc["command"].split())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_strict(doc), indent=2, allow_nan=False) + "\n")
    return path


# -- the Markdown report -------------------------------------------------------------------------
FIGURES = {  # file name -> caption, in the order the report shows them
    "N1_accuracy_by_depth.png": "N1: validation accuracy per epoch for 1-4 hidden layers "
    "(line: mean over seeds; band: min-max over seeds); left every epoch, the deep nets' slow "
    "first epoch included; right from epoch 5 with the book's single runs dotted.",
    "N2_top_six_neurons.png": "N2: the book's signed bars, dC/db of the top six neurons of each "
    "hidden layer of [784,30,30,10] at init (first seed), with the other inits as dots.",
    "N2_initial_gradients.png": "N2: per-layer ||dC/db|| at init over inits (bars: median, "
    "whiskers: 5-95%), published values as diamonds.",
    "N3_learning_speed_2_hidden.png": "N3: speed of learning per hidden layer, 2 hidden layers "
    "(log axis; line: geometric mean over seeds; band: min-max; diamonds: the book's values at "
    "epoch 0).",
    "N3_learning_speed_3_hidden.png": "N3: the same with 3 hidden layers.",
    "N3_learning_speed_4_hidden.png": "N3: the same with 4 hidden layers.",
    "N6_width_eq123.png": "N6: eq. (123)'s width of the unstable set against |w|.",
    "G1_sigmoid_saturation.png": "G1: mean ± sd of each sigmoid hidden layer's activation "
    "during training (Glorot & Bengio Fig. 2 layout).",
    "G1_backprop_gradient_variance.png": "G1: variance of the back-propagated gradient per "
    "layer at init, standard vs normalised init (Fig. 7's message).",
    "S1_autoencoder_training.png": "S1: autoencoder training error per arm (line: mean over "
    "seeds; band: min-max), and the mean-image plateau.",
}


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _reason(c: dict[str, Any]) -> str:
    """Why a claim did not reproduce (or could not be tested): its measured reason, else the
    statistic it failed, so that no such row goes without one."""
    why = (c.get("details") or {}).get("why")
    if why:
        return str(why)
    return f"measured {_used(c)} against {c.get('interval_kind', '')} {_interval(c)}: " + str(
        c.get("statistic", "")
    )


def _header(doc: dict[str, Any], claims: list[dict[str, Any]]) -> list[str]:
    """Provenance, the counts and the verdicts' legend."""
    git_info = doc.get("git") or {}
    commit = git_info.get("commit") or "unknown"
    dirty = " (with uncommitted changes)" if git_info.get("dirty") else ""
    pk = doc.get("packages", {})
    m = doc.get("machine", {})
    total = doc.get("wall_seconds")
    return [
        "# Reproductions: the report",
        "",
        "Generated by `python -m nnsanity.repro.report --markdown` from the JSON claim report of "
        "one run; do not edit by hand.",
        "",
        f"- **Commit:** `{commit}`{dirty}",
        f"- **Command:** `{doc.get('command', '')}` (budget `{doc.get('budget')}`, "
        f"`--nnsanity-seed={doc.get('seed')}`, device `{doc.get('device')}`)",
        f"- **When:** {doc.get('datetime')}; **wall time:** "
        + (f"{total / 60:.1f} min" if total else "unknown"),
        f"- **Machine:** {m.get('cpu') or m.get('processor')}, {m.get('cpu_count')} CPU cores, "
        f"{m.get('platform')}; Python {m.get('python')}"
        + (f"; GPU {m['cuda_device']}" if m.get("cuda_device") else ""),
        "- **Packages:** " + ", ".join(f"{k} {v}" for k, v in pk.items() if v),
        "",
        f"**Verdicts:** {counts(claims)}.",
        "",
        "Verdicts: *reproduced* (the declared criterion holds), *not reproduced* (it fails), "
        "*inconclusive* (the interval is too wide to decide), *not testable at this budget* (a "
        "precondition the card declares fails: the run cannot test the claim, which is not "
        "evidence against it), *identity* (an exact check of a definition, a formula or our own "
        "code, reported apart). Claims whose source is our own prediction are counted apart. "
        "*Flip* is the estimated probability that a fresh set of seeds gives another verdict (a "
        "normal fit to the measurements, redrawn 2,000 times; '-' where none is estimated); "
        f"the target is below {FLIP_TARGET:.0%}. *Fidelity*: faithful (the source's setting) "
        "or scaled (a smaller setting, see the claim card). Seconds: the test's wall time; a "
        "measurement shared by several claims is charged to the first. Rows follow the notes' "
        "order.",
        "",
    ]


def markdown(
    doc: dict[str, Any],
    figures: Path | None = None,
    relative_to: Path | None = None,
    other: dict[str, Any] | None = None,
    reasons: dict[str, str] | None = None,
):
    """The report as Markdown lines, from a JSON claim report; with ``other`` (a second
    report, e.g. the exploratory seed set) a section lists every verdict that differs, with the
    reason from ``reasons`` (claim id -> text) where one is given."""
    claims = notes_order(doc["claims"])
    lines = _header(doc, claims)
    empirical = [c for c in claims if c["verdict"] != "identity"]
    identities = [c for c in claims if c["verdict"] == "identity"]
    header = (
        "| claim | source | statement | published | measured (mean ± sd, n) | verdict used "
        "| interval | interval kind | verdict | fidelity | flip | seconds |"
    )
    rule = "|" + "---|" * 12

    def rows(cs: list[dict[str, Any]]) -> list[str]:
        out = [header, rule]
        for c in cs:
            cells = [
                f"`{c['id']}`",
                c.get("source", ""),
                c.get("statement", ""),
                _published(c),
                _measured(c),
                _used(c),
                _interval(c),
                c.get("interval_kind", "") or "-",
                f"**{c['verdict']}**",
                c.get("fidelity", "faithful"),
                _flip(c),
                f"{c.get('seconds', 0):.1f}",
            ]
            out.append("| " + " | ".join(_md_cell(x) for x in cells) + " |")
        return out

    def listed(cs: list[dict[str, Any]]) -> list[str]:
        return [
            f"- `{c['id']}` ({c['verdict']}): {c.get('statement', '')}. Published "
            f"{_published(c)}; {_used(c)}, {c.get('interval_kind', '')} {_interval(c)}. "
            f"**Why:** {_reason(c)}"
            for c in cs
        ]

    failing = [c for c in empirical if c["verdict"] in ("not reproduced", "inconclusive")]
    lines += ["## What does not reproduce, and why", ""]
    lines += listed(failing) or ["Every testable empirical claim reproduced."]
    untestable = [c for c in empirical if c["verdict"] == "not testable at this budget"]
    lines += ["", "## Not testable at this budget, and why", ""]
    lines += listed(untestable) or ["None."]
    ours = [c for c in empirical if c.get("origin") == "ours"]
    lines += ["", "## Our own predictions (counted apart from the sources' claims)", ""]
    lines += listed(ours) or ["None."]
    if other is not None:
        lines += ["", f"## Verdicts that differ from the run at seed {other.get('seed')}", ""]
        lines += _differences(doc, other, reasons or {})
    lines += ["", "## Criteria changed after seeing data", ""]
    changed = [c for c in claims if c.get("changed")]
    lines += [f"- `{c['id']}`: {c['changed']}" for c in changed]
    lines += ["" if changed else "None.", ""]
    fragile = [c for c in claims if (c.get("flip") or 0) >= FLIP_TARGET]
    lines += [f"## Verdicts a fresh seed set could flip (flip >= {FLIP_TARGET:.0%})", ""]
    lines += [
        f"- `{c['id']}` ({c['verdict']}): flip {c['flip']:.2f}, {_used(c)}, "
        f"{c.get('interval_kind', '')} {_interval(c)}"
        for c in sorted(fragile, key=lambda c: -c["flip"])
    ]
    lines += ["" if fragile else "None.", ""]
    lines += ["## Empirical claims", "", *rows(empirical), ""]
    lines += ["## Identities (exact checks)", "", *rows(identities), ""]
    by_file: dict[str, float] = {}
    for c in claims:
        f = c.get("test", "").split("::")[0]
        by_file[f] = by_file.get(f, 0.0) + c.get("seconds", 0.0)
    lines += ["## Wall time per claim file", "", "| file | seconds |", "|---|---|"]
    lines += [f"| `{f}` | {s:.0f} |" for f, s in sorted(by_file.items(), key=lambda kv: -kv[1])]
    lines.append("")
    if figures is not None and figures.is_dir():
        lines += ["## Figures", ""]
        present = {p.name for p in figures.glob("*.png")}
        for name in [*FIGURES, *sorted(present - set(FIGURES))]:
            if name in present:
                path = figures / name
                shown = os.path.relpath(path, relative_to) if relative_to else str(path)
                lines += [f"![{name}]({shown})", "", FIGURES.get(name, name), ""]
    return lines


def _differences(doc: dict[str, Any], other: dict[str, Any], reasons: dict[str, str]):
    a = {c["id"]: c for c in doc["claims"]}
    b = {c["id"]: c for c in other["claims"]}
    out = []
    for c in notes_order([c for c in doc["claims"] if c["id"] in b]):
        o = b[c["id"]]
        if c["verdict"] != o["verdict"]:
            reason = reasons.get(c["id"], "no reason recorded")
            out.append(
                f"- `{c['id']}`: **{c['verdict']}** here ({_used(c)}, flip {_flip(c)}) vs "
                f"**{o['verdict']}** at seed {other.get('seed')} ({_used(o)}, flip {_flip(o)}). "
                f"{reason}"
            )
    only = sorted(a.keys() ^ b.keys())
    if only:
        out.append("- In one run only: " + ", ".join(f"`{x}`" for x in only))
    same = sum(a[k]["verdict"] == b[k]["verdict"] for k in a.keys() & b.keys())
    out.append(f"- {same} of {len(a.keys() & b.keys())} shared claims have the same verdict.")
    return out


def compare(first: dict[str, Any], second: dict[str, Any]) -> list[str]:
    """One line per claim whose verdict differs between two reports (e.g. two seeds), with the
    flip probabilities each run estimated for it; claims in only one report are named too."""
    a = {c["id"]: c for c in first["claims"]}
    b = {c["id"]: c for c in second["claims"]}
    lines = []
    for cid in sorted(a.keys() | b.keys()):
        if cid not in a or cid not in b:
            lines.append(f"{cid}: only in the {'first' if cid in a else 'second'} report")
        elif a[cid]["verdict"] != b[cid]["verdict"]:
            lines.append(
                f"{cid}: {a[cid]['verdict']} (flip {_flip(a[cid])}) vs {b[cid]['verdict']} "
                f"(flip {_flip(b[cid])})"
            )
    same = len(a.keys() & b.keys()) - sum(" vs " in line for line in lines)
    lines.append(f"{same} of {len(a.keys() & b.keys())} shared claims have the same verdict")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render a JSON claim report as Markdown.")
    parser.add_argument("json", type=Path, help="a report written by --nnsanity-report")
    parser.add_argument("--markdown", action="store_true", help="print Markdown (the default)")
    parser.add_argument("--figures", type=Path, default=None, help="folder of the run's PNGs")
    parser.add_argument("-o", "--output", type=Path, default=None, help="write here (default: -)")
    parser.add_argument(
        "--compare",
        type=Path,
        default=None,
        help="print the verdicts that differ from this report (with --markdown: a section)",
    )
    parser.add_argument(
        "--reasons",
        type=Path,
        default=None,
        help="JSON {claim id: reason} for the differences in --markdown --compare",
    )
    args = parser.parse_args(argv)
    doc = json.loads(args.json.read_text())
    other = json.loads(args.compare.read_text()) if args.compare else None
    if other is not None and not args.markdown:
        print("\n".join(compare(doc, other)))
        return 0
    reasons = json.loads(args.reasons.read_text()) if args.reasons else None
    where = args.output.parent if args.output else Path.cwd()
    text = "\n".join(markdown(doc, args.figures, where.resolve(), other, reasons)) + "\n"
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
