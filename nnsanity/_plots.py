"""The profiles a check measured, as PNG figures (``--nnsanity-plots``; needs matplotlib).

A result's profile is read from its ``to_dict()`` by shape, so a new check with the same
fields gets its figure: ``groups`` of repeated layers, each with ``layers`` and one value per
layer (the error signal's RMS by layer, the activations' RMS by depth), and ``trace``, the loss
at each step (the overfit run). matplotlib is imported only when a figure is drawn, through its
object API (no pyplot, so no backend or global state changes in the user's process).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

# a group's per-layer values, by the field's name: the axis label
_PER_LAYER = {"error_rms": "RMS of ∂loss/∂(layer output)", "rms": "RMS of the layer's output"}


@dataclasses.dataclass(frozen=True)
class Profile:
    """One figure: a line per series, on a log scale for per-layer RMS values."""

    title: str
    xlabel: str
    ylabel: str
    series: tuple[tuple[str, tuple[float, ...]], ...]
    log: bool
    bound: float | None = None  # a horizontal line: the bound the values were judged by


def _numbers(values: Any) -> tuple[float, ...] | None:
    if isinstance(values, Sequence) and values and all(isinstance(v, (int, float)) for v in values):
        return tuple(float(v) for v in values)
    return None


def profiles(check: str, result: Mapping[str, Any]) -> list[Profile]:
    """The profiles in one result's ``to_dict()`` (none for most checks)."""
    found = []
    groups = result.get("groups")
    if isinstance(groups, Sequence):
        for field, label in _PER_LAYER.items():
            series = tuple(
                (str(g.get("pattern", "")), values)
                for g in groups
                if isinstance(g, Mapping)
                and (values := _numbers(g.get(field))) is not None
                and len(values) == len(g.get("layers", ()))
            )
            if series:
                xlabel = "layer, in forward order (input first)"
                found.append(Profile(f"{check}: {label} by layer", xlabel, label, series, True))
    trace = _numbers(result.get("trace"))
    if trace is not None:
        series = (("loss", trace),)
        target = result.get("target")
        bound = float(target) if isinstance(target, (int, float)) else None
        title = f"{check}: the loss at each step"
        found.append(Profile(title, "step", "loss", series, False, bound))
    return found


def _file_name(*parts: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", ".".join(parts)).strip("_") + ".png"


def save(results: Iterable[tuple[str, str, Mapping[str, Any]]], folder: Path) -> list[Path]:
    """Draw the profiles of ``(suite, check, result dict)`` into ``folder``; the files saved."""
    from matplotlib.figure import Figure

    folder.mkdir(parents=True, exist_ok=True)
    saved = []
    for suite, check, result in results:
        for i, p in enumerate(profiles(check, result)):
            figure = Figure(figsize=(6.4, 4.0), layout="constrained")
            ax = figure.subplots()
            for name, values in p.series:
                ax.plot(
                    range(len(values)), values, marker="o" if len(values) < 40 else "", label=name
                )
            if p.bound is not None:
                ax.axhline(p.bound, color="grey", linestyle="--", label="bound")
            if p.log:
                ax.set_yscale("log")
            ax.set(title=p.title, xlabel=p.xlabel, ylabel=p.ylabel)
            if len(p.series) > 1 or p.bound is not None:
                ax.legend(fontsize="small")
            path = folder / _file_name(suite, check, *([str(i)] if i else []))
            figure.savefig(path, dpi=100)
            saved.append(path)
    return saved
