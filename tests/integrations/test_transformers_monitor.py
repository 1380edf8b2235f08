"""The Hugging Face adapter on a real ``transformers.Trainer.train`` of a tiny GPT-2 built from a
config (random init, nothing downloaded)."""

from __future__ import annotations

import pytest
import torch

import nnsanity

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate", minversion="1.1.0")  # transformers.Trainer needs it
from nnsanity.integrations.transformers import MonitorCallback  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
VOCAB, T = 96, 16


def gpt2():
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=32, n_embd=64, n_layer=2, n_head=4, bos_token_id=1,
        eos_token_id=2,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(config)


class Copies(torch.utils.data.Dataset):
    """Sequences that repeat a random 4-token motif: learnable, a fresh one per index."""

    def __len__(self):
        return 10_000

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        ids = torch.randint(3, VOCAB, (4,), generator=g).repeat(T // 4)
        return {"input_ids": ids, "labels": ids.clone()}


def train(model, steps, callbacks, tmp_path, **args):
    arguments = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=8,
        report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True, logging_steps=10,
        dataloader_num_workers=0, seed=0, **{"learning_rate": 3e-4, "warmup_steps": 10, **args},
    )  # fmt: skip
    trainer = transformers.Trainer(
        model=model, args=arguments, train_dataset=Copies(), callbacks=callbacks
    )
    trainer.train()
    return trainer


def test_a_healthy_train_raises_no_alert_and_logs_the_metrics(tmp_path):
    callback = MonitorCallback(every=10, on_alert="raise")
    trainer = train(gpt2(), 60, [callback], tmp_path)
    monitor = callback.monitor
    assert monitor is not None and monitor.step == 60 and monitor.alerts == ()
    assert monitor.max_grad_norm == 1.0  # the Trainer's default clip, which it applies
    logged = [log for log in trainer.state.log_history if "nnsanity/grad_norm" in log]
    assert logged and logged[-1]["nnsanity/loss"] < logged[0]["nnsanity/loss"]


class Poison(transformers.TrainerCallback):
    """From step ``at`` on, the second block's MLP takes a log of its activations (its own
    forward, between its children): NaN."""

    def __init__(self, model, at):
        self.mlp, self.at = model.transformer.h[1].mlp, at
        self.forward = self.mlp.forward

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.at:
            c_fc, act, c_proj, dropout = (
                self.mlp.c_fc,
                self.mlp.act,
                self.mlp.c_proj,
                self.mlp.dropout,
            )

            def poisoned(hidden_states):
                return dropout(c_proj(torch.log(act(c_fc(hidden_states)))))

            self.mlp.forward = poisoned


def test_a_nan_in_a_block_stops_the_train_with_that_block(tmp_path):
    model = gpt2()
    callback = MonitorCallback(every=10)  # on_alert="warn": non_finite raises
    with pytest.raises(
        nnsanity.SanityError, match=r"non_finite at step 25 in transformer\.h\.1\.mlp"
    ):
        train(model, 60, [callback, Poison(model, 25)], tmp_path, logging_nan_inf_filter=True)
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the NaN step skipped


def test_stop_ends_the_train_the_trainer_way(tmp_path):
    callback = MonitorCallback(every=10, on_alert="stop")
    trainer = train(gpt2(), 60, [callback], tmp_path, learning_rate=0.0, warmup_steps=0)
    assert callback.monitor.alerts[0].kind == "no_update"
    assert trainer.state.global_step == 2  # lr 0 on two steps in a row
