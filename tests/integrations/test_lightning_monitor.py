"""The Lightning adapter on a real ``lightning.Trainer.fit`` (CPU, a few hundred steps)."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

pl = pytest.importorskip("lightning.pytorch")
from test_monitor import Net, mlp, teacher_batch  # noqa: E402

from nnsanity.integrations.lightning import MonitorCallback  # noqa: E402

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore::lightning.fabric.utilities.warnings.PossibleUserWarning"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning"),
]


class Classifier(pl.LightningModule):
    def __init__(self, act=torch.nn.ReLU, clip_overridden=False):
        super().__init__()
        self.net = mlp(act=act, depth=3)
        self.clip_overridden = clip_overridden
        self.poison_at: int | None = None

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.poison_at is not None:
            self.net.block.poison = self.global_step >= self.poison_at
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ):
        if not self.clip_overridden:  # the bug: an override that forgets to clip
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)


def loader(steps):
    xs, ys = zip(*(teacher_batch(s) for s in range(steps)))
    return DataLoader(TensorDataset(torch.cat(xs), torch.cat(ys)), batch_size=32)


def fit(module, steps, callback, **trainer_kwargs):
    trainer = pl.Trainer(
        max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[callback],
        **trainer_kwargs,
    )  # fmt: skip
    trainer.fit(module, loader(steps))
    return trainer


def test_a_healthy_fit_raises_no_alert_and_logs_the_metrics():
    callback = MonitorCallback(every=10, on_alert="raise")
    trainer = fit(Classifier(), 300, callback, gradient_clip_val=1.0)
    assert callback.monitor is not None and callback.monitor.step == 300
    assert callback.monitor.alerts == () and callback.monitor.max_grad_norm == 1.0
    assert trainer.callback_metrics["nnsanity/grad_norm"] > 0


def test_a_clip_lightning_never_applies_is_caught():
    found = []
    callback = MonitorCallback(every=10, on_alert=found.append)
    fit(Classifier(clip_overridden=True), 30, callback, gradient_clip_val=0.05)
    assert (found[0].kind, found[0].step) == ("clip_not_applied", 0)


def test_a_nan_stops_the_fit_with_the_module_that_made_it():
    module = Classifier()
    module.net, module.poison_at = Net(), 40
    found = []
    callback = MonitorCallback(every=10, on_alert=found.append)
    fit(module, 60, callback)
    a = found[0]
    assert (a.kind, a.step) == ("non_finite", 40)
    assert a.where == ("net.block",) and "net.block produced" in a.message


def test_stop_ends_the_fit_the_lightning_way(caplog):
    module = Classifier(act=torch.nn.Sigmoid)
    module.net = mlp(act=torch.nn.Sigmoid, depth=8)
    callback = MonitorCallback(every=10, on_alert="stop")
    trainer = fit(module, 100, callback)
    assert callback.monitor.alerts[0].kind == "depth_trend"
    assert trainer.global_step == 1 and "depth_trend" in caplog.text


def test_the_callback_state_resumes_the_monitor():
    callback = MonitorCallback(every=10, on_alert="raise")
    fit(Classifier(), 20, callback)
    state = callback.state_dict()
    again = MonitorCallback(every=10, on_alert="raise")
    again.load_state_dict(state)
    fit(Classifier(), 20, again)
    assert again.monitor.step == 40 and again.monitor.alerts == ()
