"""The field reports, kept as tests: each is a kind of training bug people reported in public (or
a healthy pattern people really use), re-created as a small model on a random batch.

For a bug, the check meant for its kind must fail, and the first of the likely causes it lists
must be the cause of that kind; the fixed model must pass the same checks. For a healthy model,
every check a new user would call with default arguments must pass.

Cases kept elsewhere: 03 (a head swapped after the optimizer was built) in
tests/checks/test_params_registered.py, 05 (an inverted key_padding_mask) in
tests/checks/test_padding_invariance.py and tests/checks/test_finite.py, 06 (a token loss over
the padding) in tests/checks/test_loss_masking.py; each test there is named test_field_report_*.
Case 03 is also here, with the check the report names (assert_params_update with the user's step).
"""

from __future__ import annotations

import copy
import math
import re

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence

import nnsanity as ns
from nnsanity.errors import SanityError

pytestmark = pytest.mark.usefixtures("one_thread")


def first_cause(words: str) -> str:
    """A pattern for a message whose first numbered likely cause contains ``words``."""
    return r"(?s)Likely causes:\n  1\. [^\n]*" + re.escape(words)


def generator() -> torch.Generator:
    return torch.Generator().manual_seed(1)


def classification_batch(n=16, d=20, classes=5):
    g = generator()
    return torch.randn(n, d, generator=g), torch.randint(0, classes, (n,), generator=g)


# --- case 01: an LSTM without batch_first fed (batch, time, features) -------------------------


class LastStepClassifier(nn.Module):
    def __init__(self, batch_first: bool):
        super().__init__()
        self.rnn = nn.LSTM(8, 32, batch_first=batch_first)
        self.head = nn.Linear(32, 5)

    def forward(self, x):  # x: (batch, time, features), as a DataLoader yields it
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def test_case_01_an_lstm_without_batch_first_is_caught_naming_the_rnn_across_the_batch():
    """Fed (B, T, D), the recurrence runs over the batch: sample i sees samples 0..i-1."""
    torch.manual_seed(0)
    g = generator()
    batch = (torch.randn(16, 10, 8, generator=g), torch.randint(0, 5, (16,), generator=g))
    model = LastStepClassifier(batch_first=False)
    fixed = LastStepClassifier(batch_first=True)
    fixed.load_state_dict(model.state_dict())
    with pytest.raises(SanityError, match=first_cause("batch_first=True")):
        ns.assert_batch_independence(model, batch)
    ns.assert_batch_independence(fixed, batch)


# --- case 03: the optimizer built before a layer was replaced ---------------------------------


class BodyAndHead(nn.Module):
    def __init__(self, classes: int):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64))
        self.head = nn.Linear(64, classes)

    def forward(self, x):
        return self.head(F.relu(self.body(x)))


def training_step(model, optimizer, loss_fn=F.cross_entropy):
    def step(batch):
        x, y = batch
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        return loss

    return step


def test_case_03_a_head_swapped_after_the_optimizer_was_built_never_updates_with_the_users_step():
    torch.manual_seed(0)
    batch = classification_batch()
    model = BodyAndHead(classes=10)
    stale = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.head = nn.Linear(64, 5)  # replaced for a 5-class task after the optimizer was built
    with pytest.raises(SanityError, match=first_cause("missing from the optimizer")):
        ns.assert_params_update(model, batch, F.cross_entropy, step=training_step(model, stale))
    rebuilt = torch.optim.Adam(model.parameters(), lr=1e-3)
    ns.assert_params_update(model, batch, F.cross_entropy, step=training_step(model, rebuilt))


# --- case 04: an epoch-based LR schedule stepped every batch ----------------------------------


def scheduled_step(model, per_batch: bool):
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=30, gamma=0.1)  # meant per epoch

    def step(batch):
        x, y = batch
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        if per_batch:
            sched.step()
        return loss

    return step


def test_case_04_an_epoch_scheduler_per_batch_is_caught_naming_the_collapsed_learning_rate():
    """StepLR(30, 0.1) stepped per batch: the learning rate is 1000x smaller after 90 steps."""
    torch.manual_seed(0)
    batch = classification_batch()

    def mlp():
        return nn.Sequential(
            nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 5)
        )

    model = mlp()
    fixed = mlp()
    fixed.load_state_dict(model.state_dict())
    with pytest.raises(SanityError, match=first_cause("the learning rate collapsed")):
        ns.assert_can_overfit(
            model, batch, F.cross_entropy, step=scheduled_step(model, per_batch=True)
        )
    ns.assert_can_overfit(
        fixed, batch, F.cross_entropy, step=scheduled_step(fixed, per_batch=False)
    )


# --- case 08: a sigmoid before BCEWithLogitsLoss ----------------------------------------------


class TinySegNet(nn.Module):
    def __init__(self, sigmoid_out: bool):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 1, 1),
        )
        self.sigmoid_out = sigmoid_out

    def forward(self, x):
        logits = self.net(x)
        return torch.sigmoid(logits) if self.sigmoid_out else logits


def test_case_08_a_sigmoid_before_bce_with_logits_is_caught_naming_the_double_sigmoid_first():
    """The loss sees probabilities as logits: its floor is 0.31 to 0.69 per pixel, not 0."""
    torch.manual_seed(0)
    images = torch.randn(4, 1, 12, 12, generator=generator())
    batch = (images, (F.avg_pool2d(images, 3, 1, 1) > 0).float())  # a learnable pixel target
    loss_fn = nn.BCEWithLogitsLoss()
    model = TinySegNet(sigmoid_out=True)
    fixed = TinySegNet(sigmoid_out=False)
    fixed.load_state_dict(model.state_dict())
    with pytest.raises(SanityError, match=first_cause("sigmoid")):
        ns.assert_can_overfit(model, batch, loss_fn)
    with pytest.raises(SanityError, match=first_cause("sigmoid before BCEWithLogitsLoss")):
        ns.assert_init_loss(model, batch, loss_fn)
    ns.assert_init_loss(fixed, batch, loss_fn)
    ns.assert_loss_decreases(fixed, batch, loss_fn)
    ns.assert_can_overfit(fixed, batch, loss_fn)


# --- case 09: NLLLoss fed probabilities -------------------------------------------------------


class SoftmaxClassifier(nn.Module):
    def __init__(self, log: bool):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 5))
        self.log = log

    def forward(self, x):
        z = self.net(x)
        return F.log_softmax(z, -1) if self.log else F.softmax(z, -1)


def test_case_09_nll_loss_on_probabilities_is_caught_at_init_naming_log_probabilities():
    """nll_loss(p, y) = -mean(p[y]): the loss starts near -1/C, not at ln C, and is negative."""
    torch.manual_seed(0)
    batch = classification_batch()
    loss_fn = nn.NLLLoss()
    model = SoftmaxClassifier(log=False)
    fixed = SoftmaxClassifier(log=True)
    fixed.load_state_dict(model.state_dict())
    with pytest.raises(SanityError, match=first_cause("log-probabilities")):
        ns.assert_init_loss(model, batch, loss_fn)
    with pytest.raises(SanityError, match=first_cause("log-probabilities")):
        ns.assert_can_overfit(model, batch, loss_fn)
    ns.assert_init_loss(fixed, batch, loss_fn)
    ns.assert_can_overfit(fixed, batch, loss_fn)


# --- case 10: MSE of (N, 1) predictions against (N,) targets ----------------------------------


@pytest.mark.filterwarnings(
    r"ignore:Using a target size \(torch\.Size\(\[32\]\)\) that is different to the input size "
    r"\(torch\.Size\(\[32, 1\]\)\):UserWarning"
)
def test_case_10_an_mse_target_broadcast_to_n_by_n_is_caught_naming_the_broadcast():
    """Every output is compared with every target: the best the model can do is the mean."""
    torch.manual_seed(0)
    g = generator()
    x = torch.randn(32, 2, generator=g)
    y = 1.0 + 0.9 * x[:, 0] - 0.2 * x[:, 1] + 0.1 * torch.randn(32, generator=g)  # (N,)
    model = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 1))  # returns (N, 1)
    for check in (ns.assert_init_loss, ns.assert_can_overfit, ns.assert_uses_inputs):
        with pytest.raises(SanityError, match=first_cause("broadcast")):
            check(model, (x, y), F.mse_loss)
    fixed_batch = (x, y.unsqueeze(1))
    ns.assert_init_loss(model, fixed_batch, F.mse_loss)
    ns.assert_loss_decreases(model, fixed_batch, F.mse_loss)
    ns.assert_can_overfit(model, fixed_batch, F.mse_loss)
    ns.assert_uses_inputs(model, fixed_batch, F.mse_loss)


# --- case 11: float16 activation overflow -----------------------------------------------------


class UnscaledFeedForward(nn.Module):
    """N(0, 1) weights, as in T5's checkpoints, on a large residual stream."""

    def __init__(self):
        super().__init__()
        self.wi = nn.Linear(64, 256, bias=False)
        self.wo = nn.Linear(256, 64, bias=False)
        self.norm = nn.LayerNorm(64)
        self.head = nn.Linear(64, 5)
        nn.init.normal_(self.wi.weight, 0, 1.0)
        nn.init.normal_(self.wo.weight, 0, 1.0)

    def forward(self, x):
        x = x + self.wo(F.relu(self.wi(x)))
        return self.head(self.norm(x))


def test_case_11_a_float16_overflow_is_caught_under_autocast_and_half_naming_the_overflow():
    """Finite in float32, the output of 'wo' exceeds float16's 65504 and becomes inf."""
    torch.manual_seed(0)
    g = generator()
    batch = (200.0 * torch.randn(16, 64, generator=g), torch.randint(0, 5, (16,), generator=g))
    model = UnscaledFeedForward()
    ns.assert_finite(model, batch, F.cross_entropy)  # float32 is fine
    overflow = r"(?s)^The output of 'wo' \(Linear\) is the first non-finite value.*" + first_cause(
        "overflow"
    ).removeprefix("(?s)")
    with (
        pytest.raises(SanityError, match=overflow),
        torch.autocast("cpu", dtype=torch.float16),
    ):
        ns.assert_finite(model, batch, F.cross_entropy)
    with pytest.raises(SanityError, match=overflow):
        ns.assert_finite(copy.deepcopy(model).half(), (batch[0].half(), batch[1]), F.cross_entropy)


# --- case 13: a model reused across seeded runs -----------------------------------------------


def test_case_13_a_model_reused_across_seeded_runs_is_caught_naming_the_carried_state():
    """The seeded training cell is re-run on the model (and optimizer) built once, before it."""
    torch.manual_seed(0)
    g = generator()
    x, y = torch.randn(64, 20, generator=g), torch.randint(0, 5, (64,), generator=g)

    def build():
        model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 5))
        return model, torch.optim.SGD(model.parameters(), lr=0.1)

    def train(model, opt):
        losses = []
        for idx in torch.randperm(64).split(16):
            opt.zero_grad()
            loss = F.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            losses.append(loss.detach())
        return torch.stack(losses)

    built_once = build()
    with pytest.raises(SanityError, match=first_cause("state carried between calls")):
        ns.assert_reproducible(lambda: train(*built_once))
    ns.assert_reproducible(lambda: train(*build()))  # the fix: build inside the seeded function


# --- case 14 (healthy): a Hugging Face-style tiny causal LM -----------------------------------

V, T, D = 40, 12, 32


class PreNormBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(D), nn.LayerNorm(D)
        self.attn = nn.MultiheadAttention(D, 4, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(D, 4 * D), nn.GELU(), nn.Linear(4 * D, D))

    def forward(self, h, causal, key_pad):
        a = self.ln1(h)
        h = (
            h
            + self.attn(a, a, a, attn_mask=causal, key_padding_mask=key_pad, need_weights=False)[0]
        )
        return h + self.mlp(self.ln2(h))


class TinyLM(nn.Module):
    """GPT-2's 0.02 init, a head tied to the token embedding, a dict in and a dict out."""

    def __init__(self):
        super().__init__()
        self.tok = nn.Embedding(V, D)
        self.pos = nn.Embedding(T, D)
        self.blocks = nn.ModuleList([PreNormBlock()])
        self.ln_f = nn.LayerNorm(D)
        self.lm_head = nn.Linear(D, V, bias=False)
        self.lm_head.weight = self.tok.weight
        nn.init.normal_(self.tok.weight, 0, 0.02)
        nn.init.normal_(self.pos.weight, 0, 0.02)

    def forward(self, batch):
        ids, mask = batch["input_ids"], batch["attention_mask"]
        t = ids.shape[1]
        h = self.tok(ids) + self.pos(torch.arange(t, device=ids.device))
        causal = torch.ones(t, t, dtype=torch.bool, device=ids.device).triu(1)
        for block in self.blocks:
            h = block(h, causal, mask == 0)
        return {"logits": self.lm_head(self.ln_f(h))}


def lm_loss(out, labels):
    return F.cross_entropy(
        out["logits"].reshape(-1, V), labels.reshape(-1), ignore_index=-100, label_smoothing=0.1
    )


def test_case_14_a_healthy_hf_style_lm_with_dict_batches_and_label_smoothing_passes_every_check():
    torch.manual_seed(0)
    ids = torch.randint(0, V, (6, T), generator=generator())
    labels = torch.cat([ids[:, 1:], torch.full((6, 1), -100)], 1)
    inputs = {"input_ids": ids, "attention_mask": torch.ones(6, T, dtype=torch.long)}
    batch = (inputs, labels)
    model = TinyLM()
    ns.assert_init_loss(model, batch, lm_loss)
    ns.assert_init_loss(model, batch, lm_loss, expected=math.log(V), rtol=0.1)
    ns.assert_finite(model, batch, lm_loss)
    ns.assert_loss_decreases(model, batch, lm_loss)
    ns.assert_can_overfit(model, batch, lm_loss)
    ns.assert_params_update(model, batch, lm_loss)
    ns.assert_gradient_ratio(model, batch, lm_loss)
    ns.assert_batch_independence(model, batch)
    ns.assert_causal(model, inputs)
    ns.assert_uses_inputs(model, batch, lm_loss)


# --- case 15 (healthy): a packed bidirectional LSTM regressor ---------------------------------


class PackedRegressor(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(4, 16, batch_first=True, bidirectional=True)
        self.out = nn.Linear(32, 1)

    def forward(self, inputs):
        x, lengths = inputs
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, (h, _) = self.rnn(packed)
        return self.out(torch.cat([h[0], h[1]], dim=-1))


def test_case_15_a_healthy_packed_bidirectional_lstm_with_x_and_lengths_passes_every_check():
    torch.manual_seed(0)
    lengths = torch.tensor([9, 4, 7, 3, 9, 5, 8, 6, 2, 9, 7, 5])
    x = torch.randn(12, 9, 4, generator=generator())
    x[torch.arange(9) >= lengths[:, None]] = 0.0
    y = torch.stack([x[i, : lengths[i], 0].sum() for i in range(12)]).unsqueeze(1)
    batch = ((x, lengths), (y - y.mean()) / y.std())
    model = PackedRegressor()
    ns.assert_init_loss(model, batch, F.mse_loss)
    ns.assert_finite(model, batch, F.mse_loss)
    ns.assert_loss_decreases(model, batch, F.mse_loss)
    ns.assert_can_overfit(model, batch, F.mse_loss)
    ns.assert_params_update(model, batch, F.mse_loss)
    ns.assert_gradient_ratio(model, batch, F.mse_loss)
    ns.assert_batch_independence(model, batch)
    ns.assert_uses_inputs(model, batch, F.mse_loss)


# --- case 17 (healthy): log_softmax and F.nll_loss, as in PyTorch's MNIST example -------------


class MnistStyleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, 1)
        self.conv2 = nn.Conv2d(8, 16, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(16 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        x = self.dropout1(F.max_pool2d(x, 2))
        x = self.dropout2(F.relu(self.fc1(torch.flatten(x, 1))))
        return F.log_softmax(self.fc2(x), dim=1)


def test_case_17_a_healthy_log_softmax_and_nll_loss_cnn_passes_every_check():
    torch.manual_seed(0)
    g = generator()
    batch = (torch.randn(16, 1, 12, 12, generator=g), torch.randint(0, 10, (16,), generator=g))
    model = MnistStyleNet()
    ns.assert_init_loss(model, batch, F.nll_loss)
    ns.assert_finite(model, batch, F.nll_loss)
    ns.assert_loss_decreases(model, batch, F.nll_loss)
    ns.assert_can_overfit(model, batch, F.nll_loss)
    ns.assert_params_update(model, batch, F.nll_loss)
    ns.assert_batch_independence(model, batch)
    ns.assert_uses_inputs(model, batch, F.nll_loss)


# --- case 21: a log-softmax normalised over the batch, in a custom head --------------------------


class PooledTextClassifier(nn.Module):
    """Embeddings mean-pooled, then a head whose log-softmax runs over ``dim``."""

    def __init__(self, dim: int):
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.fc, self.dim = nn.Embedding(50, 16), nn.Linear(16, 4), dim

    def forward(self, tokens):
        return F.log_softmax(self.fc(self.emb(tokens).mean(1)), dim=self.dim)


def test_case_21_a_log_softmax_over_the_batch_is_named_by_its_line_as_the_first_cause():
    batch = torch.randint(0, 50, (8, 6), generator=generator()), torch.arange(8) % 4
    with pytest.raises(SanityError) as failure:
        ns.assert_batch_independence(PooledTextClassifier(dim=0), batch)
    r = failure.value.result
    assert r.causes[0].id == "softmax_over_batch"
    assert r.where.operation.name == "log_softmax" and "test_field_reports.py" in r.where.line
    assert ns.assert_batch_independence(PooledTextClassifier(dim=-1), batch).passed


# --- case 25: a LambdaLR lambda that returns a learning rate, not a factor ----------------------


def lambda_step(model, returns_rate: bool):
    """Adam at 3e-3 with an exponential decay; the bug multiplies the decay by the rate."""
    lr = 3e-3
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    decay = (lambda k: lr * 0.999**k) if returns_rate else (lambda k: 0.999**k)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, decay)

    def step(batch):
        x, y = batch
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        sched.step()
        return loss

    return step


def test_case_25_a_lambda_returning_the_rate_is_named_as_the_squared_learning_rate():
    def mlp():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(20, 64), nn.Tanh(), nn.Linear(64, 5))

    batch = classification_batch()
    model = mlp()
    with pytest.raises(SanityError) as failure:
        ns.assert_can_overfit(model, batch, F.cross_entropy, step=lambda_step(model, True))
    assert failure.value.result.causes[0].id == "lr_schedule_squared"
    fixed = mlp()
    ns.assert_can_overfit(fixed, batch, F.cross_entropy, step=lambda_step(fixed, False))


# --- case 26: gradients clipped while a GradScaler still scales them ---------------------------


def amp_clip_step(model, unscale_first: bool):
    """bfloat16 autocast, a GradScaler, clip_grad_value_ (the report's kind, clipping by value)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu")

    def step(batch):
        x, y = batch
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        if unscale_first:
            scaler.unscale_(opt)
        torch.nn.utils.clip_grad_value_(model.parameters(), 0.5)
        scaler.step(opt)
        scaler.update()
        return loss

    return step


def test_case_26_clipping_by_value_before_unscale_is_named_from_the_scalers_stage():
    def mlp():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(20, 64), nn.Tanh(), nn.Linear(64, 5))

    batch = classification_batch(n=32)
    model = mlp()
    with pytest.raises(SanityError) as failure:
        ns.assert_loss_decreases(model, batch, F.cross_entropy, step=amp_clip_step(model, False))
    r = failure.value.result
    assert r.causes[0].id == "clip_before_unscale" and r.step_problem == "clip_before_unscale"
    assert r.forensics.scaled_clips[0] == "clip_grad_value_"
    fixed = mlp()
    r = ns.assert_loss_decreases(fixed, batch, F.cross_entropy, step=amp_clip_step(fixed, True))
    assert r.forensics.scaled_clips == ()
