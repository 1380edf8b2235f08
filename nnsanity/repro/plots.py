"""The figures a reader of ch. 5 expects, as PNG files (matplotlib, the ``repro`` extra)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError(
            "nnsanity.repro.plots needs matplotlib: pip install 'nnsanity[repro]'"
        ) from e
    matplotlib.use("Agg")  # files only; never open a window
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    fig.clf()
    return path


def accuracy_by_depth(
    accuracy: Mapping[int, torch.Tensor], published: Mapping[int, float], path: Path
) -> Path:
    """Validation accuracy per epoch, one line per depth: seed mean with a min-max band."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for depth, acc in accuracy.items():  # acc: (seeds, epochs) in %
        acc = acc.double().cpu()
        epochs = torch.arange(1, acc.shape[1] + 1).numpy()
        (line,) = ax.plot(epochs, acc.mean(0).numpy(), label=f"{depth} hidden (n={acc.shape[0]})")
        ax.fill_between(
            epochs,
            acc.min(0).values.numpy(),
            acc.max(0).values.numpy(),
            alpha=0.2,
            color=line.get_color(),
        )
        ax.axhline(published[depth], color=line.get_color(), ls=":", lw=1)
    ax.set(
        xlabel="epoch",
        ylabel="validation accuracy (%)",
        ylim=(94, 98),
        title="N1: accuracy vs depth (dotted: published single runs)",
    )
    ax.legend()
    return _save(fig, path)


def learning_speed(speeds: torch.Tensor, path: Path, title: str) -> Path:
    """Nielsen's log-axis figure: each hidden layer's bias-gradient norm over epochs.

    ``speeds`` is (seeds, epochs, hidden layers); the line is the geometric mean over seeds.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    geo = speeds.double().cpu().clamp_min(1e-300).log().mean(0).exp().numpy()
    for layer in range(geo.shape[1]):
        ax.plot(geo[:, layer], label=f"hidden layer {layer + 1}")
    ax.set_yscale("log")
    ax.set(xlabel="epoch", ylabel="||dC/db|| (speed of learning)", title=title)
    ax.legend()
    return _save(fig, path)


def initial_gradient_bars(
    norms: Mapping[int, torch.Tensor], published: Mapping[int, Sequence[float]], path: Path
) -> Path:
    """Per-layer bias-gradient norm at init: median over inits (bars, with the 5-95% range)
    beside the published values (dots), one group per depth, log scale."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    x = 0
    ticks, labels = [], []
    for depth, n in norms.items():  # n: (inits, hidden layers)
        n = n.double().cpu()
        q = torch.quantile(n, torch.tensor([0.05, 0.5, 0.95], dtype=n.dtype), dim=0).numpy()
        for layer in range(n.shape[1]):
            ax.bar(x, q[1, layer], color=f"C{layer}", alpha=0.7)
            ax.errorbar(
                x,
                q[1, layer],
                yerr=[[q[1, layer] - q[0, layer]], [q[2, layer] - q[1, layer]]],
                color="k",
                capsize=3,
            )
            ax.plot(x, published[depth][layer], "kD")
            ticks.append(x)
            labels.append(f"{depth}h:L{layer + 1}")
            x += 1
        x += 1
    ax.set_yscale("log")
    ax.set_xticks(ticks, labels, rotation=45)
    ax.set(
        ylabel="||dC/db|| at init",
        title="N2: initial gradient per hidden layer\n"
        "(bars: median over inits, 5-95%; diamonds: published)",
    )
    return _save(fig, path)
