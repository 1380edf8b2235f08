"""How a check holds the user's model, batch and loss: structured inputs and outputs, the
Hugging Face convention, and the errors a bad call gets."""

from __future__ import annotations

import dataclasses
import re
from collections import UserDict

import pytest
import recipes
import torch
import zoo
from torch import nn
from torch.nn import functional as F

import nnsanity
from nnsanity._harness import Harness


class DictModel(nn.Module):
    """forward(input_ids, attention_mask): a mapping batch is passed as keywords."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.head = nn.Embedding(16, 8), nn.Linear(8, 3)

    def forward(self, input_ids, attention_mask):
        h = self.emb(input_ids) * attention_mask.unsqueeze(-1)
        return {"logits": self.head(h.sum(1) / attention_mask.sum(1, keepdim=True))}


def token_inputs(n=4, t=6):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 16, (n, t), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones(n, t, dtype=torch.long)}


LABELS = torch.tensor([0, 1, 2, 1])


def ce_on_logits(out, y):
    return F.cross_entropy(out["logits"], y)


def test_a_tokenizer_style_userdict_is_passed_as_keywords_and_keeps_its_type():
    batch = (UserDict(token_inputs()), LABELS)
    h = Harness(DictModel(), batch, ce_on_logits, seed=0)
    assert h._style == "kwargs" and isinstance(h.forward(), dict)
    assert isinstance(h.inputs, UserDict)


def test_an_all_ones_attention_mask_is_structure_and_the_token_ids_are_data():
    h = Harness(DictModel(), (token_inputs(), LABELS), ce_on_logits, seed=0)
    assert h.roles == {("input_ids",): "data", ("attention_mask",): "structure"}
    # the checks that change inputs run on such a batch (0.1 refused: "a single value (1)")
    assert nnsanity.assert_batch_independence(DictModel(), (token_inputs(), LABELS)).passed


def test_a_forward_that_takes_the_dict_itself_gets_it_positionally():
    class TakesTheDict(DictModel):
        def forward(self, batch):  # type: ignore[override]
            return super().forward(batch["input_ids"], batch["attention_mask"])

    h = Harness(TakesTheDict(), (token_inputs(), LABELS), ce_on_logits, seed=0)
    assert h._style == "single" and "logits" in h.forward()


def test_unpack_chooses_how_a_tuple_is_passed():
    class TwoArgs(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 3)

        def forward(self, x, scale):
            return self.a(x) * scale

    x, s = torch.randn(5, 4), torch.ones(5, 1)
    h = Harness(TwoArgs(), ((x, s), torch.zeros(5, dtype=torch.long)), F.cross_entropy, seed=0)
    assert h._style == "args" and h.forward().shape == (5, 3)
    h = Harness(
        zoo.mlp(d_in=4),
        (x, torch.zeros(5, dtype=torch.long)),
        F.cross_entropy,
        seed=0,
        unpack=False,
    )
    assert h._style == "single"


@dataclasses.dataclass
class Features:
    image: torch.Tensor
    lengths: torch.Tensor


def test_dataclass_inputs_are_containers_of_tensors_named_by_field():
    class UsesFeatures(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 3)

        def forward(self, f):
            return self.a(f.image) + 0 * f.lengths.unsqueeze(-1)

    f = Features(torch.randn(6, 4), torch.arange(6))
    h = Harness(UsesFeatures(), (f, torch.zeros(6, dtype=torch.long)), F.cross_entropy, seed=0)
    assert h.roles == {("image",): "data", ("lengths",): "structure"}
    zeroed = h.map_data(lambda _, t: torch.zeros_like(t))
    assert isinstance(zeroed, Features) and not zeroed.image.any() and zeroed.lengths.any()


@pytest.mark.parametrize(
    ("outputs", "output", "picked"),
    [
        ({"loss": torch.tensor(1.0), "logits": torch.ones(2, 3)}, None, "logits"),
        ((torch.ones(2, 3), torch.tensor(0.5)), None, 0),  # (logits, aux_loss)
        ((torch.tensor(0.5), torch.ones(2, 3)), None, 1),  # (loss, logits)
        ({"scores": torch.ones(2, 3), "hidden": torch.zeros(2, 4)}, "hidden", "hidden"),
    ],
)
def test_the_judged_output_is_the_logits_by_a_documented_rule_or_the_one_named(
    outputs, output, picked
):
    from nnsanity._structures import select_output

    tensor, path = select_output(outputs, output)
    assert path == (picked,) and tensor is outputs[picked]


def test_an_output_key_that_names_no_tensor_says_what_the_outputs_hold():
    from nnsanity._structures import select_output

    with pytest.raises(ValueError, match=r"output='logits' names no tensor.*'scores'"):
        select_output({"scores": torch.ones(2, 3)}, "logits")


def test_the_hugging_face_convention_the_model_computes_its_own_loss_from_labels_in_the_batch():
    class OwnLoss(DictModel):
        def forward(self, input_ids, attention_mask, labels=None):  # type: ignore[override]
            out = super().forward(input_ids, attention_mask)
            return {"loss": F.cross_entropy(out["logits"], labels), **out}

    batch = {**token_inputs(), "labels": LABELS}
    r = nnsanity.assert_init_loss(OwnLoss(), batch)
    assert r.zero_output_loss == pytest.approx(float(torch.log(torch.tensor(3.0))), rel=1e-5)
    assert nnsanity.assert_loss_decreases(OwnLoss(), batch).passed
    # An (inputs, targets) pair reaches the model's labels parameter (the nanoGPT convention);
    # a model that takes no targets still needs loss_fn.
    assert nnsanity.assert_init_loss(OwnLoss(), (token_inputs(), LABELS)).passed
    with pytest.raises(TypeError, match="loss_fn is None, which needs a mapping batch"):
        nnsanity.assert_init_loss(DictModel(), (token_inputs(), LABELS))


def test_a_mapping_batch_without_labels_says_where_to_put_them():
    with pytest.raises(ValueError, match=r"mapping with no labels \(keys: \['input_ids'"):
        nnsanity.assert_init_loss(DictModel(), token_inputs(), ce_on_logits)


def test_an_input_that_cannot_be_perturbed_is_named_with_the_fix():
    ids = torch.full((4, 6), 3)
    batch = ({"input_ids": ids, "attention_mask": torch.ones(4, 6, dtype=torch.long)}, LABELS)
    with pytest.raises(ValueError, match=r"inputs\['input_ids'\] holds a single value.*perturb="):
        nnsanity.measure_batch_independence(DictModel(), batch)


def test_perturb_names_the_inputs_a_check_may_change():
    h = Harness(
        DictModel(), (token_inputs(), LABELS), ce_on_logits, seed=0, perturb=["attention_mask"]
    )
    assert h.roles == {("input_ids",): "structure", ("attention_mask",): "data"}
    with pytest.raises(ValueError, match=r"perturb= names 'mask'.*inputs\['input_ids'\]"):
        Harness(DictModel(), (token_inputs(), LABELS), ce_on_logits, seed=0, perturb=["mask"])


# -- bad input gets a clear error ---------------------------------------------------------------


def test_an_empty_batch_is_a_clear_error():
    x, y = zoo.classification_batch()
    with pytest.raises(ValueError, match="the batch is empty"):
        nnsanity.assert_init_loss(zoo.mlp(), (x[:0], y[:0]), F.cross_entropy)


def test_a_model_on_the_meta_device_is_a_clear_error():
    with torch.device("meta"):
        model = zoo.mlp()
    with pytest.raises(ValueError, match=r"on the meta device.*to_empty"):
        nnsanity.assert_finite(model, zoo.classification_batch(), F.cross_entropy)


def test_a_forward_that_returns_none_is_a_clear_error():
    class ReturnsNothing(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(20, 10)

        def forward(self, x):
            self.a(x)

    with pytest.raises(TypeError, match=r"ReturnsNothing\.forward returned None"):
        nnsanity.assert_loss_decreases(
            ReturnsNothing(), zoo.classification_batch(), F.cross_entropy
        )


def test_nan_in_the_data_names_the_input_and_index():
    inputs = token_inputs()
    batch = ({"input_ids": inputs["input_ids"], "scale": torch.ones(4, 1)}, LABELS)
    batch[0]["scale"][2, 0] = float("nan")

    class Scaled(DictModel):
        def forward(self, input_ids, scale):  # type: ignore[override]
            return super().forward(input_ids, torch.ones_like(input_ids)) | {}

    with pytest.raises(
        ValueError,
        match=r"inputs\['scale'\] holds 1 NaN/Inf value\(s\) \(first at index \(2, 0\)\)",
    ):
        nnsanity.assert_init_loss(Scaled(), batch, ce_on_logits)


def test_a_real_batch_encoding_reaches_a_hugging_face_model_as_keywords():
    transformers = pytest.importorskip("transformers")
    from architectures import ZOO

    arch = ZOO["bert_classifier"]
    batch = transformers.BatchEncoding(arch.batch())
    r = nnsanity.assert_batch_independence(arch.build(), batch)
    assert r.passed and r.method == "perturbation"  # token ids: no gradient to follow
    assert nnsanity.assert_init_loss(arch.build(), batch).n_classes == 3


# -- models that take the targets: model(idx, targets) -> (logits, loss) (nanoGPT) -------------


class BatchMixingGPT(recipes.GPT):
    """A GPT whose hidden states mix the batch (a mean over dim 0 added: a wrong reduction)."""

    def forward(self, idx, targets=None):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        x = x + x.mean(0, keepdim=True)
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return (logits, loss) if targets is not None else (logits[:, [-1]], None)


class RecordingGPT(recipes.GPT):
    """A healthy GPT that records the targets of every call it gets."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, idx, targets=None):
        self.seen.append(targets)
        return super().forward(idx, targets)


def test_a_model_that_takes_the_targets_is_given_them_and_its_own_loss_is_used():
    x, y = recipes.gpt_batch()
    model = recipes.GPT()
    with torch.no_grad():
        own = float(model(x, y)[1])
    r = nnsanity.assert_init_loss(model, (x, y))  # no loss_fn: the model's own loss
    assert r.loss == pytest.approx(own, rel=1e-6)
    assert nnsanity.assert_loss_decreases(recipes.GPT(), (x, y)).passed
    # the user's own loss_fn, on the (logits, loss) outputs; the full logits need the targets
    r = nnsanity.assert_init_loss(recipes.GPT(), (x, y), lambda out, t: F.cross_entropy(
        out[0].flatten(0, 1), t.flatten()))  # fmt: skip
    assert r.loss == pytest.approx(own, rel=1e-6)
    assert nnsanity.assert_causal(recipes.GPT(), (x, y)).passed  # the pair, for full logits
    assert nnsanity.assert_batch_independence(recipes.GPT(), (x, y)).passed


def test_a_model_that_takes_the_targets_is_still_caught_mixing_the_batch_or_the_future():
    x, y = recipes.gpt_batch()
    with pytest.raises(nnsanity.SanityError):
        nnsanity.assert_batch_independence(BatchMixingGPT(), (x, y))

    class Acausal(recipes.GPT):
        def forward(self, idx, targets=None):
            return super().forward(idx.flip(1), targets)

    with pytest.raises(nnsanity.SanityError):
        nnsanity.assert_causal(Acausal(), (x, y))


def test_the_checks_that_change_the_inputs_never_change_the_targets():
    x, y = recipes.gpt_batch()
    model = RecordingGPT()
    nnsanity.measure_batch_independence(model, (x, y))
    nnsanity.measure_causal(model, (x, y))
    nnsanity.measure_uses_inputs(model, (x, y))
    assert model.seen and all(t is not None and torch.equal(t, y) for t in model.seen)


# -- a loss without a graph --------------------------------------------------------------------


def _no_grad_loss(out, y):
    with torch.no_grad():
        return F.cross_entropy(out, y)


GRAPHLESS_LOSSES = {
    "argmax()": lambda out, y: F.mse_loss(out.argmax(1).float(), y.float()),
    "item()": lambda out, y: torch.tensor(F.cross_entropy(out, y).item()),
    "detach()": lambda out, y: F.cross_entropy(out.detach(), y),
    ".data": lambda out, y: F.cross_entropy(out.data, y),
    "gt()": lambda out, y: (out > 0).float().mean(),  # a count of positive logits
    "torch.no_grad()": _no_grad_loss,
}
TRAINING_CHECKS = {  # assert_ name: measure_ name
    "loss_decreases": "loss_decrease", "can_overfit": "overfit", "params_update": "params_update",
    "finite": "finite", "uses_inputs": "uses_inputs", "update_ratio": "update_ratio",
    "gradient_ratio": "gradient_ratio", "no_dying_units": "dying_units",
    "loss_stable": "loss_stability", "params_registered": "params_registered",
}  # fmt: skip


@pytest.mark.parametrize("step", list(GRAPHLESS_LOSSES))
@pytest.mark.parametrize("check", list(TRAINING_CHECKS))
def test_a_loss_without_a_graph_is_a_clear_error_naming_the_step_that_breaks_it(check, step):
    batch = zoo.classification_batch()
    where = rf"loss_fn breaks the autograd graph \(at .*{re.escape(step)}"
    with pytest.raises(ValueError, match=where):
        getattr(nnsanity, f"assert_{check}")(zoo.mlp(), batch, GRAPHLESS_LOSSES[step])
    assert torch.is_grad_enabled()


@pytest.mark.parametrize("check", list(TRAINING_CHECKS.values()))
def test_the_same_checks_pass_with_the_loss_computed_on_the_logits(check):
    measure = getattr(nnsanity, f"measure_{check}")
    assert measure(zoo.mlp(), zoo.classification_batch(), F.cross_entropy).passed


def test_a_forward_that_breaks_the_graph_is_named_and_so_is_a_users_step():
    class Detached(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = zoo.mlp()

        def forward(self, x):
            return self.net(x).detach()

    class OwnLossAsNumber(Detached):
        def forward(self, x, targets=None):
            z = self.net(x)
            return z, torch.tensor(F.cross_entropy(z, targets).item())

    batch = zoo.classification_batch()
    with pytest.raises(ValueError, match=r"Detached.forward breaks .*\(at detach\(\)\).*neither"):
        nnsanity.assert_loss_decreases(Detached(), batch, F.cross_entropy)
    with pytest.raises(ValueError, match=r"OwnLossAsNumber.forward breaks .*\(at item\(\)\)"):
        nnsanity.assert_loss_decreases(OwnLossAsNumber(), batch)
    model = zoo.mlp()
    step = zoo.user_step(model, loss_fn=lambda out, y: F.cross_entropy(out.detach(), y))
    with pytest.raises(ValueError, match=r"step= called backward\(\) on a loss with no autograd"):
        nnsanity.assert_loss_decreases(model, batch, F.cross_entropy, step=step)
    model = zoo.mlp()
    step = zoo.user_step(model)
    assert nnsanity.assert_loss_decreases(model, batch, F.cross_entropy, step=step).passed


# -- step_factory: a fresh step (and optimizer) for each check ----------------------------------

STEP_CHECKS = [
    "loss_decrease", "overfit", "params_update", "params_registered", "update_ratio",
    "uses_inputs", "dying_units", "loss_stability", "learns_signal",
]  # fmt: skip


def test_a_shared_steps_optimizer_state_leaks_into_the_next_check_and_a_factorys_does_not():
    batch, model = zoo.classification_batch(), zoo.mlp()
    alone = nnsanity.measure_update_ratio(model, batch, F.cross_entropy, step=zoo.user_step(model))
    shared = zoo.user_step(model)
    nnsanity.measure_loss_decrease(model, batch, F.cross_entropy, step=shared, steps=5)
    after = nnsanity.measure_update_ratio(model, batch, F.cross_entropy, step=shared)
    assert after.layers != alone.layers  # Adam's moments from the check before moved the step
    made = []

    def factory(m):
        made.append(m)
        return zoo.user_step(m)

    nnsanity.measure_loss_decrease(model, batch, F.cross_entropy, step_factory=factory, steps=5)
    after = nnsanity.measure_update_ratio(model, batch, F.cross_entropy, step_factory=factory)
    assert after.layers == alone.layers
    assert made == [model, model]


@pytest.mark.parametrize("check", STEP_CHECKS)
def test_every_check_that_takes_a_step_takes_a_step_factory(check):
    measure = getattr(nnsanity, f"measure_{check}")
    kw = {"holdout": zoo.classification_batch(seed=1)} if check == "learns_signal" else {}
    model, made = zoo.mlp(), []

    def call(**more):
        return measure(model, zoo.classification_batch(), F.cross_entropy, **kw, **more)

    def factory(m):
        made.append(m)
        return zoo.user_step(m)

    call(step_factory=factory)
    assert made == [model]
    with pytest.raises(ValueError, match=r"either step_factory= .* or step=, not both"):
        call(step=zoo.user_step(model), step_factory=factory)
    with pytest.raises(ValueError, match=r"either step_factory= .* or optimizer=, not both"):
        call(optimizer=torch.optim.SGD, step_factory=factory)
    with pytest.raises(TypeError, match=r"step_factory must be callable as step_factory\(model\)"):
        call(step_factory=3)
    with pytest.raises(TypeError, match=r"step_factory\(model\) must return a step callable"):
        call(step_factory=lambda m: None)


# -- a state carried between calls (a hidden state kept on the module) --------------------------

CARRIED_CHECKS = {
    "batch_independence": lambda m, b: nnsanity.measure_batch_independence(m, b),
    "causal": lambda m, b: nnsanity.measure_causal(m, b[0]),
    "eval_mode": lambda m, b: nnsanity.measure_eval_mode(m, b),
}


@pytest.mark.parametrize("check", list(CARRIED_CHECKS))
def test_a_hidden_state_carried_on_the_module_is_named_as_the_first_cause(check):
    batch, model = recipes.gpt_batch(), recipes.StatefulLSTM()
    r = CARRIED_CHECKS[check](model, batch)
    assert not r.passed
    assert r.cause.id == "carried_state" and r.cause.where == "hidden"
    assert r.carried_state == ("hidden",)
    assert model.hidden is None  # the check leaves the module's state as it found it
    twin = CARRIED_CHECKS[check](recipes.stateless_lstm(), batch)
    assert twin.passed and twin.carried_state == ()


# (not loss_stable: its evaluation with dropout off between steps runs under no_grad, so the
# state it leaves carries no graph and no backward meets an old one)
@pytest.mark.parametrize(
    "check", ["loss_decreases", "can_overfit", "params_update", "uses_inputs", "no_dying_units"]
)
def test_a_carried_state_never_detached_is_a_clear_error_naming_it(check):
    batch, assert_check = recipes.gpt_batch(), getattr(nnsanity, f"assert_{check}")
    with pytest.raises(ValueError, match=r"StatefulLSTM.hidden holds a tensor with the autograd "
                       r"graph of an earlier call .*Detach the state"):  # fmt: skip
        assert_check(recipes.StatefulLSTM(detach=False), batch, recipes.lm_loss)
    assert assert_check(recipes.stateless_lstm(), batch, recipes.lm_loss).passed


# -- time-first models: the batch on dim 1, log-probabilities read as such ----------------------


class TimeFirstBatchMixer(recipes.WordTransformer):
    """The word LM with a leak across its batch dim (dim 1 of (T, B, vocab)): a mean over it."""

    def forward(self, src):
        out = super().forward(src)
        return (out + out.mean(1, keepdim=True)).log_softmax(-1)


class LeakyWordLSTM(recipes.WordLSTM):
    """The word LSTM with a leak in its flattened (T * B, vocab) log-probabilities only."""

    def forward(self, data, hidden):
        out, hidden = super().forward(data, hidden)
        rows = out.view(data.shape[0], data.shape[1], -1)
        return (rows + rows.mean(1, keepdim=True)).log_softmax(-1).view(-1, out.shape[-1]), hidden


def test_a_time_first_batch_is_checked_along_the_batch_dim_it_is_given_or_found():
    data = recipes.word_batch()
    assert nnsanity.assert_batch_independence(recipes.WordTransformer(), data, batch_dim=1).passed
    r = nnsanity.measure_batch_independence(TimeFirstBatchMixer(), data, batch_dim=1)
    assert not r.passed and r.batch_dim == 1
    # (data, hidden): (T, B) beside (layers, B, H) says dim 1 unambiguously; the (T * B, vocab)
    # log-probabilities are read as (T, B, vocab)
    batch, model = recipes.lstm_batch(), recipes.WordLSTM()
    r = nnsanity.assert_batch_independence(model, batch)
    assert r.passed and r.batch_dim == 1
    r = nnsanity.measure_batch_independence(LeakyWordLSTM(), batch)
    assert not r.passed and r.batch_dim == 1
    with pytest.raises(ValueError, match=r"batch_dim=2 is not a dimension of the inputs"):
        nnsanity.measure_batch_independence(recipes.WordTransformer(), data, batch_dim=2)


@pytest.mark.filterwarnings("ignore:enable_nested_tensor is True")  # nn.Transformer's own
def test_a_seq2seq_transformer_with_its_default_batch_first_false_needs_no_batch_dim():
    class Seq2Seq(nn.Module):
        def __init__(self, mix=False):
            super().__init__()
            torch.manual_seed(0)
            self.emb, self.mix = nn.Embedding(recipes.VOCAB, 16), mix
            self.core = nn.Transformer(16, 2, 1, 1, 32, dropout=0.0)
            self.head = nn.Linear(16, recipes.VOCAB)

        def forward(self, src, tgt):
            mask = nn.Transformer.generate_square_subsequent_mask(len(tgt))
            h = self.core(self.emb(src), self.emb(tgt), tgt_mask=mask, tgt_is_causal=True)
            return self.head(h + h.mean(1, keepdim=True) if self.mix else h)

    g = torch.Generator().manual_seed(0)
    src, tgt = (torch.randint(0, recipes.VOCAB, (n, 6), generator=g) for n in (9, 7))
    batch = ((src, tgt), tgt.roll(-1, 0))
    assert nnsanity.assert_batch_independence(Seq2Seq(), batch).batch_dim == 1
    assert not nnsanity.measure_batch_independence(Seq2Seq(True), batch).passed


def test_log_probabilities_compared_with_flattened_targets_are_read_as_log_probabilities():
    batch = recipes.word_batch()
    r = nnsanity.assert_init_loss(recipes.WordTransformer(), batch, recipes.word_loss)
    assert r.output_kind == "log-probabilities" and r.n_classes == recipes.WORDS
    loud = recipes.WordTransformer()
    with torch.no_grad():
        loud.decoder.weight.mul_(30)  # the final layer far too large: confident at init
    with pytest.raises(nnsanity.SanityError):
        nnsanity.assert_init_loss(loud, batch, recipes.word_loss)


def test_a_hidden_state_kept_in_a_buffer_is_named_too():
    class BufferState(recipes.StatefulLSTM):
        def __init__(self):
            super().__init__()
            self.register_buffer("h0", torch.zeros(1, recipes.B, 32), persistent=False)

        def forward(self, x):
            out, (h, _) = self.rnn(self.encoder(x), (self.h0, torch.zeros_like(self.h0)))
            self.h0 = h.detach()
            return self.decoder(out)

    model = BufferState()
    r = nnsanity.measure_batch_independence(model, recipes.gpt_batch())
    assert not r.passed and r.cause.id == "carried_state" and r.carried_state == ("h0",)
    assert not model.h0.any()  # put back as it was
    # BatchNorm's running statistics, updated by a train-mode call, are no carried state
    r = nnsanity.measure_batch_independence(zoo.cnn(), zoo.image_batch(), train_mode=True)
    assert r.carried_state == ()


def test_a_hidden_state_kept_in_a_dict_attribute_is_named_too():
    class DictState(recipes.StatefulLSTM):
        def forward(self, x):
            state = getattr(self, "state", None)
            state = None if state is None else tuple(state.values())
            out, (h, c) = self.rnn(self.encoder(x), state)
            self.state = {"h": h.detach(), "c": c.detach()}
            return self.decoder(out)

    model = DictState()
    r = nnsanity.measure_eval_mode(model, recipes.gpt_batch())
    assert not r.passed and r.cause.id == "carried_state" and r.carried_state == ("state",)
    assert not hasattr(model, "state")  # put back as it was: never set
