"""Step forensics: what the user's step did to its optimizer, recorded while a check runs it, and
named first when it is why the check failed; each planted step bug beside its healthy twin."""

from __future__ import annotations

import pytest
import torch
from causes import cause_ids
from torch import nn
from torch.nn import functional as F

import nnsanity as ns

pytestmark = pytest.mark.usefixtures("one_thread")


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 5))


def learnable(n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 20, generator=g)
    return x, (x @ torch.randn(20, 5, generator=g)).argmax(1)


def scheduled(model: nn.Module, schedule: str):
    """A step whose scheduler is stepped every batch: per-epoch StepLR (the bug), a LambdaLR
    whose lambda returns a rate (the bug), or one that returns a factor (healthy)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    if schedule == "step_per_batch":
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=20, gamma=0.1)
    elif schedule == "lambda_rate":
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: 0.01 * 0.999**it)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: 0.999**it)

    def step(batch):
        x, y = batch
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        sched.step()
        return loss

    return step


def test_an_epoch_scheduler_stepped_every_batch_is_named_with_the_lr_it_fell_to():
    model = mlp()
    r = ns.measure_overfit(model, learnable(), F.cross_entropy,
                           step=scheduled(model, "step_per_batch"))  # fmt: skip
    assert not r.passed and cause_ids(r)[0] == "lr_collapsed"
    assert r.forensics is not None and r.forensics.schedulers == ("StepLR",)
    assert r.forensics.lr_at(0) == pytest.approx(0.01)
    assert r.forensics.lr_at(20) == pytest.approx(0.001)  # one decade per 20 steps
    healthy = mlp()
    assert ns.measure_overfit(healthy, learnable(), F.cross_entropy,
                              step=scheduled(healthy, "lambda_factor")).passed  # fmt: skip


def test_a_lambda_that_returns_a_rate_is_named_as_the_lr_squared():
    model = mlp()
    r = ns.measure_overfit(model, learnable(), F.cross_entropy,
                           step=scheduled(model, "lambda_rate"))  # fmt: skip
    assert not r.passed and cause_ids(r)[0] == "lr_schedule_squared"
    assert r.forensics is not None
    assert r.forensics.initial_lrs == (pytest.approx(0.01),)
    assert r.forensics.lr_at(0) == pytest.approx(0.01**2)


def conv_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 2, 1))


def pixels() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 3, 12, 12, generator=g)
    return x, (F.avg_pool2d(x[:, :1], 5, 1, 2) > 0).long()[:, 0]


def amp_step(model: nn.Module, unscale_first: bool):
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu")

    def step(batch):
        x, y = batch
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        if unscale_first:
            scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        return loss

    return step


def test_clipping_before_unscale_is_named_from_the_norm_the_clip_saw():
    model = conv_net()
    r = ns.measure_loss_decrease(model, pixels(), F.cross_entropy, step=amp_step(model, False))
    assert not r.passed and r.step_problem == "clip_before_unscale"
    assert cause_ids(r)[0] == "clip_before_unscale"
    f = r.forensics
    assert f is not None and f.scaler and f.clipped_scaled
    assert f.grad_ratio is not None and f.grad_ratio < 1e-3  # 1 / (65536 x |g|)
    healthy = conv_net()
    fixed = ns.measure_loss_decrease(healthy, pixels(), F.cross_entropy,
                                     step=amp_step(healthy, True))  # fmt: skip
    assert fixed.passed and fixed.forensics is not None and not fixed.forensics.clipped_scaled


def plain_step(model: nn.Module, *, zero_grad: bool = True, micro: int = 1, divide: int = 1):
    """SGD; ``micro`` micro-batches per step, each loss divided by ``divide``."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05)

    def step(batch):
        x, y = batch
        if zero_grad:
            opt.zero_grad()
        total = 0.0
        for xs, ys in zip(x.chunk(micro), y.chunk(micro), strict=True):
            loss = F.cross_entropy(model(xs), ys) / divide
            loss.backward()
            total += float(loss.detach()) * divide / micro
        opt.step()
        return total

    return step


def test_a_step_that_never_zeroes_its_gradients_is_caught_by_the_hooks():
    model = mlp()
    r = ns.measure_loss_decrease(model, learnable(), F.cross_entropy,
                                 step=plain_step(model, zero_grad=False))  # fmt: skip
    assert not r.passed and r.accumulates_gradients is True
    assert cause_ids(r)[0] == "missing_zero_grad"
    assert r.forensics is not None and r.forensics.zero_grad is False
    healthy = mlp()
    fixed = ns.measure_loss_decrease(healthy, learnable(), F.cross_entropy,
                                     step=plain_step(healthy))  # fmt: skip
    assert fixed.passed and fixed.forensics is not None and fixed.forensics.zero_grad is True


def test_a_loss_divided_twice_under_gradient_accumulation_is_named_with_the_ratio():
    model = mlp()
    r = ns.measure_loss_decrease(model, learnable(), F.cross_entropy,
                                 step=plain_step(model, micro=4, divide=16))  # fmt: skip
    assert not r.passed and r.step_problem == "gradient_scaled"
    assert cause_ids(r)[0] == "gradient_scaled"
    f = r.forensics
    assert f is not None and f.backward_passes == 4
    assert f.grad_ratio == pytest.approx(0.25, rel=1e-3) and f.grad_cosine > 0.999
    healthy = mlp()
    fixed = ns.measure_loss_decrease(healthy, learnable(), F.cross_entropy,
                                     step=plain_step(healthy, micro=4, divide=4))  # fmt: skip
    assert fixed.passed
    assert fixed.forensics is not None and fixed.forensics.grad_ratio == pytest.approx(1, rel=1e-3)


def test_a_learning_rate_of_zero_is_named_when_nothing_changes():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)

    def step(batch):
        opt.zero_grad()
        loss = F.cross_entropy(model(batch[0]), batch[1])
        loss.backward()
        opt.step()
        return loss

    r = ns.measure_params_update(model, learnable(), F.cross_entropy, step=step)
    assert not r.passed and cause_ids(r)[0] == "lr_zero"


def test_without_a_user_step_there_is_nothing_to_record():
    r = ns.measure_loss_decrease(mlp(), learnable(), F.cross_entropy)
    assert r.forensics is None


def test_forensics_leave_torch_and_the_model_as_they_were():
    from state_oracle import assert_restores

    model = mlp()
    clip = torch.nn.utils.clip_grad._clip_grads_with_norm_
    r = assert_restores(
        lambda: ns.measure_loss_decrease(model, learnable(), F.cross_entropy,
                                         step=plain_step(model)),
        model,
    )  # fmt: skip
    assert r.forensics is not None
    assert torch.nn.utils.clip_grad._clip_grads_with_norm_ is clip
