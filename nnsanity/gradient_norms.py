"""Per-layer gradient norms: read once, or recorded at every optimiser step of a training loop.

Nielsen (ch. 5) measures a layer's "speed of learning" as the norm of its bias gradient; deep
sigmoid nets show early layers learning ~100 times slower than late ones. These are tools, not
checks: they measure and never judge (``assert_gradient_ratio`` judges the spread before
training, :class:`~nnsanity.TrainingMonitor` during it). ``GradientMonitor`` is also the
monitor's measuring part: a ``TrainingMonitor`` records into one (``monitor.gradients``) on each
step it measures, so there is one way of reading gradients, not two.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

import numpy as np
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from nnsanity._arguments import LossFn, check_int, check_model
from nnsanity._harness import Harness

__all__ = ["GradientMonitor", "LayerGradient", "gradient_stats", "layer_gradient_norms"]

# Modules whose weight rows are looked up, not multiplied: a row's gradient is zero when its
# token is absent from the batch, so their RMS is taken over the rows that got a gradient.
_LOOKUPS = (torch.nn.Embedding, torch.nn.EmbeddingBag)


@dataclass(frozen=True)
class LayerGradient:
    """Gradient norms of one module's own parameters (not its children's).

    Parameters named ``bias*`` or ``*bias`` form the bias group, all others the weight group;
    ``*_rms`` is ``norm / sqrt(numel)``, so layers of different size compare. A group the module
    lacks is ``None``. A trainable parameter without a gradient counts as zeros.
    """

    name: str  # module path as in named_modules(); "" is the model itself
    module: str  # class name
    weight_norm: float | None
    weight_rms: float | None
    bias_norm: float | None
    bias_rms: float | None
    matrix_rms: float | None  # RMS of a weight of dim >= 2 (lookups: over touched rows)


def _own_trainable(module: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in module.named_parameters(recurse=False) if p.requires_grad]


def gradient_stats(model: torch.nn.Module) -> dict[str, LayerGradient]:
    """Read the current ``.grad`` of every module owning trainable parameters, in registration
    order. All the sums reach the CPU in one transfer: one sync per call, not one per tensor."""
    entries: list[tuple[str, torch.nn.Module, list[tuple[str, torch.nn.Parameter]]]] = [
        (name, m, own) for name, m in model.named_modules() if (own := _own_trainable(m))
    ]
    params = [(m, p) for _, m, own in entries for _, p in own]
    grads = [p.grad.detach() if p.grad is not None else None for _, p in params]
    dense = [g.to_dense() if g.is_sparse else g for g in grads if g is not None]  # sparse lookups
    values: list[float] = []
    if dense:
        # one fused norm per device and dtype, one stack and one transfer: the monitor reads this
        # on every measured step, where one small kernel and one tensor per parameter cost most
        wide = torch.float32 if dense[0].device.type == "mps" else torch.float64  # MPS lacks f64
        norms = [n.to(dense[0].device) for n in torch._foreach_norm(dense, 2, dtype=wide)]
        # the touched rows of a lookup table's gradient (its matrix RMS divides by them)
        lookups = [
            (g.to_dense() if g.is_sparse else g).ne(0).any(1).sum().to(norms[0])
            for (m, _), g in zip(params, grads, strict=True)
            if g is not None and isinstance(m, _LOOKUPS) and g.dim() == 2
        ]
        values = torch.stack(norms + lookups).tolist()
    norm_of = iter(values[: len(dense)])
    touched = iter(values[len(dense) :])
    sums = iter(
        [
            (
                (0.0, 0.0)
                if g is None
                else (
                    next(norm_of) ** 2,
                    next(touched) if isinstance(m, _LOOKUPS) and g.dim() == 2 else 0.0,
                )
            )
            for (m, _), g in zip(params, grads, strict=True)
        ]
    )

    out: dict[str, LayerGradient] = {}
    for name, m, own in entries:
        groups = {"weight": [0.0, 0], "bias": [0.0, 0], "matrix": [0.0, 0]}
        for pname, p in own:
            sq, rows = next(sums)
            is_bias = pname.startswith("bias") or pname.endswith("bias")  # bias_ih_l0, in_proj_bias
            group = groups["bias" if is_bias else "weight"]
            group[0] += sq
            group[1] += p.numel()
            if p.dim() >= 2:  # pooled over e.g. an LSTM's weight_ih and weight_hh
                groups["matrix"][0] += sq
                lookup = isinstance(m, _LOOKUPS)
                groups["matrix"][1] += int(rows) * p[0].numel() if lookup else p.numel()
        (ws, wn), (bs, bn), (ms, mn) = groups["weight"], groups["bias"], groups["matrix"]
        out[name] = LayerGradient(
            name,
            type(m).__name__,
            math.sqrt(ws) if wn else None,
            math.sqrt(ws / wn) if wn else None,
            math.sqrt(bs) if bn else None,
            math.sqrt(bs / bn) if bn else None,
            math.sqrt(ms / mn) if mn else (0.0 if any(p.dim() >= 2 for _, p in own) else None),
        )
    return out


def layer_gradient_norms(
    model: torch.nn.Module,
    batch: Any,
    loss_fn: LossFn | None = None,
    *,
    unpack: bool | None = None,
    seed: int = 0,
) -> dict[str, LayerGradient]:
    """Gradient norms of ``loss_fn(model(inputs), targets)`` per module, in registration order.

    One entry per module that directly owns trainable parameters (a ``Linear``, a norm layer,
    a ``MultiheadAttention``'s input projection...). Computed in training mode on fresh gradients;
    the model, its ``.grad``s and all global state are left as they were. Nielsen's speed of
    learning of a layer is its ``bias_norm``.
    """
    h = Harness(model, batch, loss_fn, seed=seed, unpack=unpack)
    with h.isolated():
        h.backward()
        return gradient_stats(h.model)


Kind = Literal["bias", "weight"]
Statistic = Literal["norm", "rms"]


class GradientMonitor:
    """Record per-layer gradient norms at every optimiser step while the ``with`` block runs.

    ``with GradientMonitor(model) as monitor: train(...)`` needs no change to the loop: a step
    pre-hook common to all ``torch.optim`` optimisers reads the gradients just before each
    ``optimizer.step()`` of an optimiser that holds any of ``model``'s parameters (so after
    gradient accumulation, unscaling by ``GradScaler`` and clipping: what the update uses). Pass
    ``optimizer=`` to watch only that one. Call ``record()`` yourself for optimisers outside
    ``torch.optim`` or to record without stepping. Hooks are removed on exit. ``keep`` bounds
    ``history`` to the last ``keep`` records (``None``: all), for runs too long to hold them.

    A :class:`~nnsanity.TrainingMonitor` drives one without entering it (``monitor.gradients``,
    recorded on the steps the monitor measures, the last 100 kept): the per-layer norms its
    alerts were judged from.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        optimizer: torch.optim.Optimizer | None = None,
        keep: int | None = None,
    ):
        check_model(model)
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer instance (not a factory), "
                f"got {type(optimizer).__name__}."
            )
        self.model = model
        self.optimizer = optimizer
        self.keep = None if keep is None else check_int(keep, "keep", 1)
        self.history: list[dict[str, LayerGradient]] = []
        self._handle: Any = None
        self._ids: set[int] = set()

    def _hook(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if any(id(p) in self._ids for group in opt.param_groups for p in group["params"]):
            self.record()

    def __enter__(self) -> GradientMonitor:
        if self._handle is not None:
            raise RuntimeError("this GradientMonitor is already active; use one per with block.")
        self._ids = {id(p) for p in self.model.parameters()}
        if self.optimizer is not None:
            self._handle = self.optimizer.register_step_pre_hook(self._hook)
        else:
            self._handle = register_optimizer_step_pre_hook(self._hook)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def record(self) -> dict[str, LayerGradient]:
        """Append the norms of the model's current gradients to ``history`` and return them."""
        entry = gradient_stats(self.model)
        self.history.append(entry)
        if self.keep is not None and len(self.history) > self.keep:
            del self.history[: len(self.history) - self.keep]
        return entry

    @property
    def layers(self) -> list[str]:
        """Names of every layer seen so far, in registration order."""
        seen: dict[str, None] = {}
        for entry in self.history:
            seen.update(dict.fromkeys(entry))
        return list(seen)

    def as_array(
        self,
        kind: Kind = "bias",
        statistic: Statistic = "norm",
        layers: Iterable[str] | None = None,
    ) -> np.ndarray:
        """Array of shape (steps, layers), columns in the order of ``layers`` (default: all).

        A layer without that kind of parameter (a ``bias=False`` conv) gives NaN.
        """
        if kind not in ("bias", "weight") or statistic not in ("norm", "rms"):
            raise ValueError(
                f"kind must be 'bias' or 'weight' and statistic 'norm' or 'rms', "
                f"got kind={kind!r}, statistic={statistic!r}."
            )
        names = self.layers if layers is None else list(layers)
        field = f"{kind}_{statistic}"
        out = np.full((len(self.history), len(names)), np.nan)
        for i, entry in enumerate(self.history):
            for j, name in enumerate(names):
                value = getattr(entry[name], field) if name in entry else None
                if value is not None:
                    out[i, j] = value
        return out
