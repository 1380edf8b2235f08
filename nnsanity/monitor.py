"""The checks inside the real run: a training-time monitor for any loop.

``with TrainingMonitor(model) as monitor:`` around a training loop, ``monitor.observe(loss)``
once per optimizer step. Every step costs one ``float(loss)`` and a few list operations; every
``every``-th optimizer step the monitor reads the gradients and the update the optimizer applied
(``torch.optim``'s global step hooks: the pre-hook snapshots the weight matrices, the post-hook
reads ``.grad`` and the change of each weight). The post-hook sees the gradient the update used:
after accumulation, after ``GradScaler``'s unscaling (``scaler.step`` unscales before calling
``optimizer.step``) and after clipping (Lightning clips inside its closure, the Hugging Face
Trainer before ``optimizer.step``), and it runs after a closure, so Lightning's
``optimizer.step(closure)`` is read correctly too. Under DeepSpeed ZeRO ``.grad`` is ``None``
(partitioned) and the gradient alerts stay silent; the loss alerts still work.

Alerts are data (:class:`Alert`). The bounds are the test-time checks' own, imported from them:
``update_ratio`` is :data:`nnsanity.checks.update_ratio.MAX_RATIO`, ``depth_trend`` the rule of
``assert_gradient_ratio`` (``_depth.worst`` with its ``MIN_RATE``, ``MAX_GROWTH``,
``MAX_DECAY``), ``dead_units`` ``assert_no_dying_units``'s ``MAX_DYING_FRACTION``, a loss rise
``assert_loss_stable``'s ``MAX_RISE``. The monitor's own constants are derived below.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import math
import os
import sys
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any, Literal

import torch
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

from nnsanity._arguments import check_int, check_model
from nnsanity._depth import repeated, trend, worst
from nnsanity._units import TRANSPOSED, UNIT_LAYERS
from nnsanity.checks.dying_units import MAX_DYING_FRACTION
from nnsanity.checks.gradient_ratio import MAX_DECAY, MAX_GROWTH, MIN_RATE
from nnsanity.checks.loss_stability import MAX_RISE
from nnsanity.checks.update_ratio import MAX_RATIO, NEAR_ZERO, RUN_STEPS
from nnsanity.errors import SanityError
from nnsanity.gradient_norms import GradientMonitor

__all__ = ["KINDS", "Alert", "MonitorWarning", "TrainingMonitor"]

log = logging.getLogger("nnsanity.monitor")

KINDS = (
    "non_finite",
    "loss_spike",
    "divergence",
    "grad_explosion",
    "depth_trend",
    "update_ratio",
    "no_update",
    "dead_units",
    "clip_not_applied",
    "amp_skips",
    "grads_not_zeroed",
)
# The gradients are checked for having been zeroed on the first GRAD_CHECK_STEPS optimizer steps
# (a missing zero_grad is there from the start) and after every measured step: one read of one
# parameter's gradient, when a backward begins after an optimizer step.
GRAD_CHECK_STEPS = 3
# A learning rate below this fraction of the run's first one no longer moves float32 weights
# at the sizes Adam and SGD give (an update under the weights' 2**-23 relative resolution) and
# is named as a collapsed schedule; a cosine or linear decay's end is reached only at the end.
COLLAPSED_LR = 1e-6

# The loss history the robust statistics read: the median and the MAD of the last LOSS_WINDOW
# finite losses (non-finite ones never enter it, so one NaN cannot poison the median). No loss
# alert before MIN_HISTORY losses: the median of fewer is the noise of a handful of batches.
LOSS_WINDOW, MIN_HISTORY = 50, 10
# A spike is a loss more than SPIKE_Z robust standard deviations (1.4826 x MAD, the normal
# consistency factor) above the window's median (Hampel's identifier, which flags at 3; mini-batch
# losses are heavier-tailed than a normal, so 6, where a normal gives 1e-9 per step), *and* above
# it by more than MAX_RISE x the initial loss (assert_loss_stable's bound on a rise), so that the
# near-zero MAD of a loss that has converged on repeated data never makes noise an alert.
SPIKE_Z = 6.0
# The losses are judged LOSS_BATCH at a time (and whenever alerts, metrics or state are read, and
# before each measured step): Python code run between a step's kernels finds the CPU caches cold
# and costs about 8x its warm time (1.7 vs 13 us for one loss's judgement, measured), so one
# judgement per step was a third of the monitor's cost on a small MLP. A spike's alert then comes
# up to LOSS_BATCH - 1 steps late, naming its own step; non-finite losses are acted on at once.
LOSS_BATCH = 10
# Divergence is sustained: the median of the last SMOOTH losses above the lowest such median so
# far by more than MAX_RISE x the initial loss (assert_loss_stable's rule on a smoothed loss).
SMOOTH = 10
# The total gradient norm is judged against the median of the first EARLY measured steps' norms;
# GRAD_EXPLOSION is assert_gradient_ratio's MAX_GROWTH (a gradient 100x larger than at the start
# of training is the exploding case the depth check bounds the same way).
EARLY, GRAD_EXPLOSION = 5, MAX_GROWTH
# A unit (a row of a Linear/Conv weight's gradient) is dead when its gradient row is exactly zero
# on every one of the DEAD_STEPS optimizer steps up to a measured step (a window of DEAD_STEPS
# batches), in DEAD_WINDOW such windows in a row, after it had a gradient on an earlier one. One
# batch is too few samples: the zoo's dropout CNN (8 images a batch, dropout 0.5 after the
# ReLU) has ReLU units active on a few percent of inputs, and judged on single batches (two
# measured steps in a row) 51-59% of its 1024->128 layer read as dead from step 80 of a healthy
# Adam 3e-4 run, while on 512 fresh inputs 11% never fired. A unit active on a fraction a of
# inputs, kept by dropout with probability q, misses all B x DEAD_STEPS samples of a window with
# probability (1 - a q)^(B DEAD_STEPS): 4% for a = 5%, q = 0.5, B = 8. The rows are read on the
# window's steps only (a comparison per weight, no module hook), so the cost stays a share of
# DEAD_STEPS / every steps.
DEAD_STEPS, DEAD_WINDOW = 8, 2
# The learning rate is 0 on ZERO_LR_STEPS optimizer steps in a row: a linear warm-up from 0 (the
# Hugging Face schedules) uses lr 0 on its first step only.
ZERO_LR_STEPS = 2
# torch's clip_grad_norm_ scales by max_norm / (norm + 1e-6): the clipped norm is max_norm to
# rounding. A norm above max_norm x CLIP_SLACK was not clipped.
CLIP_SLACK = 1.01
# The per-layer gradient norms kept in `monitor.gradients.history`: the last HISTORY measured steps
# (5,000 optimizer steps at every=50), enough to plot a recent trend without growing with the run.
HISTORY = 100
# GradScaler starts at a scale of 2**16 and halves it on each skipped step: after 17 skips in a row
# the scale is below 1, so the overflow is not the scale's doing (the gradient is inf/NaN).
MAX_SKIPS = 17

OnAlert = Literal["warn", "raise"] | Callable[["Alert"], Any]


class MonitorWarning(UserWarning):
    """The Python warning ``on_alert="warn"`` issues, once per alert kind."""


@dataclass(frozen=True, kw_only=True)
class Alert:
    """One alert: ``kind`` (one of :data:`KINDS`), the 0-based ``step`` (the index of the
    ``observe`` call, i.e. of the optimizer step), ``where`` (module or parameter names; empty
    when the whole run is concerned), the measured ``value`` and the ``bound`` it broke (both in
    the unit the kind's message names), and the ``message``."""

    kind: str
    step: int
    where: tuple[str, ...]
    value: float
    bound: float
    message: str


def _tensors(x: Any) -> Iterator[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, dict):
        for v in x.values():
            yield from _tensors(v)
    elif isinstance(x, (list, tuple)):
        for v in x:
            yield from _tensors(v)


def _finite(x: Any) -> bool:
    return all(
        bool(torch.isfinite(t).all())
        for t in _tensors(x)
        if t.is_floating_point() or t.is_complex()
    )


def _g(x: float) -> str:
    return f"{x:.3g}"


class TrainingMonitor:
    """Watch a training run for the failures that appear at step 30,000, not in a unit test.

    ``model`` is the module being trained; ``every`` how often (in optimizer steps) the gradients
    and updates are read; ``on_alert`` is ``"warn"`` (each alert logged to the
    ``nnsanity.monitor`` logger, and one :class:`MonitorWarning` per kind), ``"raise"`` (every
    alert raises :class:`SanityError`) or a callable given each :class:`Alert` (nothing raised).
    Under ``"warn"`` a ``non_finite`` alert still raises: once the weights hold a NaN every later
    step is lost, so the run should stop where the cause is still visible; no other kind raises,
    since each leaves a run that can recover (a spike settles, a schedule resumes, GradScaler
    rescales). ``max_grad_norm`` is the clip threshold the loop means to apply (the adapters read
    it from the framework); ``scaler`` a ``GradScaler`` to watch (one found on the call stack of
    ``optimizer.step`` is used too). ``optimizer`` limits the watch to that optimizer.

    Call ``observe(loss)`` after ``loss.backward()``, best before ``optimizer.step()``: a
    non-finite loss observed before the step makes the monitor skip that step (the gradients are
    set to ``None``, which every ``torch.optim`` optimizer skips, as GradScaler skips an
    overflowing step), so the weights stay finite and the next forward, with a forward hook on
    every module armed for it alone, finds the module that *produced* the non-finite value
    (finite inputs and parameters, non-finite output; the innermost such). The ``non_finite``
    alert is issued once that forward ran (or at the next ``observe``, or on exit). Observed
    after the step, the NaN has already reached the weights, and ``where`` names the modules
    whose parameters it made non-finite.

    Raises ``TypeError``/``ValueError`` on bad arguments; ``SanityError`` as ``on_alert`` says.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        every: int = 50,
        on_alert: OnAlert = "warn",
        max_grad_norm: float | None = None,
        scaler: Any = None,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> None:
        check_model(model)
        self.every = check_int(every, "every", 1)
        if not (on_alert in ("warn", "raise") or callable(on_alert)):
            raise ValueError(
                f"on_alert must be 'warn', 'raise' or a callable taking an Alert, got {on_alert!r}."
            )
        if max_grad_norm is not None and not (
            isinstance(max_grad_norm, (int, float)) and max_grad_norm > 0
        ):
            raise ValueError(f"max_grad_norm must be a number > 0 or None, got {max_grad_norm!r}.")
        if scaler is not None and not hasattr(scaler, "get_scale"):
            raise TypeError(f"scaler must be a torch.amp.GradScaler, got {type(scaler).__name__}.")
        self.model = model
        # the measuring part: per-layer gradient norms, recorded on each measured step
        self.gradients = GradientMonitor(model, optimizer=optimizer, keep=HISTORY)
        self.on_alert = on_alert
        self.max_grad_norm = None if max_grad_norm is None else float(max_grad_norm)
        self.scaler = scaler
        self.optimizer = optimizer
        self._alerts: list[Alert] = []
        self._warned: set[str] = set()
        self._last: dict[tuple[str, tuple[str, ...]], int] = {}  # (kind, where) -> step alerted
        self._handles: list[Any] = []
        self._ids: set[int] = set()
        # the run's state (state_dict)
        self.step = 0  # observe() calls so far
        self._opt_steps = 0  # optimizer steps seen
        self._losses: deque[float] = deque(maxlen=LOSS_WINDOW)
        self._ordered: list[float] = []  # the same losses, sorted: the median without a sort
        self._fresh: list[tuple[int, float]] = []  # (step, loss) observed, not judged yet
        self._initial: float | None = None
        self._best_smooth = math.inf
        self._early_norms: list[float] = []
        self._zero_lr = 0
        self._first_lr: float | None = None  # the first non-zero learning rate seen
        self._skips = 0  # observe() calls in a row with no optimizer step
        self._from_zero: set[str] | None = None  # matrices that started near zero: not judged
        self._metrics: dict[str, float] = {}
        self._alive: dict[str, torch.Tensor] = {}  # layer -> units that had a gradient
        self._zero_run: dict[str, torch.Tensor] = {}  # layer -> windows in a row at zero
        self._touched: dict[str, torch.Tensor] = {}  # layer -> units with a gradient this window
        self._unit_weights: list[tuple[str, torch.Tensor]] | None = None
        # within one step
        self._order: str | None = None  # "before": observe() precedes its optimizer step
        self._stepped = False  # an optimizer step ran since the last observe()
        self._grad_probe: tuple[str, torch.Tensor] | None = None  # (name, parameter)
        # (step, optimizer step, the weights before it) of matrices a step moved past the
        # one-step bound, judged RUN_STEPS optimizer steps later
        self._followed: tuple[int, int, dict[str, torch.Tensor]] | None = None
        self._grad_hook: Any = None  # the armed one-shot hook's handle
        self._snapshot: dict[str, torch.Tensor] | None = None
        self._pending: tuple[int, float] | None = None  # a non-finite loss to localise
        self._probe: list[Any] = []
        self._records: dict[str, list[Any]] = {}

    # -- the context manager -------------------------------------------------------------------

    def __enter__(self) -> TrainingMonitor:
        if self._handles:
            raise RuntimeError("this TrainingMonitor is already active; use one per with block.")
        self._ids = {id(p) for p in self.model.parameters()}
        self._handles = [
            register_optimizer_step_pre_hook(self._pre_step),
            register_optimizer_step_post_hook(self._post_step),
        ]
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        # the smallest parameter (a bias), whose gradient costs nothing to read
        self._grad_probe = min(named, key=lambda item: item[1].numel()) if named else None
        return self

    def _arm_grad_check(self) -> None:
        """A one-shot hook on the probe's gradient, for the next backward: it runs before
        autograd adds the new gradient to ``.grad``, which after an optimizer step must be None
        or zero. Armed only on the steps checked, so other steps pay nothing."""
        if self._grad_probe is None or self._grad_hook is not None:
            return
        name, p = self._grad_probe

        def hook(grad: torch.Tensor) -> None:
            if self._grad_hook is None:  # already fired in this backward's pass
                return
            self._grad_hook = None
            if p.grad is not None and bool(p.grad.detach().ne(0).any()):
                self._alert(
                    "grads_not_zeroed", self.step, (name,), 0.0, 0.0,
                    "a backward began with the previous step's gradient still in .grad: the "
                    "gradients are never zeroed, so each step applies the sum of all past "
                    "gradients (the loss diverges as the sum grows); call optimizer.zero_grad() "
                    "before each backward, or after each optimizer.step()",
                )  # fmt: skip

        self._grad_hook = p.register_hook(hook)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._judge_losses()
        if self._pending is not None and exc_type is None:
            self._localise()
        self._disarm()

    # -- the public API ------------------------------------------------------------------------

    @property
    def alerts(self) -> tuple[Alert, ...]:
        self._judge_losses()
        return tuple(self._alerts)

    def observe(self, loss: torch.Tensor | float) -> None:
        """Record the loss of one optimizer step (a tensor or a float; the mean over micro-batches
        under gradient accumulation)."""
        if self._pending is not None:
            self._localise()
        if isinstance(loss, torch.Tensor):
            if loss.numel() != 1:
                raise ValueError(
                    f"observe() takes the scalar loss of the step, got a tensor of shape "
                    f"{tuple(loss.shape)}: reduce it (loss.mean()) first."
                )
            value = loss.item()  # works on a tensor that requires grad; no detached copy
        elif isinstance(loss, (int, float)):
            value = float(loss)
        else:
            raise TypeError(f"observe() takes a loss tensor or a float, got {type(loss).__name__}.")
        step = self.step
        self.step += 1
        self._order = self._order or "before"
        self._skip_check(step)
        self._stepped = False
        self._metrics["loss"] = value
        if not math.isfinite(value):
            self._judge_losses()  # the alerts of the steps before it come first
            self._pending = (step, value)
            self._arm()
            return
        self._fresh.append((step, value))
        if len(self._fresh) >= LOSS_BATCH:
            self._judge_losses()

    def guard(self) -> None:
        """Skip the coming optimizer step if its loss was non-finite (called by the pre-step hook;
        the adapters call it where their framework steps inside a closure)."""
        if self._pending is not None:
            for p in self.model.parameters():
                p.grad = None

    def assert_healthy(self) -> None:
        """Raise :class:`SanityError` listing every alert, if there is any."""
        __tracebackhide__ = True
        self._judge_losses()
        if self._alerts:
            lines = "\n".join(f"  {i}. {a.message}" for i, a in enumerate(self._alerts, 1))
            raise SanityError(
                f"Training run not healthy! {len(self._alerts)} alert(s) in {self.step} steps:\n"
                f"{lines}",
                self.alerts,
            )

    def metrics(self) -> dict[str, float]:
        """The latest measurements, for a logger: ``loss``, ``loss_median``, ``lr``, and on
        measured steps ``grad_norm``, ``max_update_ratio``, ``max_dead_fraction``; ``alerts``."""
        self._judge_losses()
        return {**self._metrics, "alerts": float(len(self._alerts))}

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to judge as if it never stopped (plain Python and tensors)."""
        self._judge_losses()
        return {
            "step": self.step,
            "opt_steps": self._opt_steps,
            "losses": list(self._losses),
            "initial": self._initial,
            "best_smooth": self._best_smooth,
            "early_norms": list(self._early_norms),
            "zero_lr": self._zero_lr,
            "first_lr": self._first_lr,
            "skips": self._skips,
            "from_zero": None if self._from_zero is None else sorted(self._from_zero),
            "alive": {k: v.clone() for k, v in self._alive.items()},
            "zero_run": {k: v.clone() for k, v in self._zero_run.items()},
            "alerts": [asdict(a) for a in self._alerts],
            "warned": sorted(self._warned),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        try:
            self.step = int(state["step"])
            self._opt_steps = int(state["opt_steps"])
            self._losses = deque((float(x) for x in state["losses"]), maxlen=LOSS_WINDOW)
            self._ordered = sorted(self._losses)
            self._fresh = []
            self._initial = state["initial"]
            self._best_smooth = float(state["best_smooth"])
            self._early_norms = [float(x) for x in state["early_norms"]]
            self._zero_lr, self._skips = int(state["zero_lr"]), int(state["skips"])
            self._first_lr = state.get("first_lr")  # absent from states saved before it was kept
            from_zero = state["from_zero"]
            self._from_zero = None if from_zero is None else set(from_zero)
            self._alive = {k: v.clone() for k, v in state["alive"].items()}
            self._zero_run = {k: v.clone() for k, v in state["zero_run"].items()}
            self._alerts = [Alert(**{**a, "where": tuple(a["where"])}) for a in state["alerts"]]
            self._warned = set(state["warned"])
        except (KeyError, TypeError) as e:
            raise ValueError(
                f"not a TrainingMonitor state_dict (missing or malformed {e}); pass what "
                "TrainingMonitor.state_dict() returned."
            ) from None

    # -- alerts --------------------------------------------------------------------------------

    def _alert(
        self, kind: str, step: int, where: tuple[str, ...], value: float, bound: float, text: str
    ) -> None:
        key = (kind, where)
        if key in self._last and step - self._last[key] < self.every:
            return  # the same fault at the same place: once per `every` steps
        self._last[key] = step
        more = f" and {len(where) - 5} more" if len(where) > 5 else ""
        at = f" in {', '.join(where[:5])}{more}" if where else ""
        alert = Alert(
            kind=kind, step=step, where=where, value=value, bound=bound,
            message=f"{kind} at step {step}{at}: {text}",
        )  # fmt: skip
        self._alerts.append(alert)
        if callable(self.on_alert):
            self.on_alert(alert)
            return
        log.warning(alert.message)
        if self.on_alert == "raise" or kind == "non_finite":
            raise SanityError(f"Training monitor alert!\n{alert.message}", alert)
        if kind not in self._warned:
            self._warned.add(kind)
            warnings.warn(alert.message, MonitorWarning, stacklevel=_caller_level())

    # -- the loss ------------------------------------------------------------------------------

    def _judge_losses(self) -> None:
        fresh, self._fresh = self._fresh, []
        for step, value in fresh:
            self._judge_loss(step, value)

    def _judge_loss(self, step: int, value: float) -> None:
        history, ordered = self._losses, self._ordered
        if len(history) >= MIN_HISTORY:
            if self._initial is None:
                self._initial = _median(list(history)[:MIN_HISTORY])
            median = ordered[len(ordered) // 2]
            rise = MAX_RISE * abs(self._initial)
            self._metrics["loss_median"] = median
            # the bound is at least median + rise: the MAD (a sort) only when it may be broken
            if value > median + rise:
                mad = sorted(abs(x - median) for x in ordered)[len(ordered) // 2]
                bound = median + max(SPIKE_Z * 1.4826 * mad, rise)
                if value > bound:
                    self._alert(
                        "loss_spike", step, (), value, bound,
                        f"loss {_g(value)} above the recent median {_g(median)} by more than "
                        f"{SPIKE_Z:g} robust SDs ({_g(1.4826 * mad)}) and {MAX_RISE:g} x the "
                        f"initial loss {_g(self._initial)} (bound {_g(bound)}): a learning rate "
                        "too high (a warm-up that ended, a schedule jump) or a bad batch",
                    )  # fmt: skip
        if len(history) == history.maxlen:
            del ordered[bisect.bisect_left(ordered, history[0])]  # the loss leaving the window
        history.append(value)
        bisect.insort(ordered, value)
        if len(history) >= SMOOTH and self._initial is not None:
            smooth = _median(list(itertools.islice(reversed(history), SMOOTH)))
            self._best_smooth = min(self._best_smooth, smooth)
            bound = self._best_smooth + MAX_RISE * abs(self._initial)
            if smooth > bound:
                self._alert(
                    "divergence", step, (), smooth, bound,
                    f"the median loss of the last {SMOOTH} steps, {_g(smooth)}, rose above its "
                    f"best {_g(self._best_smooth)} by more than {MAX_RISE:g} x the initial loss "
                    f"{_g(self._initial)} (bound {_g(bound)}): the learning rate is past the "
                    "stable range; lower it or add warm-up",
                )  # fmt: skip

    def _skip_check(self, step: int) -> None:
        if self._stepped or self._opt_steps == 0:
            self._skips = 0
            return
        self._skips += 1  # a second observe() without an optimizer step in between
        scaler = self.scaler
        step = step - 1 if self._order == "before" else step  # the last step that skipped
        if scaler is not None and self._skips >= MAX_SKIPS:
            scale = float(scaler.get_scale()) if scaler.is_enabled() else math.nan
            self._alert(
                "amp_skips", step, (), float(self._skips), float(MAX_SKIPS),
                f"GradScaler skipped {self._skips} optimizer steps in a row (up to "
                f"{MAX_SKIPS - 1} allowed: its scale halves on each, from 2**16 to below 1 in "
                f"17), scale now {_g(scale)}: the gradients are inf/NaN at any scale; find the "
                "overflow (nnsanity.assert_finite under autocast) or clip after "
                "scaler.unscale_(optimizer)",
            )  # fmt: skip

    # -- the optimizer step --------------------------------------------------------------------

    def _watched(self, opt: torch.optim.Optimizer) -> bool:
        if self.optimizer is not None:
            return opt is self.optimizer
        return any(id(p) in self._ids for g in opt.param_groups for p in g["params"])

    def _pre_step(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if not self._watched(opt):
            return
        self.guard()
        groups = opt.param_groups
        lr = float(groups[0]["lr"])
        self._metrics["lr"] = lr
        if self._first_lr is None and lr > 0:
            self._first_lr = lr
        zero = lr == 0 and all(g["lr"] == 0 for g in groups)
        self._zero_lr = self._zero_lr + 1 if zero else 0
        if self._opt_steps % self.every == 0:
            matrices = {
                n: p for n, p in self.model.named_parameters() if p.requires_grad and p.dim() >= 2
            }
            if self._from_zero is None:  # decided once, on the run's first measured step
                self._from_zero = {n for n, p in matrices.items() if _near_zero(p.detach())}
            self._snapshot = {
                n: p.detach().clone() for n, p in matrices.items() if n not in self._from_zero
            }
        if self.scaler is None:
            self.scaler = _scaler_on_stack() if self._opt_steps < 3 else None

    def _post_step(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if not self._watched(opt):
            return
        self._order = self._order or "after"
        step = self.step - 1 if self._order == "before" else self.step
        self._stepped = True
        phase = self._opt_steps % self.every
        measured = phase == 0
        self._opt_steps += 1
        if measured or self._opt_steps <= GRAD_CHECK_STEPS:
            self._arm_grad_check()
        if self._followed is not None:
            self._judge_followed(step)
        if measured or phase > self.every - DEAD_STEPS:
            self._touch()
        if self._zero_lr >= ZERO_LR_STEPS:
            self._alert(
                "no_update", step, (), 0.0, 0.0,
                f"the learning rate is 0 on {self._zero_lr} optimizer steps in a row: a schedule "
                "that decays to 0 (stepped per batch instead of per epoch, or too short), or an "
                "lr set to 0; the weights do not move",
            )  # fmt: skip
        if measured and self._snapshot is not None:
            self._judge_losses()  # the alerts stay in the order of their steps
            snapshot, self._snapshot = self._snapshot, None
            self._measure(step, snapshot)

    def _units(self) -> list[tuple[str, torch.Tensor]]:
        """The hidden layers' weights whose rows are units (the output layer's are the classes)."""
        if self._unit_weights is None:
            layers = [
                (n, getattr(m, "weight", None))
                for n, m in self.model.named_modules()
                if isinstance(m, UNIT_LAYERS) and not isinstance(m, TRANSPOSED)
            ]
            # a Parameter only: a weight-normed layer's weight is computed at each access (no
            # .grad of its own; its original0/original1 are the parameters)
            self._unit_weights = [
                (n, w)
                for n, w in layers[:-1]
                if isinstance(w, torch.nn.Parameter) and w.requires_grad
            ]
        return self._unit_weights

    def _touch(self) -> None:
        """Mark the units whose gradient row is non-zero on this step, for the window."""
        for name, w in self._units():
            if w.grad is None:
                continue
            # a row's norm, not g.ne(0).any(1): 17x faster on the CPU (no bool copy), scaled so
            # that tiny entries do not underflow, and a NaN row (norm NaN != 0) counts as touched
            rows = torch.linalg.vector_norm(w.grad.detach().flatten(1), dim=1) != 0
            seen = self._touched.get(name)
            if seen is None or seen.shape != rows.shape:
                self._touched[name] = rows
            else:
                seen.logical_or_(rows)

    def _measure(self, step: int, snapshot: dict[str, torch.Tensor]) -> None:
        params = dict(self.model.named_parameters())
        if all(p.grad is None for p in params.values()):
            return  # a skipped step, or gradients outside .grad (DeepSpeed ZeRO)
        stats = self.gradients.record()
        total = _total_norm(params.values())
        self._metrics["grad_norm"] = total
        if not math.isfinite(total):
            norms = {n: math.hypot(s.weight_norm or 0, s.bias_norm or 0) for n, s in stats.items()}
            bad = tuple(n for n, v in norms.items() if not math.isfinite(v))
            self._alert(
                "non_finite", step, bad, total, math.inf,
                f"the gradient is not finite (norm {_g(total)}) while the loss was finite: an "
                "operation whose backward overflows or divides by zero (sqrt or log at 0, a "
                "norm of a zero vector)",
            )  # fmt: skip
            return
        self._judge_updates(step, snapshot, params, total)
        self._judge_gradient(step, total)
        self._judge_depth(step, stats)
        self._judge_units(step)

    def _judge_updates(
        self,
        step: int,
        snapshot: dict[str, torch.Tensor],
        params: dict[str, torch.nn.Parameter],
        total: float,
    ) -> None:
        if not snapshot:
            return
        names = list(snapshot)
        before = [snapshot[n] for n in names]
        after = [params[n].detach() for n in names]
        delta = torch._foreach_sub(after, before)
        values = torch.stack(
            [
                torch.stack(torch._foreach_norm(delta)).double(),
                torch.stack(torch._foreach_norm(before)).double(),
                torch.stack(torch._foreach_norm(after)).double(),
            ]
        ).tolist()
        changes, norms, new = values
        if not all(math.isfinite(v) for v in new):
            bad = tuple(n for n, v in zip(names, new, strict=True) if not math.isfinite(v))
            self._alert(
                "non_finite", step, bad, math.nan, math.inf,
                "the optimizer step made these weights non-finite from a finite gradient: an "
                "optimizer state that overflowed (Adam's eps too small in 16 bits, a huge lr)",
            )  # fmt: skip
            return
        ratios = {n: c / w for n, c, w in zip(names, changes, norms, strict=True) if w > 0}
        self._metrics["max_update_ratio"] = max(ratios.values(), default=0.0)
        over = sorted((n for n, r in ratios.items() if r > MAX_RATIO), key=lambda n: -ratios[n])
        # assert_update_ratio's rule: a step over the bound is judged by where the next
        # RUN_STEPS steps take the matrix (Adadelta's and Adam's sign-like first steps stay
        # within its own norm); one step past the run's whole bound is too far at once
        far = [n for n in over if ratios[n] > RUN_STEPS * MAX_RATIO]
        if far:
            self._alert_ratio(step, tuple(far), ratios[far[0]], MAX_RATIO, "one step moved")
        elif over and self._followed is None:
            self._followed = (step, self._opt_steps, {n: snapshot[n] for n in over})
        lr = self._metrics.get("lr", 0.0)
        if total > 0 and not any(changes) and lr > 0:
            first = self._first_lr or lr
            why = (
                f"the learning rate has decayed to {_g(lr)}, {_g(lr / first)} of its first value "
                f"{_g(first)}, too small to move a float weight: a schedule stepped per batch "
                "instead of per epoch, or one too short for the run"
                if lr < COLLAPSED_LR * first
                else "the optimizer holds other tensors than the model's parameters (built "
                "before .to(device) or a re-created model)"
            )
            self._alert(
                "no_update", step, (), 0.0, 0.0,
                f"no weight matrix moved in the optimizer step although the gradient norm is "
                f"{_g(total)}: {why}",
            )  # fmt: skip

    def _alert_ratio(
        self, step: int, where: tuple[str, ...], value: float, bound: float, what: str
    ) -> None:
        self._alert(
            "update_ratio", step, where, value, bound,
            f"{what} the weights by {_g(value)} of their norm (up to {bound:g} allowed, "
            "assert_update_ratio's bound; CS231n's rule of thumb is 1e-3 a step): the learning "
            "rate is too high for these layers",
        )  # fmt: skip

    def _judge_followed(self, step: int) -> None:
        """The matrices a measured step moved past the one-step bound, RUN_STEPS optimizer steps
        later: how far they went from where that step began, against RUN_STEPS x the bound."""
        assert self._followed is not None
        start, opt_step, held = self._followed
        if self._opt_steps - opt_step < RUN_STEPS:
            return
        self._followed = None
        params = dict(self.model.named_parameters())
        moved = {}
        for n, before in held.items():
            w = float(before.norm())
            if w > 0:
                moved[n] = float((params[n].detach() - before).norm()) / w
        bound = RUN_STEPS * MAX_RATIO
        over = sorted((n for n, r in moved.items() if r > bound), key=lambda n: -moved[n])
        if over:
            self._alert_ratio(
                step,
                tuple(over),
                moved[over[0]],
                bound,
                f"the {RUN_STEPS} steps after step {start} moved",
            )

    def _judge_gradient(self, step: int, total: float) -> None:
        if self.max_grad_norm is not None and total > self.max_grad_norm * CLIP_SLACK:
            self._alert(
                "clip_not_applied", step, (), total, self.max_grad_norm * CLIP_SLACK,
                f"the gradient the optimizer applied has norm {_g(total)} above the clip "
                f"threshold {_g(self.max_grad_norm)}: the clip never ran on these gradients "
                "(clipped before backward, a copy clipped, or clipping overridden)",
            )  # fmt: skip
        if len(self._early_norms) < EARLY:
            if total > 0:
                self._early_norms.append(total)
            return
        reference = _median(self._early_norms)
        bound = GRAD_EXPLOSION * reference
        if total > bound:
            self._alert(
                "grad_explosion", step, (), total, bound,
                f"the gradient norm {_g(total)} is more than {GRAD_EXPLOSION:g}x its early "
                f"median {_g(reference)}: the loss surface steepened (a learning rate too "
                "high, an unnormalised activation growing); clip or lower the lr",
            )  # fmt: skip

    def _judge_depth(self, step: int, stats: dict[str, Any]) -> None:
        modules = dict(self.model.named_modules())
        values = []
        for name, s in stats.items():
            rms = s.bias_rms if s.bias_rms is not None else s.matrix_rms
            if rms and s.matrix_rms is not None and math.isfinite(rms):
                values.append((name, (), rms))
        groups = []
        for pattern, members in repeated(values, modules):
            total, slope = trend([v for _, v in members])
            layers = tuple(n for n, _ in members)
            groups.append(_Trend(pattern, layers, total, math.exp(abs(slope)), slope))
        found = worst(
            groups, grows=lambda g: g.slope < 0, max_growth=MAX_GROWTH,
            max_decay=MAX_DECAY, min_rate=MIN_RATE,
        )  # fmt: skip
        if found is not None:
            grows = found.slope < 0
            self._alert(
                "depth_trend", step, found.layers, found.trend, MAX_GROWTH if grows else MAX_DECAY,
                f"the gradient {'grows' if grows else 'shrinks'} {_g(found.trend)}x toward the "
                f"input along {found.pattern} ({_g(found.rate)}x per layer; up to "
                f"{_g(MAX_GROWTH if grows else MAX_DECAY)}x allowed, assert_gradient_ratio's "
                "rule on each layer's bias gradient, Nielsen's speed of learning): "
                + ("exploding gradients; scale the init down" if grows else
                   "vanishing gradients; use ReLU/GELU, a normalisation or residual connections"),
            )  # fmt: skip

    def _judge_units(self, step: int) -> None:
        worst_fraction = 0.0
        touched, self._touched = self._touched, {}
        for name, _ in self._units():
            if name not in touched:
                continue
            zero = ~touched[name]
            alive = self._alive.get(name)
            run = self._zero_run.get(name)
            if alive is None or run is None or alive.shape != zero.shape:
                self._alive[name], self._zero_run[name] = (
                    ~zero,
                    torch.zeros_like(zero, dtype=torch.int),
                )
                continue
            run = torch.where(zero, run + 1, torch.zeros_like(run))
            self._zero_run[name] = run
            judged = int(alive.sum())
            dead = int(((run >= DEAD_WINDOW) & alive).sum())
            self._alive[name] = alive | ~zero
            if not judged:
                continue
            fraction = dead / judged
            worst_fraction = max(worst_fraction, fraction)
            if fraction > MAX_DYING_FRACTION:
                self._alert(
                    "dead_units", step, (name,), fraction, MAX_DYING_FRACTION,
                    f"{dead} of {judged} units that had a gradient got none in {DEAD_WINDOW} "
                    f"windows in a row of {DEAD_STEPS} steps each ({_g(100 * fraction)}%; up to "
                    f"{MAX_DYING_FRACTION:.0%} allowed, assert_no_dying_units's bound): dead "
                    "ReLUs after a high learning rate; lower it, or use LeakyReLU/GELU",
                )  # fmt: skip
        self._metrics["max_dead_fraction"] = worst_fraction

    # -- localising a non-finite value ---------------------------------------------------------

    def _arm(self) -> None:
        order = [0]
        records = self._records
        records.clear()

        def pre(name: str) -> Any:
            def hook(module: torch.nn.Module, args: Any, kwargs: Any) -> None:
                records[name] = [order[0], _finite((args, kwargs)), None, None]
                order[0] += 1

            return hook

        def post(name: str) -> Any:
            def hook(module: torch.nn.Module, args: Any, kwargs: Any, output: Any) -> None:
                r = records.get(name)
                if r is not None and r[2] is None:
                    own = [p.detach() for p in module.parameters(recurse=False)]
                    r[2], r[3] = _finite(own), _finite(output)
                if module is self.model:
                    self._localise()

            return hook

        for name, m in self.model.named_modules():
            self._probe.append(m.register_forward_pre_hook(pre(name), with_kwargs=True))
            self._probe.append(m.register_forward_hook(post(name), with_kwargs=True))

    def _disarm(self) -> None:
        for h in self._probe:
            h.remove()
        self._probe = []
        if self._grad_hook is not None:
            self._grad_hook.remove()
            self._grad_hook = None

    def _localise(self) -> None:
        assert self._pending is not None
        step, value = self._pending
        self._pending = None
        self._disarm()
        done = {n: r for n, r in self._records.items() if r[3] is not None}
        self._records = {}
        producers = [n for n, (_, ins, _, out) in done.items() if ins and not out]
        inner = [
            n
            for n in producers
            if not any(o != n and (n == "" or o.startswith(n + ".")) for o in producers)
        ]
        inner.sort(key=lambda n: done[n][0])
        poisoned = [n for n in inner if not done[n][2]]
        what = "loss" if math.isnan(value) or math.isinf(value) else "value"
        if not done:
            where: tuple[str, ...] = ()
            text = (
                f"the {what} is {value}; no forward of the model ran after it to localise the cause"
            )
        elif not inner and any(not r[1] for r in done.values()):
            where = ()
            fed = min((n for n, r in done.items() if not r[1]), key=lambda n: done[n][0])
            text = (
                f"the {what} is {value}; on the next forward the inputs of {fed or 'the model'} "
                "were already non-finite: the batch, or code outside the modules (a "
                "training_step, a transform) made it"
            )
        elif not inner:
            where = ()
            text = (
                f"the {what} is {value}; the next forward was finite in every module (a "
                "transient: one batch with a NaN/Inf, or an overflow in the loss function)"
            )
        elif poisoned:
            where = tuple(poisoned)
            text = (
                f"the {what} is {value}, and the optimizer step applied it: these modules' "
                "parameters are non-finite now; call observe(loss) before optimizer.step() so "
                "the monitor can skip that step and find the module that produced it"
            )
        else:
            where = (inner[0],)
            label = inner[0] or type(self.model).__name__ + " (the model's own forward)"
            text = (
                f"the {what} is {value}; on the next forward, {label} produced a non-finite "
                "output from finite inputs and parameters (its own forward's operations: a log "
                "or sqrt of a negative, a division by zero, an overflow)"
            )
        self._alert("non_finite", step, where, value, math.inf, text)


@dataclass(frozen=True)
class _Trend:
    pattern: str
    layers: tuple[str, ...]
    trend: float  # total change along the group
    rate: float  # change per layer
    slope: float  # of log gradient RMS on forward position: < 0 grows toward the input


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    return ordered[n // 2] if n % 2 else 0.5 * (ordered[n // 2 - 1] + ordered[n // 2])


def _total_norm(params: Iterable[torch.nn.Parameter]) -> float:
    """The 2-norm over all gradients, each parameter once (``named_parameters`` drops a tied
    weight's second name, e.g. GPT-2's ``lm_head.weight``): the norm ``clip_grad_norm_`` clips.
    Summing the per-module norms would count a tied matrix once per module that holds it."""
    grads = [p.grad.detach() for p in params if p.grad is not None]
    grads = [g.to_dense() if g.is_sparse else g for g in grads]
    if not grads:
        return 0.0
    norms = torch._foreach_norm(grads, 2, dtype=torch.float32)  # float16 norms overflow at 65504
    return float(torch.linalg.vector_norm(torch.stack([n.to(norms[0].device) for n in norms])))


def _near_zero(w: torch.Tensor) -> bool:
    """assert_update_ratio's rule: a matrix *starting* below NEAR_ZERO / sqrt(fan_in) (a zero-init
    LoRA B, ViT's class token at std 1e-6) grows like a bias; its relative change says nothing
    about the learning rate. Applied to the matrix at the run's first measured step, not on each
    step: re-judged as it grows, timm's ViT-Tiny class token crossed the threshold at step 4 of
    Adam 3e-4 and, at an RMS of a few steps' updates, read ratios of 0.11-0.18 (about 1 / steps
    taken) on a healthy run. Such a matrix stays unjudged for the whole run; the others catch a
    learning rate too high."""
    fan_in = w.numel() // w.shape[0]
    return float(w.double().square().mean().sqrt()) < NEAR_ZERO / math.sqrt(fan_in)


_INSIDE = (os.path.dirname(os.path.dirname(__file__)), os.path.dirname(torch.__file__))


def _caller_level() -> int:
    """The ``stacklevel`` of the first frame outside nnsanity and torch (the user's
    ``optimizer.step()``, ``monitor.observe`` or framework call), so the warning points there
    rather than into torch's hook dispatch."""
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_INSIDE):
        frame, level = frame.f_back, level + 1
    return level


def _scaler_on_stack() -> Any:
    frame = sys._getframe(1)
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, torch.amp.GradScaler):
            return candidate
        frame = frame.f_back  # type: ignore[assignment]
    return None
