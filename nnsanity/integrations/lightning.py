"""``MonitorCallback`` for Lightning: ``Trainer(callbacks=[MonitorCallback()])``.

Where it measures: the loss in ``on_before_backward`` (the loss Lightning backpropagates, divided
by ``accumulate_grad_batches``; the micro-batches' values are summed back to the step's loss),
observed in ``on_before_optimizer_step``, after the closure ran backward and before Lightning
clips and steps; the gradients and the update in ``torch.optim``'s post-step hook, so after the
clip Lightning applies (``gradient_clip_val``, read as ``max_grad_norm`` when the algorithm is
``"norm"``) and after the precision plugin's GradScaler unscaled them (its scaler is watched).
Metrics go through ``pl_module.log_dict`` under ``nnsanity/`` on measured steps.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl
import torch

from nnsanity.monitor import Alert, TrainingMonitor

__all__ = ["MonitorCallback"]

log = logging.getLogger("nnsanity.monitor")


class MonitorCallback(pl.Callback):
    """Run a :class:`~nnsanity.TrainingMonitor` over ``trainer.fit``; ``.monitor`` is it.

    ``monitor_kwargs`` go to the monitor (``every``, ``on_alert``, ``max_grad_norm``...), and
    ``on_alert="stop"`` adds Lightning's way of stopping: each alert is logged and sets
    ``trainer.should_stop``, so the run ends cleanly after the step. ``max_grad_norm`` defaults
    to the Trainer's ``gradient_clip_val`` (algorithm ``"norm"``).
    """

    def __init__(self, **monitor_kwargs: Any) -> None:
        self.monitor_kwargs = monitor_kwargs
        self.monitor: TrainingMonitor | None = None
        self._state: dict[str, Any] | None = None
        self._losses: list[torch.Tensor] = []
        self._trainer: pl.Trainer | None = None

    def _stop(self, alert: Alert) -> None:
        log.warning(alert.message)
        if self._trainer is not None:
            self._trainer.should_stop = True

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        kwargs = dict(self.monitor_kwargs)
        if kwargs.get("on_alert") == "stop":
            kwargs["on_alert"] = self._stop
        clip = trainer.gradient_clip_val
        algorithm = trainer.gradient_clip_algorithm
        norm = str(getattr(algorithm, "value", algorithm) or "norm") == "norm"  # None: "norm"
        if "max_grad_norm" not in kwargs and clip and norm:
            kwargs["max_grad_norm"] = float(clip)
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if "scaler" not in kwargs and scaler is not None:
            kwargs["scaler"] = scaler
        self._trainer = trainer
        self.monitor = TrainingMonitor(pl_module, **kwargs)
        if self._state is not None:
            self.monitor.load_state_dict(self._state)
        self.monitor.__enter__()

    def on_before_backward(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor
    ) -> None:
        self._losses.append(loss.detach())

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        if self.monitor is None or not self._losses:
            return
        loss = torch.stack(self._losses).sum()  # each was divided by the accumulation steps
        self._losses = []
        self.monitor.observe(loss)
        self.monitor.guard()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
        batch_idx: int,
    ) -> None:  # fmt: skip
        m = self.monitor
        if m is not None and m.step and (m.step - 1) % m.every == 0:
            pl_module.log_dict({f"nnsanity/{k}": v for k, v in m.metrics().items()})

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.teardown(trainer, pl_module, "fit")

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.monitor is not None and self.monitor._handles:
            self.monitor.__exit__(None, None, None)

    def state_dict(self) -> dict[str, Any]:
        return self.monitor.state_dict() if self.monitor is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._state = state_dict or None
