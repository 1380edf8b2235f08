"""``MonitorCallback`` for the Hugging Face ``Trainer``: ``Trainer(..., callbacks=[...])``.

Where it measures: the Trainer hands its callbacks no loss before the step, so a forward hook on
the model reads ``outputs.loss`` of each training forward (grad enabled, train mode; the mean of
the micro-batches under gradient accumulation), observed in ``on_pre_optimizer_step``, after the
Trainer clipped (``args.max_grad_norm``, the monitor's ``max_grad_norm``) and before it steps; a
model that returns no ``loss`` (a custom ``compute_loss_func``) gives no loss alerts. Gradients
and updates come from ``torch.optim``'s post-step hook on the optimizer accelerate wraps. This
sees the NaN loss that ``logging_nan_inf_filter=True`` hides from the logs. Metrics are added
(under ``nnsanity/``) in ``on_log`` to the record ``Trainer.log`` just appended to
``trainer.state.log_history`` and to the logs the callbacks after this one see. The Trainer
registers the ``report_to`` integrations before user callbacks, so those reporters (TensorBoard,
W&B) have already run when ``on_log`` reaches it: to send the metrics there, put this callback
first with ``trainer.callback_handler.callbacks.insert(0, ...)`` or log ``monitor.metrics()``
from your own code.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import transformers

from nnsanity.monitor import Alert, TrainingMonitor

__all__ = ["MonitorCallback"]

log = logging.getLogger("nnsanity.monitor")


class MonitorCallback(transformers.TrainerCallback):
    """Run a :class:`~nnsanity.TrainingMonitor` over ``trainer.train()``; ``.monitor`` is it.

    ``monitor_kwargs`` go to the monitor; ``on_alert="stop"`` logs each alert and sets
    ``control.should_training_stop``, the Trainer's way of ending a run after the step.
    ``max_grad_norm`` defaults to ``args.max_grad_norm`` (the Trainer clips at 1.0 by default).
    """

    def __init__(self, **monitor_kwargs: Any) -> None:
        self.monitor_kwargs = monitor_kwargs
        self.monitor: TrainingMonitor | None = None
        self._losses: list[torch.Tensor] = []
        self._hook: Any = None
        self._stop = False

    def _stopping(self, alert: Alert) -> None:
        log.warning(alert.message)
        self._stop = True

    def _capture(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        loss = output.get("loss") if isinstance(output, dict) else getattr(output, "loss", None)
        if isinstance(loss, torch.Tensor) and module.training and torch.is_grad_enabled():
            self._losses.append(loss.detach().float().mean())

    def on_train_begin(
        self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any
    ) -> None:
        if model is None:
            return
        options = dict(self.monitor_kwargs)
        if options.get("on_alert") == "stop":
            options["on_alert"] = self._stopping
        if "max_grad_norm" not in options and args.max_grad_norm and args.max_grad_norm > 0:
            options["max_grad_norm"] = float(args.max_grad_norm)
        self.monitor = TrainingMonitor(model, **options)
        self._hook = model.register_forward_hook(self._capture)
        self.monitor.__enter__()

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.monitor is None or not self._losses:
            return
        loss = torch.stack(self._losses).mean()
        self._losses = []
        self.monitor.observe(loss)
        self.monitor.guard()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._stop:
            control.should_training_stop = True

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:  # fmt: skip
        if self.monitor is None or logs is None:
            return
        metrics = {f"nnsanity/{k}": v for k, v in self.monitor.metrics().items()}
        logs.update(metrics)  # for the callbacks after this one
        # Trainer.log appended a copy of `logs` to the history before calling on_log
        last = state.log_history[-1] if state.log_history else None
        if isinstance(last, dict) and last.get("step") == state.global_step:
            last.update(metrics)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self.monitor is not None and self.monitor._handles:
            self.monitor.__exit__(None, None, None)
