"""The claim table printed at the end of `pytest reproductions`, and its JSON twin."""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
from pathlib import Path
from typing import Any

from nnsanity.repro.stats import summarize

_COLUMNS = ("claim", "published", "measured (mean ± sd, n)", "interval", "verdict")


def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.6g}"
    return str(x)


def _num(x: float | None) -> str:
    """Four significant digits, but whole numbers and large values in full (3906.25, 65812)."""
    if x is None or not math.isfinite(x):  # JSON writes inf as null
        return "inf" if x is None else str(x)
    return f"{x:.6g}" if x == int(x) or abs(x) >= 1000 else f"{x:.4g}"


def _row(c: dict[str, Any]) -> tuple[str, ...]:
    unit = c.get("unit", "")
    values = c.get("measured") or []
    if not values:
        measured = "-"
    elif len(values) == 1:
        measured = f"{values[0]:.6g}{unit}"
    else:
        s = summarize(values)
        spread = "0" if s.sd == 0 else f"{s.sd:.2g}"
        mean = f"{s.mean:.6g}" if s.sd == 0 else f"{s.mean:.4g}"
        measured = f"{mean} ± {spread}{unit} (n={s.n})"
    lo_hi = c.get("interval")
    interval = f"[{_num(lo_hi[0])}, {_num(lo_hi[1])}]" if lo_hi else "-"
    published = _fmt(c.get("published"))
    if unit and published != "-" and isinstance(c.get("published"), (int, float)):
        published += unit
    return (c["id"], published, measured, interval, c["verdict"])


def table(claims: list[dict[str, Any]]) -> list[str]:
    """Fixed-width lines: one per claim, sorted by id, then the verdict counts."""
    rows = [_COLUMNS] + [_row(c) for c in sorted(claims, key=lambda c: c["id"])]
    widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    counts: dict[str, int] = {}
    for c in claims:
        counts[c["verdict"]] = counts.get(c["verdict"], 0) + 1
    lines.append(", ".join(f"{n} {v}" for v, n in sorted(counts.items())))
    return lines


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["cuda_device"] = torch.cuda.get_device_name()
    except ImportError:
        pass
    return info


def _strict(x: Any) -> Any:
    """JSON has no NaN or Infinity: write them as null."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _strict(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_strict(v) for v in x]
    return x


def write_json(path: Path, claims: list[dict[str, Any]], meta: dict[str, Any]) -> Path:
    from nnsanity._version import __version__

    doc = {
        "nnsanity": __version__,
        "datetime": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        **meta,
        "claims": sorted(claims, key=lambda c: c["id"]),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_strict(doc), indent=2, allow_nan=False) + "\n")
    return path
