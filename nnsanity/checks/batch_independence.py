"""Batch independence: the outputs for one example depend on no other example of the batch.

Karpathy's recipe ("use backprop to chart dependencies"): the output for example i must not
depend on any other example j in the batch. A model that mixes the batch trains fine and quietly
cheats, so this is checked directly: by the gradient of example i's outputs with respect to every
input (float inputs), or by changing the other examples' inputs and requiring example i's outputs
to stay put (token inputs). Causality, the same question along the time axis, is in
``nnsanity.checks.causal``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from nnsanity._arguments import check_batch, forward, map_tensors, tensors_in
from nnsanity._messages import failure
from nnsanity._perturbation import (
    RTOL,
    check_options,
    index_option,
    listing,
    outputs_along,
    perturbed,
    relative_change,
)
from nnsanity._state import autograd, isolated
from nnsanity.seeding import seed_torch


@dataclass(frozen=True)
class BatchIndependenceResult:
    """How much the outputs of the checked samples depend on the other samples' inputs.

    ``dependence[k]`` is the largest dependence of sample ``samples[k]`` on another sample:
    the other's input gradient relative to its own (``method="gradient"``), or the change of its
    outputs relative to their scale when the others' inputs change (``"perturbation"``).
    ``sources[k]`` lists the samples whose dependence exceeds ``rtol``.
    """

    samples: tuple[int, ...]
    batch_size: int
    dependence: tuple[float, ...]
    sources: tuple[tuple[int, ...], ...]
    method: str
    train_mode: bool
    rtol: float
    passed: bool


def _gradient_chart(model, inputs, b, samples, g) -> list[torch.Tensor] | None:
    """Per checked sample, every sample's input-gradient size relative to its own (or None)."""
    with autograd():  # even when the caller is inside no_grad() or inference_mode()
        leaves = map_tensors(
            lambda t: t.detach().clone().requires_grad_(True) if t.dim() and t.shape[0] == b else t,
            inputs,
        )
        wrt = [t for t in tensors_in(leaves) if t.requires_grad]
        rows = [
            o
            for o in tensors_in(forward(model, leaves))
            if o.dim() and o.shape[0] == b and o.is_floating_point() and o.requires_grad
        ]
        if not rows:
            return None
        # A random projection rather than the plain sum: the sum of a softmax or of a normalised
        # vector is constant, and its gradient is rounding noise.
        weights = [torch.randn(o.shape[1:], generator=g, dtype=torch.float64).to(o) for o in rows]
        chart = []
        for i in samples:
            objective = sum((o[i] * w).sum() for o, w in zip(rows, weights))
            grads = torch.autograd.grad(objective, wrt, retain_graph=True, allow_unused=True)
            sizes = [
                gr.detach().abs().reshape(b, -1).amax(1).double().cpu()
                for gr in grads
                if gr is not None
            ]
            if not sizes or not torch.stack(sizes).any():
                return None  # no gradient reaches the inputs (argmax, casts): perturb instead
            size = torch.stack(sizes).amax(0)
            own = size[i] if size[i] > 0 else torch.tensor(0.0)  # then any leak is infinite
            chart.append(torch.where(size > 0, size / own, 0.0))
    return chart


def _perturbation_chart(model, inputs, b, samples, seed, rtol, g) -> list[torch.Tensor]:
    """Per checked sample, its output change when other samples' inputs change.

    One pass per checked sample changes all the others at once; only if that moves it is the
    culprit found with one pass per sample (so a healthy model costs len(samples) + 1 passes).
    """

    def moved(which: torch.Tensor) -> torch.Tensor:  # per sample, with the inputs `which` changed
        return relative_change(
            base, outputs_along(model, perturbed(inputs, 0, which, g), 0, b, seed), 0
        )

    base = outputs_along(model, inputs, 0, b, seed)
    chart = []
    for i in samples:
        others = torch.arange(b) != i
        row = torch.zeros(b, dtype=torch.float64)
        row[others] = moved(others)[i]
        chart.append(row)
    if any(float(row.max()) > rtol for row in chart):
        alone = [moved(torch.arange(b) == j) for j in range(b)]
        for row, i in zip(chart, samples):
            # A dependence on the others jointly but on none alone (the batch mean of many)
            # keeps the joint value on every source.
            if any(float(alone[j][i]) > rtol for j in range(b) if j != i):
                row[:] = torch.tensor([float(alone[j][i]) if j != i else 0.0 for j in range(b)])
    return chart


def measure_batch_independence(
    model: torch.nn.Module,
    batch: Any,
    *,
    samples: Sequence[int] | None = None,
    train_mode: bool = False,
    rtol: float = RTOL,
    seed: int = 0,
) -> BatchIndependenceResult:
    """Measure how much each checked sample's outputs depend on the other samples' inputs."""
    check_options(model, train_mode, rtol, seed)
    inputs, _ = check_batch(batch, model)
    b = tensors_in(inputs)[0].shape[0] if tensors_in(inputs)[0].dim() else 0
    if b < 2:
        raise ValueError(f"batch independence needs a batch of at least 2 samples, got {b}.")
    checked = index_option(samples, b, "samples", [0, b // 2, b - 1])
    g = torch.Generator().manual_seed(seed)
    with isolated(model):
        model.train(train_mode)
        seed_torch(seed)
        floats = all(
            t.is_floating_point() for t in tensors_in(inputs) if t.dim() and t.shape[0] == b
        )
        chart = _gradient_chart(model, inputs, b, checked, g) if floats else None
        method = "gradient" if chart is not None else "perturbation"
        if chart is None:
            chart = _perturbation_chart(model, inputs, b, checked, seed, rtol, g)
    dependence, sources = [], []
    for row, i in zip(chart, checked):
        row = row.clone()
        row[i] = 0.0
        dependence.append(float(row.max()))
        sources.append(tuple(int(j) for j in (row > rtol).nonzero().flatten()))
    return BatchIndependenceResult(
        samples=checked,
        batch_size=b,
        dependence=tuple(dependence),
        sources=tuple(sources),
        method=method,
        train_mode=train_mode,
        rtol=float(rtol),
        passed=max(dependence) <= rtol,
    )


def assert_batch_independence(
    model: torch.nn.Module,
    batch: Any,
    *,
    samples: Sequence[int] | None = None,
    train_mode: bool = False,
    rtol: float = RTOL,
    seed: int = 0,
) -> BatchIndependenceResult:
    """Assert that the outputs of a sample depend on no other sample's inputs.

    For float inputs the gradient of a random projection of sample i's outputs is taken with
    respect to the whole batch: every other sample's gradient must be at most ``rtol`` of sample
    i's own (exactly 0 in a healthy model). Integer inputs (tokens) have no gradient, so the other
    samples' inputs are changed instead and sample i's outputs must stay within ``rtol`` of their
    scale. Samples ``samples`` (default: first, middle, last) are checked.

    The model runs in eval mode unless ``train_mode=True``: BatchNorm in train mode normalises
    with the batch's statistics, which legitimately mixes the batch (and is caught here if you
    ask for it). Proves: no leak through the checked samples' outputs, for this batch. Does NOT
    prove: independence for other batch sizes or other samples, nor in a mode not checked.
    """
    __tracebackhide__ = True
    result = measure_batch_independence(
        model, batch, samples=samples, train_mode=train_mode, rtol=rtol, seed=seed
    )
    if result.passed:
        return result
    unit = " of its own input gradient" if result.method == "gradient" else " of its output scale"
    leaks = []
    for i, src, dep in zip(result.samples, result.sources, result.dependence):
        if dep > result.rtol:
            many = len(src) == result.batch_size - 1
            on = f"all {len(src)} others" if many else f"samples {listing(src)}"
            size = f"{dep:.3g}{unit}" if dep < float("inf") else "its own input has no effect"
            leaks.append(f"sample {i} on {on} ({size})")
            unit = ""  # said once
    batchnorm = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    causes = [
        "a view/reshape/permute across the batch dim (x.view(-1, B), x.permute(1, 0, 2, 3)"
        ".reshape(B, -1)): flatten with x.flatten(1) and keep the batch dim first",
        "batch statistics in forward (x.mean(0), x.std(0)"
        + (")" if train_mode and batchnorm else ", or BatchNorm in train mode)"),
        "attention, pooling or an RNN across the batch dim (a layer without batch_first=True "
        "given (B, T, D) inputs)",
    ]
    if train_mode and batchnorm:
        causes.insert(
            0,
            "BatchNorm in train mode mixes the batch by design; check with "
            "train_mode=False (the default) unless the model must not mix it",
        )
    raise failure(
        "Batch independence failed",
        f"outputs depend on other samples' inputs: {'; '.join(leaks)}; up to {result.rtol:g} "
        f"allowed ({result.method} method, {'train' if train_mode else 'eval'} mode)",
        causes,
        relax="rtol= relaxes the bound; samples= chooses which samples are checked.",
        result=result,
    )
