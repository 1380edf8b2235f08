"""The figures a reader of ch. 5 expects, as PNG files (matplotlib, the ``repro`` extra)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
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
    """Write ``fig`` as a PNG and close it, so pyplot keeps no figure alive."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)
    return path


def accuracy_by_depth(
    accuracy: Mapping[int, torch.Tensor], published: Mapping[int, float], path: Path
) -> Path:
    """Validation accuracy per epoch, one line per depth: seed mean with a min-max band. Left:
    every epoch on an axis that holds every seed (so the deep nets' slow first epochs show);
    right: the same from epoch 5, around the published values (dotted)."""
    plt = _pyplot()
    fig, (full, zoom) = plt.subplots(1, 2, figsize=(11, 4.5))
    for depth, acc in accuracy.items():  # acc: (seeds, epochs) in %
        acc = acc.double().cpu()
        epochs = torch.arange(1, acc.shape[1] + 1).numpy()
        for ax in (full, zoom):
            (line,) = ax.plot(
                epochs, acc.mean(0).numpy(), label=f"{depth} hidden (n={acc.shape[0]})"
            )
            ax.fill_between(
                epochs,
                acc.min(0).values.numpy(),
                acc.max(0).values.numpy(),
                alpha=0.2,
                color=line.get_color(),
            )
        zoom.axhline(published[depth], color=line.get_color(), ls=":", lw=1)
    lowest = min(float(a.min()) for a in accuracy.values())
    full.set(
        xlabel="epoch",
        ylabel="validation accuracy (%)",
        ylim=(max(0.0, lowest - 2), 100),
        title="N1: every epoch (epoch 1 included)",
    )
    zoom.set(
        xlabel="epoch",
        xlim=(5, max(a.shape[1] for a in accuracy.values())),
        ylim=(94, 98),
        title="from epoch 5 (dotted: the book's single runs)",
    )
    full.legend()
    return _save(fig, path)


def learning_speed(
    speeds: torch.Tensor, path: Path, title: str, published: Sequence[float] | None = None
) -> Path:
    """Nielsen's log-axis figure: each hidden layer's bias-gradient norm over epochs.

    ``speeds`` is (seeds, epochs, hidden layers); the line is the geometric mean over seeds and
    the band the range over seeds; ``published``, the book's values at epoch 0 per hidden layer
    (from the same script), as diamonds.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    v = speeds.double().cpu().clamp_min(1e-300)
    geo = v.log().mean(0).exp().numpy()
    lo, hi = v.min(0).values.numpy(), v.max(0).values.numpy()
    epochs = np.arange(geo.shape[0])
    for layer in range(geo.shape[1]):
        (line,) = ax.plot(epochs, geo[:, layer], label=f"hidden layer {layer + 1}")
        ax.fill_between(epochs, lo[:, layer], hi[:, layer], alpha=0.2, color=line.get_color())
        if published is not None:
            ax.plot([0], [published[layer]], "D", color=line.get_color(), mec="k")
    if published is not None:
        ax.plot([], [], "D", color="grey", mec="k", label="the book, epoch 0")
    ax.set_yscale("log")
    ax.set(xlabel="epoch", ylabel="||dC/db|| (speed of learning)", title=title)
    ax.legend()
    return _save(fig, path)


def top_six_neurons(gradients: Sequence[torch.Tensor], path: Path, title: str) -> Path:
    """The book's N2 figure: signed bars of dC/db for the top six neurons of each hidden layer.

    ``gradients[l]`` is (inits, width), hidden layer l's bias gradient of the mean cost for each
    init; the bars are the first init's (the book shows one network), dots the other inits';
    one linear axis for all layers, as the book's, so the first layer's bars look small.
    """
    plt = _pyplot()
    layers = len(gradients)
    fig, axes = plt.subplots(1, layers, figsize=(3.2 * layers, 3.6), sharey=True)
    for layer, (ax, grad) in enumerate(zip(np.atleast_1d(axes), gradients, strict=True)):
        g = grad[:, :6].double().cpu().numpy()  # (inits, 6), signed
        neurons = np.arange(1, g.shape[1] + 1)
        ax.bar(neurons, g[0], color=f"C{layer}", alpha=0.8, label="first init")
        jitter = np.linspace(-0.25, 0.25, max(g.shape[0] - 1, 1))
        for i, row in enumerate(g[1:]):
            ax.plot(neurons + jitter[i], row, ".", color="k", alpha=0.15, ms=3)
        ax.axhline(0, color="k", lw=0.5)
        ax.set(xlabel="neuron", title=f"hidden layer {layer + 1}")
    np.atleast_1d(axes)[0].set_ylabel("dC/db at init")
    fig.suptitle(title)
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


def activation_saturation(steps: Sequence[int], mean: torch.Tensor, sd: torch.Tensor, path: Path):
    """G1, Glorot & Bengio's Fig. 2 layout: each hidden layer's mean activation ± sd over
    training, first seed. ``mean`` and ``sd`` are (snapshots, seeds, layers)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for layer in range(mean.shape[-1]):
        m, s = mean[:, 0, layer].numpy(), sd[:, 0, layer].numpy()
        ax.plot(steps, m, label=f"layer {layer + 1}")
        ax.fill_between(steps, m - s, m + s, alpha=0.15)
    ax.set(
        xlabel="updates (mini-batches of 10)",
        ylabel="activation (mean ± sd)",
        ylim=(0, 1),
        title="Sigmoid, standard init: mean activation on 300 test images",
    )
    ax.legend()
    return _save(fig, path)


def gradient_variances(variances: Mapping[str, Sequence[Sequence[float]]], path: Path) -> Path:
    """G1, Fig. 7's message: Var[dC/ds] per hidden layer at init, one line per init (mean ± sd
    over seeds). ``variances[name]`` is (seeds, layers), input side first."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, per_seed in variances.items():
        v = torch.tensor(per_seed)  # (seeds, layers)
        layers = range(1, v.shape[1] + 1)
        ax.errorbar(
            layers,
            v.mean(0),
            yerr=v.std(0) if len(v) > 1 else None,
            marker="o",
            capsize=3,
            label=f"{name} init",
        )
    ax.set(
        yscale="log",
        xlabel="hidden layer (1 = input side)",
        ylabel="Var[dC/ds]",
        title="Back-propagated gradients at initialisation (tanh)",
    )
    ax.legend()
    return _save(fig, path)


def autoencoder_training(
    steps: Sequence[int],
    curves: Mapping[str, torch.Tensor],
    mean_image_error: float,
    title: str,
    path: Path,
) -> Path:
    """S1: training error against updates, one line per arm (mean over seeds, band: range over
    seeds), and the mean-image plateau. ``curves[arm]`` is (points, seeds)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, curve in curves.items():
        c = curve.double().cpu()
        (line,) = ax.plot(steps, c.mean(1).numpy(), label=f"{name} (n={c.shape[1]})")
        ax.fill_between(
            steps,
            c.min(1).values.numpy(),
            c.max(1).values.numpy(),
            alpha=0.2,
            color=line.get_color(),
        )
    ax.axhline(mean_image_error, color="grey", linestyle="--", label="mean image")
    ax.set(
        yscale="log",
        xlabel="updates (batches of 200)",
        ylabel="squared error per image",
        title=title,
    )
    ax.legend(fontsize="small")
    return _save(fig, path)


def unstable_width(width_fn, at: float, width: float, path: Path) -> Path:
    """N6: eq. (123)'s width against |w|, with its maximum marked."""
    plt = _pyplot()
    w = np.linspace(4, 40, 2000)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(w, width_fn(w))
    ax.plot([at], [width], "o", label=f"max {width:.4f} at |w| = {at:.3f}")
    ax.set(xlabel="|w|", ylabel="width of {a : |w σ'(wa+b)| ≥ 1}", title="Eq. (123)")
    ax.legend()
    return _save(fig, path)
