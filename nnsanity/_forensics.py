"""Step forensics: what the user's training step actually did, read while it runs.

A check given ``step=`` runs the user's own loop, whose optimizer, scheduler, scaler and clipping
nnsanity never sees directly. While the step runs, ``torch.optim``'s global step pre-hook reads
what ``optimizer.step()`` applies: each param group's learning rate at every step (a schedule's
trajectory) and, on the first step that updates, the gradient in ``.grad`` against the gradient
of the loss computed independently just before (the same parameters, batch and random state).
Gradient hooks on the parameters tell whether the step's first backward found the previous
step's gradient still in ``.grad`` (``zero_grad`` never ran); ``torch.nn.utils``'s clipping is
watched for the norm it clipped; a ``GradScaler`` is found on the call stack of
``optimizer.step()`` (``scaler.step``) or in the step's closure, with its scale and the steps it
skipped. Only what is measured becomes a cause, with its values.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.amp.grad_scaler import OptState
from torch.optim.optimizer import register_optimizer_step_pre_hook

from nnsanity._diagnosis import MEASURED, Cause
from nnsanity._state import autograd, preserved_module
from nnsanity.seeding import preserved_rng

# User steps on which the applied gradient is compared with the loss's and zero_grad is
# watched: the first PROBED steps (each costs one extra forward and backward).
PROBED = 3
# The applied gradient matches the loss's in direction when their cosine is at least SAME_DIR;
# a norm ratio outside [1 / OFF_BY, OFF_BY] then scales the update, beyond what the rounding of
# a 16-bit autocast (a few percent) explains.
SAME_DIR, OFF_BY = 0.99, 1.5
# The learning rate collapsed when the last step's is below COLLAPSE of the first step's.
COLLAPSE = 0.01


@dataclass(frozen=True, kw_only=True)
class StepForensics:
    """What the user's step did over the check, step by step (index k = the k-th call).

    ``lrs[k]`` holds each param group's learning rate at the k-th call's last
    ``optimizer.step()`` (empty when it made none); ``initial_lrs`` the groups' ``initial_lr``,
    the base a torch LR scheduler multiplies. ``grad_ratio`` is ||.grad at optimizer.step()|| /
    ||gradient of the loss|| on the first call that stepped, ``grad_cosine`` the cosine between
    them, ``grad_step`` that call's index. ``backward_passes`` counts the backward passes of that
    call. ``zero_grad`` is False when a call's first backward found the previous call's gradient
    in ``.grad``. ``clips`` lists (max_norm, norm it saw, loss-gradient norm or None) per
    ``clip_grad_norm_``; ``scaled_clips`` names each clip (``clip_grad_norm_``,
    ``clip_grad_value_``) called while a GradScaler's gradients were still scaled (its
    ``unscale_`` had not run for the step). ``scales[k]`` is a GradScaler's scale after the k-th
    call, and ``skipped`` the calls on which it skipped ``optimizer.step()``.
    """

    optimizers: tuple[str, ...] = ()
    schedulers: tuple[str, ...] = ()
    lrs: tuple[tuple[float, ...], ...] = ()
    initial_lrs: tuple[float, ...] = ()
    optimizer_steps: tuple[int, ...] = ()
    grad_ratio: float | None = None
    grad_cosine: float | None = None
    grad_step: int | None = None
    backward_passes: int | None = None
    zero_grad: bool | None = None
    clips: tuple[tuple[float, float, float | None], ...] = ()
    scaled_clips: tuple[str, ...] = ()
    scaler: bool = False
    scales: tuple[float | None, ...] = ()
    skipped: tuple[int, ...] = ()
    updated: tuple[bool, ...] = ()  # per call: the parameters were written (by any means)

    @property
    def calls(self) -> int:
        return len(self.optimizer_steps)

    def lr_at(self, k: int) -> float | None:
        return self.lrs[k][0] if k < len(self.lrs) and self.lrs[k] else None

    @property
    def clipped_scaled(self) -> bool:
        """A clip saw gradients still multiplied by the GradScaler's scale: called before its
        ``unscale_``, or (by norm) seeing a norm far above the loss gradient's."""
        if self.scaled_clips:
            return True
        scale = next((s for s in self.scales if s), None)
        return bool(
            self.scaler
            and scale
            and scale > 1
            and any(
                true is not None and true > 0 and seen > math.sqrt(scale) * true
                for _, seen, true in self.clips
            )
        )

    @property
    def gradient_scaled(self) -> bool:
        """The applied gradient has the loss gradient's direction and a norm off by more than
        OFF_BY, not explained by a clip that applied."""
        if self.grad_ratio is None or self.grad_cosine is None or self.grad_cosine < SAME_DIR:
            return False
        clipped = any(seen > max_norm for max_norm, seen, _ in self.clips)
        return not clipped and not 1 / OFF_BY <= self.grad_ratio <= OFF_BY

    def causes(self) -> list[Cause]:
        """The causes the step's record measures, strongest first."""
        found: list[Cause] = []
        stepped = [k for k, n in enumerate(self.optimizer_steps) if n]
        if self.calls and not stepped and not self.skipped and not any(self.updated):
            found.append(Cause(
                id="no_optimizer_step", summary="the step never calls optimizer.step()",
                remedy="call optimizer.step() after loss.backward()",
                evidence=(f"optimizer.step() calls in {self.calls} steps: 0",), support=MEASURED,
            ))  # fmt: skip
        if self.skipped and len(self.skipped) >= max(2, self.calls // 2):
            found.append(Cause(
                id="amp_skipped_steps",
                summary="the GradScaler skipped optimizer.step() (inf/NaN in the scaled "
                "gradients) on most steps",
                remedy="find the overflow (assert_finite under autocast), or clip after "
                "scaler.unscale_(optimizer)",
                evidence=(f"skipped {len(self.skipped)} of {self.calls} steps; scale "
                          f"{_g(self.scales[-1])} at the end",),
                support=MEASURED,
            ))  # fmt: skip
        if self.clipped_scaled:
            found.append(self._clip_cause())
        lr = self._lr_cause()
        if lr is not None:
            found.append(lr)
        if self.zero_grad is False:
            found.append(Cause(
                id="missing_zero_grad",
                summary="optimizer.zero_grad() is never called: each backward adds to the "
                "previous step's gradient",
                remedy="call optimizer.zero_grad() before loss.backward() (or after step())",
                evidence=("a step's first backward found the previous gradient in .grad",),
                support=MEASURED,
            ))  # fmt: skip
        if self.gradient_scaled and not self.clipped_scaled:
            found.append(self._scale_cause())
        return found

    def _clip_cause(self) -> Cause:
        clip = self.scaled_clips[0] if self.scaled_clips else "clip_grad_norm_"
        scale = next((s for s in self.scales if s), None)
        evidence = []
        if self.scaled_clips:
            evidence.append(f"{clip} ran before scaler.unscale_(optimizer), at scale {_g(scale)}")
        norm = next((c for c in self.clips if c[2]), None)
        if norm is not None and clip == "clip_grad_norm_":
            max_norm, seen, true = norm
            evidence.append(f"the clip saw a gradient norm of {_g(seen)} against the loss's "
                            f"{_g(true)} and cut it to {_g(max_norm)}")  # fmt: skip
        if self.grad_ratio is not None:
            evidence.append(f"the gradient the optimizer applied is {_g(self.grad_ratio)} of the "
                            "loss's gradient")  # fmt: skip
        return Cause(
            id="clip_before_unscale",
            summary=f"{clip} clipped gradients still scaled by the GradScaler, so the clip "
            "bound is divided by the scale",
            remedy=f"call scaler.unscale_(optimizer) before {clip}",
            evidence=tuple(evidence), where=f"step {self.grad_step}", support=MEASURED + 1,
        )  # fmt: skip

    def _lr_cause(self) -> Cause | None:
        first = next((k for k in range(len(self.lrs)) if self.lrs[k]), None)
        if first is None:
            return None
        lr0 = self.lr_at(first)
        assert lr0 is not None
        base = self.initial_lrs[0] if self.initial_lrs else None
        if base and 0 < base < 1 and math.isclose(lr0, base * base, rel_tol=0.05):
            return Cause(
                id="lr_schedule_squared",
                summary="the schedule multiplies the base learning rate twice: a LambdaLR "
                "lambda that returns a learning rate instead of a factor",
                remedy="return only the factor from the lambda (LambdaLR multiplies it by the "
                "optimizer's lr)",
                evidence=(f"the optimizer's first step used lr {_g(lr0)} = {_g(base)} squared "
                          f"(its initial_lr {_g(base)})",),
                where=f"step {first}", support=MEASURED + 1,
            )  # fmt: skip
        if lr0 == 0:
            return Cause(
                id="lr_zero", summary="the learning rate is 0",
                remedy="set a positive lr (a warm-up from 0 must rise within the first steps)",
                evidence=(f"lr {_g(lr0)} at step {first}",), support=MEASURED,
            )  # fmt: skip
        last = max(k for k in range(len(self.lrs)) if self.lrs[k])
        lr_last = self.lr_at(last)
        if lr_last is not None and lr_last < COLLAPSE * lr0:
            fell = next(
                k for k in range(first, last + 1)
                if (v := self.lr_at(k)) is not None and v < 0.1 * lr0
            )  # fmt: skip
            sched = f" ({', '.join(self.schedulers)})" if self.schedulers else ""
            return Cause(
                id="lr_collapsed",
                summary=f"the learning rate collapsed{sched}: a scheduler meant per epoch "
                "stepped every batch, or a decay far too fast",
                remedy="step epoch schedulers once per epoch, or lengthen the decay",
                evidence=(f"the lr the optimizer used fell from {_g(lr0)} at step {first} to "
                          f"{_g(self.lr_at(fell))} by step {fell} and {_g(lr_last)} at step "
                          f"{last}",),
                where=f"step {fell}", support=MEASURED,
            )  # fmt: skip
        return None

    def _scale_cause(self) -> Cause:
        ratio, n = self.grad_ratio or 0.0, self.backward_passes or 1
        evidence = (
            f"the gradient the optimizer applied is {_g(ratio)}x the loss's gradient, in the "
            f"same direction (cosine {self.grad_cosine:.3f})",
            f"{n} backward pass{'es' if n != 1 else ''} in the step",
        )
        if ratio < 1 and n > 1:
            summary = (
                f"the loss is scaled down more than once under gradient accumulation over {n} "
                "micro-batches (divided by the accumulation steps twice, or averaged and divided)"
            )
            remedy = f"divide each micro-batch loss by {n} once, or average without dividing"
        elif ratio < 1:
            summary = "the loss is scaled down before backward (divided by a constant)"
            remedy = "backpropagate the loss itself, or raise the learning rate to match"
        else:
            summary = (
                "the gradient is scaled up: a loss summed over the batch (reduction='sum'), "
                "or gradients accumulated over several backward passes without dividing"
            )
            remedy = "use reduction='mean', or divide each micro-batch loss by their number"
        return Cause(
            id="gradient_scaled", summary=summary, remedy=remedy, evidence=evidence,
            where=f"step {self.grad_step}", support=MEASURED,
        )  # fmt: skip


def _g(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3g}"


def _scalers(step: Any) -> list[Any]:
    """GradScalers the step holds in its closure or globals (a scaler that skips every step
    never reaches optimizer.step, where the call stack would show it)."""
    try:
        found = inspect.getclosurevars(step)
    except (TypeError, ValueError):
        return []
    values = [*found.nonlocals.values(), *found.globals.values()]
    return [v for v in values if isinstance(v, torch.amp.GradScaler)]


def _schedulers(step: Any) -> list[str]:
    try:
        found = inspect.getclosurevars(step)
    except (TypeError, ValueError):
        return []
    values = [*found.nonlocals.values(), *found.globals.values()]
    return [type(v).__name__ for v in values if isinstance(v, torch.optim.lr_scheduler.LRScheduler)]


def _scaler_on_stack() -> Any:
    frame = sys._getframe(1)
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, torch.amp.GradScaler):
            return candidate
        frame = frame.f_back  # type: ignore[assignment]
    return None


def _flat(grads: list[torch.Tensor | None], params: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat(
        [
            (torch.zeros_like(p) if g is None else g.detach()).flatten().double()
            for g, p in zip(grads, params, strict=True)
        ]
    )


@dataclass
class _Call:
    steps: int = 0
    lrs: tuple[float, ...] = ()
    applied: torch.Tensor | None = None
    backwards: dict[int, int] = field(default_factory=dict)  # param index -> backward count
    stale: bool = False  # a first backward found the previous gradient in .grad
    updated: bool = False  # a parameter was written in place during the call (any update)


class Recorder:
    """Runs the user's step with its forensics recorded; ``result()`` gives them."""

    def __init__(
        self,
        model: torch.nn.Module,
        step: Callable[[], Any],
        user_step: Any,
        loss_gradient: Callable[[], torch.Tensor | None],
    ) -> None:
        self.model, self.step, self.loss_gradient = model, step, loss_gradient
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.ids = {id(p) for p in self.params}
        self.scalers = _scalers(user_step)
        self.schedulers = _schedulers(user_step)
        self.calls: list[_Call] = []
        self.optimizers: dict[int, torch.optim.Optimizer] = {}
        self.clips: list[tuple[float, float, float | None]] = []
        self.scaled_clips: list[str] = []
        self.true: torch.Tensor | None = None
        self.grad: tuple[float, float, int, int] | None = None  # ratio, cosine, call, passes
        self.scales: list[float | None] = []

    def __call__(self) -> Any:
        k = len(self.calls)
        call = _Call()
        self.calls.append(call)
        probe = k < PROBED and self.grad is None
        self.true = self.loss_gradient() if probe else None
        versions = [p._version for p in self.params]
        with self._watching(call, watch_grads=k < PROBED):
            out = self.step()
        # An in-place write bumps a tensor's version: an update written by hand
        # (word_language_model's p.data.add_(p.grad, alpha=-lr)) is an update too.
        call.updated = any(p._version != v for p, v in zip(self.params, versions, strict=True))
        scaler = self.scalers[0] if self.scalers else None
        self.scales.append(float(scaler.get_scale()) if scaler and scaler.is_enabled() else None)
        if probe and call.applied is not None and self.true is not None:
            true_norm, applied_norm = float(self.true.norm()), float(call.applied.norm())
            if true_norm > 0 and math.isfinite(applied_norm):
                cos = float(call.applied @ self.true) / max(applied_norm * true_norm, 1e-300)
                passes = max(call.backwards.values(), default=0)
                self.grad = (applied_norm / true_norm, cos, k, passes)
        return out

    @contextlib.contextmanager
    def _watching(self, call: _Call, *, watch_grads: bool) -> Iterator[None]:
        def pre(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            if not any(id(p) in self.ids for g in optimizer.param_groups for p in g["params"]):
                return  # another model's optimizer
            self.optimizers.setdefault(id(optimizer), optimizer)
            call.steps += 1
            call.lrs = tuple(float(g["lr"]) for g in optimizer.param_groups)
            scaler = _scaler_on_stack()
            if scaler is not None and scaler not in self.scalers:
                self.scalers.append(scaler)
            if call.applied is None and self.true is not None:
                call.applied = _flat([p.grad for p in self.params], self.params)

        handles = [register_optimizer_step_pre_hook(pre)]
        first_seen: set[int] = set()
        if watch_grads:
            for i, p in enumerate(self.params):

                def on_grad(g: torch.Tensor, i: int = i, p: torch.Tensor = p) -> None:
                    call.backwards[i] = call.backwards.get(i, 0) + 1
                    if i not in first_seen:
                        first_seen.add(i)
                        if p.grad is not None and bool(p.grad.detach().ne(0).any()):
                            call.stale = True

                handles.append(p.register_hook(on_grad))
        with self._clipping():
            try:
                yield
            finally:
                for h in handles:
                    h.remove()

    def _still_scaled(self) -> bool:
        """A GradScaler with scale > 1 is in use and has not unscaled any optimizer's gradients
        in this step (its per-optimizer stage is still READY), so ``.grad`` holds scaled values."""
        scalers = [*self.scalers, _scaler_on_stack()]
        for scaler in scalers:
            if scaler is None or not scaler.is_enabled() or float(scaler.get_scale()) <= 1:
                continue
            states = getattr(scaler, "_per_optimizer_states", None)
            if states is None:
                continue
            if not any(st.get("stage") == OptState.UNSCALED for st in states.values()):
                return True
        return False

    @contextlib.contextmanager
    def _clipping(self) -> Iterator[None]:
        """Record every clip: the norm ``clip_grad_norm_`` clips (torch's own function looks up
        ``_clip_grads_with_norm_`` in its module at each call, so every caller is seen), and
        ``clip_grad_value_`` as called through ``torch.nn.utils``; each one called while a
        GradScaler's gradients are still scaled."""
        module, utils = torch.nn.utils.clip_grad, torch.nn.utils
        by_norm = getattr(module, "_clip_grads_with_norm_", None)
        by_value = getattr(utils, "clip_grad_value_", None)

        def watched_norm(parameters: Any, max_norm: float, total_norm: Any, *a: Any,
                         **k: Any) -> Any:  # fmt: skip
            true = float(self.true.norm()) if self.true is not None else None
            self.clips.append((float(max_norm), float(total_norm), true))
            if self._still_scaled():
                self.scaled_clips.append("clip_grad_norm_")
            assert by_norm is not None
            return by_norm(parameters, max_norm, total_norm, *a, **k)

        def watched_value(*a: Any, **k: Any) -> Any:
            if self._still_scaled():
                self.scaled_clips.append("clip_grad_value_")
            assert by_value is not None
            return by_value(*a, **k)

        if by_norm is not None:
            module._clip_grads_with_norm_ = watched_norm
        if by_value is not None:
            utils.clip_grad_value_ = watched_value
            module.clip_grad_value_ = watched_value
        try:
            yield
        finally:
            if by_norm is not None:
                module._clip_grads_with_norm_ = by_norm
            if by_value is not None:
                utils.clip_grad_value_ = by_value
                module.clip_grad_value_ = by_value

    def result(self) -> StepForensics:
        initial: tuple[float, ...] = ()
        if self.optimizers:
            opt = next(iter(self.optimizers.values()))
            if all("initial_lr" in g for g in opt.param_groups):
                initial = tuple(float(g["initial_lr"]) for g in opt.param_groups)
        skipped = tuple(
            k for k, c in enumerate(self.calls) if not c.steps and self.scalers
        )  # a scaler in use and no optimizer.step(): skipped on inf/NaN
        zero: bool | None = None
        if len(self.calls) > 1:
            zero = not any(c.stale for c in self.calls[1:PROBED])
        ratio, cos, at, passes = self.grad if self.grad else (None, None, None, None)
        return StepForensics(
            optimizers=tuple(type(o).__name__ for o in self.optimizers.values()),
            schedulers=tuple(self.schedulers),
            lrs=tuple(c.lrs for c in self.calls),
            initial_lrs=initial,
            optimizer_steps=tuple(c.steps for c in self.calls),
            grad_ratio=ratio,
            grad_cosine=cos,
            grad_step=at,
            backward_passes=passes,
            zero_grad=zero,
            clips=tuple(self.clips),
            scaled_clips=tuple(self.scaled_clips),
            scaler=bool(self.scalers),
            scales=tuple(self.scales),
            skipped=skipped,
            updated=tuple(c.updated for c in self.calls),
        )


def loss_gradient(model: torch.nn.Module, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """The gradient of ``compute()`` (the loss on the batch) with respect to the trainable
    parameters, flattened; model, gradients and random state are left as they were, so the
    user's step that follows sees the same dropout masks and the same ``.grad``."""
    params = [p for p in model.parameters() if p.requires_grad]
    with preserved_rng(), preserved_module(model), autograd():
        for p in params:
            p.grad = None
        compute().backward()
        return _flat([p.grad for p in params], params)
