"""TrainingMonitor on real CPU runs of a plain loop: each planted run-time bug caught with the
right kind at the right step (and place), healthy runs without any alert."""

from __future__ import annotations

import importlib
import math
import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import nnsanity
from nnsanity.monitor import MAX_SKIPS, MonitorWarning

D, CLASSES, BATCH = 20, 10, 32


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Single-threaded, as the shared machine asks."""


def teacher_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fresh batch each step of a learnable task: the class is the argmax of a fixed linear
    teacher, so the loss falls the way a real one does, with mini-batch noise."""
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(BATCH, D, generator=g)
    w = torch.Generator().manual_seed(7)
    teacher = torch.randn(D, CLASSES, generator=w)
    return x, (x @ teacher).argmax(1)


def mlp(seed: int = 0, act: type[nn.Module] = nn.ReLU, hidden: int = 32, depth: int = 2):
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(D, hidden), act()]
    for _ in range(depth - 1):
        layers += [nn.Linear(hidden, hidden), act()]
    return nn.Sequential(*layers, nn.Linear(hidden, CLASSES))


class Block(nn.Module):
    """A parent whose own forward computes between its children (where NaNs are born)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(D, 32), nn.Linear(32, 32)
        self.poison = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        if self.poison:
            h = torch.log(h)  # negative pre-activations: NaN
        return self.fc2(torch.relu(h))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.block = Block()
        self.head = nn.Linear(32, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(x))


def train(
    model,
    steps,
    *,
    plant=None,
    lr=1e-3,
    every=10,
    on_alert=None,
    clip=None,
    zero_grad=True,
    accumulate=1,
    **kwargs,
):
    """A plain loop: forward, backward, observe, step. ``plant(step, model, opt)`` plants a bug
    before the step's forward. Returns the monitor."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    found: list[nnsanity.Alert] = []
    with nnsanity.TrainingMonitor(
        model, every=every, on_alert=on_alert or found.append, **kwargs
    ) as monitor:
        for step in range(steps):
            if plant is not None:
                plant(step, model, opt)
            x, y = teacher_batch(step)
            if accumulate > 1:  # healthy accumulation: micro-batches, then one step
                for micro in range(accumulate - 1):
                    (F.cross_entropy(model(x[micro::accumulate]), y[micro::accumulate])).backward()
            loss = F.cross_entropy(model(x), y)
            if zero_grad and accumulate == 1:
                opt.zero_grad()
            if clip == "before_backward":  # the bug: clipping gradients that are not there yet
                torch.nn.utils.clip_grad_norm_(model.parameters(), kwargs["max_grad_norm"])
            loss.backward()
            if clip == "applied":
                torch.nn.utils.clip_grad_norm_(model.parameters(), kwargs["max_grad_norm"])
            monitor.observe(loss)
            opt.step()
            if accumulate > 1:
                opt.zero_grad()
    assert found == list(monitor.alerts) or on_alert is not None
    return monitor


def first(monitor):
    assert monitor.alerts, "no alert"
    return monitor.alerts[0]


# -- healthy runs --------------------------------------------------------------------------------


@pytest.mark.parametrize("act", [nn.ReLU, nn.Tanh, nn.GELU])
def test_a_healthy_run_raises_no_alert(act):
    monitor = train(mlp(act=act, depth=3), 300)
    assert monitor.alerts == ()
    monitor.assert_healthy()
    m = monitor.metrics()
    assert m["loss"] < 1.5 and m["alerts"] == 0 and m["grad_norm"] > 0


def test_a_healthy_run_with_clipping_applied_raises_no_alert():
    monitor = train(mlp(), 100, clip="applied", max_grad_norm=0.05)
    assert monitor.alerts == ()


class TiedLM(nn.Module):
    """An embedding whose matrix is also the output layer's (GPT-2's wte and lm_head)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(CLASSES, D)
        self.mix = nn.Linear(D, D)
        self.head = nn.Linear(D, CLASSES, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.mix(self.embed(x))))


def test_a_clipped_run_of_a_tied_model_is_judged_on_the_norm_the_clip_applied():
    # the total counts each parameter once, as clip_grad_norm_ does: summed per module, the tied
    # matrix would count twice, and the clipped norm read as above the threshold
    model = TiedLM()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    found: list[nnsanity.Alert] = []
    with nnsanity.TrainingMonitor(model, every=1, max_grad_norm=0.1, on_alert=found.append) as m:
        for step in range(20):
            x = torch.randint(0, CLASSES, (BATCH,), generator=torch.Generator().manual_seed(step))
            loss = F.cross_entropy(model(x), (x + 1) % CLASSES)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
            m.observe(loss)
            opt.step()
    assert found == []
    assert m.metrics()["grad_norm"] == pytest.approx(0.1, rel=1e-4)


class WithToken(nn.Module):
    """A learned offset started at std 1e-6, as ViT's class token: it grows like a bias."""

    def __init__(self) -> None:
        super().__init__()
        self.net = mlp()
        self.token = nn.Parameter(1e-6 * torch.randn(1, 1, D))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x + self.token[0])


def test_a_matrix_grown_from_near_zero_is_not_judged_by_its_update_ratio():
    # judged afresh on each step, the token's ratio is ~1 / steps taken once it passes the
    # near-zero threshold (0.28 at step 3 here): a false update_ratio on a healthy run
    monitor = train(WithToken(), 60, every=1)
    assert monitor.alerts == ()
    assert monitor.state_dict()["from_zero"] == ["token"]


def test_the_measuring_part_is_a_gradient_monitor_recording_each_measured_step():
    monitor = train(mlp(), 50, every=10)
    assert isinstance(monitor.gradients, nnsanity.GradientMonitor)
    assert len(monitor.gradients.history) == 5
    assert monitor.gradients.layers == ["0", "2", "4"]
    assert monitor.gradients.as_array("weight").shape == (5, 3)


# -- planted bugs --------------------------------------------------------------------------------


def test_a_nan_made_in_a_parents_forward_is_localised_to_that_parent():
    def plant(step, model, opt):
        model.block.poison = step >= 150

    monitor = train(Net(), 200, plant=plant)
    a = first(monitor)
    assert (a.kind, a.step, a.where) == ("non_finite", 150, ("block",))
    assert math.isnan(a.value) and "block produced" in a.message
    assert all(torch.isfinite(p).all() for p in monitor.model.parameters())  # the step skipped


def test_a_non_finite_loss_raises_by_default_after_localising_it():
    model = Net()

    def plant(step, model, opt):
        model.block.poison = step >= 30

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MonitorWarning)
        with pytest.raises(nnsanity.SanityError, match=r"non_finite at step 30 in block"):
            train(model, 60, plant=plant, on_alert="warn")


def test_a_nan_observed_after_the_step_names_the_poisoned_modules():
    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    found: list[nnsanity.Alert] = []
    with nnsanity.TrainingMonitor(model, on_alert=found.append) as monitor:
        for step in range(40):
            model.block.poison = step == 20  # one bad step
            x, y = teacher_batch(step)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            monitor.observe(loss)  # too late to skip the step
    a = found[0]
    assert a.kind == "non_finite" and a.step == 20
    assert "block.fc1" in a.where and "parameters are non-finite" in a.message


def test_a_learning_rate_multiplied_1000x_mid_run_is_caught_at_once():
    def plant(step, model, opt):
        if step == 150:
            for g in opt.param_groups:
                g["lr"] *= 1000

    monitor = train(mlp(), 200, plant=plant)
    a = first(monitor)
    assert a.step == 150 and a.kind == "update_ratio"  # step 150 is a measured one (every=10)
    kinds = {x.kind for x in monitor.alerts if x.step <= 152}
    assert "loss_spike" in kinds


def test_a_learning_rate_multiplied_1000x_between_measured_steps_spikes_the_loss():
    def plant(step, model, opt):
        if step == 155:
            for g in opt.param_groups:
                g["lr"] *= 1000

    a = first(train(mlp(), 200, plant=plant))
    assert (a.kind, a.step) == ("loss_spike", 156)  # the first loss the big step moved


def test_a_learning_rate_set_to_zero_is_no_update():
    def plant(step, model, opt):
        if step == 150:
            for g in opt.param_groups:
                g["lr"] = 0.0

    a = first(train(mlp(), 200, plant=plant))
    assert (a.kind, a.step) == ("no_update", 151)  # lr 0 on two steps in a row


def test_a_schedule_stepped_per_batch_is_named_when_the_weights_stop_moving():
    def plant(step, model, opt):
        for g in opt.param_groups:
            g["lr"] = 1e-3 * 0.1 ** (step // 10)  # StepLR(step_size=10, gamma=0.1) per batch

    found = [a for a in train(mlp(), 200, plant=plant).alerts if a.kind == "no_update"]
    assert found and "schedule stepped per batch" in found[0].message


def test_gradients_never_zeroed_are_named_at_the_first_step():
    monitor = train(mlp(), 60, zero_grad=False)
    a = first(monitor)
    assert (a.kind, a.step) == ("grads_not_zeroed", 1) and len(a.where) == 1


def test_gradient_accumulation_that_zeroes_after_each_step_is_no_alert():
    assert train(mlp(), 60, accumulate=2).alerts == ()


def test_a_warm_up_from_zero_is_not_no_update():
    def plant(step, model, opt):
        for g in opt.param_groups:
            g["lr"] = 3e-4 * min(1.0, step / 20)

    assert train(mlp(), 100, plant=plant).alerts == ()


def test_units_killed_mid_run_are_dead_units_in_that_layer():
    def plant(step, model, opt):
        if step == 150:
            with torch.no_grad():
                model[0].bias[:24] = -100.0  # 24 of 32 ReLUs never fire again

    # the window ending at step 150 saw 7 steps before the kill; those ending at 160 and 170
    # are all zero: the second window in a row alerts
    a = first(train(mlp(), 200, plant=plant))
    assert (a.kind, a.step, a.where) == ("dead_units", 170, ("0",))
    assert a.value == pytest.approx(24 / 32) and a.bound == 0.5


def test_a_deep_sigmoid_mlp_is_a_vanishing_depth_trend():
    a = first(train(mlp(act=nn.Sigmoid, depth=8), 30))
    assert (a.kind, a.step) == ("depth_trend", 0)
    assert a.where[0] == "2" and "shrinks" in a.message and a.value > a.bound


def test_a_clip_that_is_never_applied_is_caught_on_the_first_measured_step():
    a = first(train(mlp(), 30, clip="before_backward", max_grad_norm=0.05))
    assert (a.kind, a.step) == ("clip_not_applied", 0) and a.bound == pytest.approx(0.0505)


def test_a_grad_scaler_whose_scale_collapses_is_amp_skips():
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    scaler = torch.amp.GradScaler("cpu")
    found: list[nnsanity.Alert] = []
    with nnsanity.TrainingMonitor(model, every=10, on_alert=found.append) as monitor:
        for step in range(100):
            x, y = teacher_batch(step)
            h = model[0](x)
            if step >= 50:  # the gradient overflows at any scale from step 50 on
                h.register_hook(lambda g: g * math.inf)
            loss = F.cross_entropy(model[1:](h), y)
            opt.zero_grad()
            scaler.scale(loss).backward()
            monitor.observe(loss)
            scaler.step(opt)
            scaler.update()
    a = found[0]
    assert (a.kind, a.step) == ("amp_skips", 50 + MAX_SKIPS - 1)
    assert scaler.get_scale() < 1 and monitor.scaler is scaler


# -- the API -------------------------------------------------------------------------------------


def test_assert_healthy_lists_every_alert():
    def plant(step, model, opt):
        if step == 150:
            for g in opt.param_groups:
                g["lr"] = 0.0

    monitor = train(mlp(), 200, plant=plant)
    with pytest.raises(nnsanity.SanityError, match=r"no_update at step 151") as e:
        monitor.assert_healthy()
    assert e.value.result == monitor.alerts


def test_warn_logs_every_alert_and_warns_once_per_kind(caplog):
    def plant(step, model, opt):
        if step >= 150:
            for g in opt.param_groups:
                g["lr"] = 0.0

    with pytest.warns(MonitorWarning, match="no_update") as record:
        monitor = train(mlp(), 300, plant=plant, on_alert="warn")
    assert len(monitor.alerts) >= 2 and len(record) == 1
    assert sum("no_update" in r.message for r in caplog.records) == len(monitor.alerts)


def test_raise_stops_the_run_at_the_first_alert():
    def plant(step, model, opt):
        if step == 150:
            for g in opt.param_groups:
                g["lr"] = 0.0

    with pytest.raises(nnsanity.SanityError, match="no_update at step 151"):
        train(mlp(), 200, plant=plant, on_alert="raise")


def test_a_resumed_run_judges_as_if_it_never_stopped():
    def plant(step, model, opt):
        if step == 150:
            with torch.no_grad():
                model[0].bias[:24] = -100.0

    model = mlp()
    whole = train(mlp(), 200, plant=plant)
    first_half = train(model, 155, plant=plant)
    state = first_half.state_dict()
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    found: list[nnsanity.Alert] = []
    resumed = nnsanity.TrainingMonitor(model, every=10, on_alert=found.append)
    resumed.load_state_dict(state)
    with resumed:
        for step in range(155, 200):
            x, y = teacher_batch(step)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            resumed.observe(loss)
            opt.step()
    assert [(a.kind, a.step) for a in resumed.alerts] == [(a.kind, a.step) for a in whole.alerts]
    with pytest.raises(ValueError, match="state_dict"):
        resumed.load_state_dict({"step": 3})


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="on_alert"):
        nnsanity.TrainingMonitor(mlp(), on_alert="print")
    with pytest.raises(ValueError, match="every"):
        nnsanity.TrainingMonitor(mlp(), every=0)
    with pytest.raises(ValueError, match="max_grad_norm"):
        nnsanity.TrainingMonitor(mlp(), max_grad_norm=-1)
    with pytest.raises(TypeError, match="not a factory"):
        nnsanity.TrainingMonitor(mlp(), optimizer=torch.optim.SGD)
    monitor = nnsanity.TrainingMonitor(mlp())
    with pytest.raises(ValueError, match=r"loss\.mean"):
        monitor.observe(torch.ones(3))
    with pytest.raises(TypeError, match="loss tensor"):
        monitor.observe("1.0")


def test_the_monitor_leaves_no_hook_behind():
    model = Net()

    def plant(step, model, opt):
        model.block.poison = step == 5

    train(model, 20, plant=plant)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    hooks = torch.optim.Optimizer.__module__
    registry = importlib.import_module(hooks)
    before = dict(registry._global_optimizer_pre_hooks), dict(registry._global_optimizer_post_hooks)
    with nnsanity.TrainingMonitor(model):
        assert len(registry._global_optimizer_pre_hooks) == len(before[0]) + 1
    after = dict(registry._global_optimizer_pre_hooks), dict(registry._global_optimizer_post_hooks)
    assert after == before


@pytest.mark.parametrize(("lr", "alerts"), [(1.0, False), (100.0, True)])
def test_the_mnist_examples_adadelta_recipe_is_judged_over_ten_steps_like_the_check(lr, alerts):
    # Adadelta's first steps move fc1 by ~18% of its norm whatever the gradient (lr 1.0 is the
    # example's own); 100x that lr moves it past its own norm within the ten steps
    import mnist_recipe

    model = mnist_recipe.mnist_net(0)
    opt = torch.optim.Adadelta(model.parameters(), lr=lr)
    found: list[nnsanity.Alert] = []
    with nnsanity.TrainingMonitor(model, every=10, on_alert=found.append) as monitor:
        for step in range(21):
            x, y = mnist_recipe.digits(32, step)
            opt.zero_grad()
            loss = F.nll_loss(model(x), y)
            loss.backward()
            monitor.observe(loss)
            opt.step()
    ratio = [a for a in found if a.kind == "update_ratio"]
    assert bool(ratio) == alerts, found
    assert alerts or found == []
