"""assert_params_update: every parameter gets a gradient and one step changes it."""

from __future__ import annotations

import pytest
import torch
import zoo
from state_oracle import assert_same, snapshot
from torch import nn
from torch.nn import functional as F

from nnsanity import assert_params_update, measure_params_update
from nnsanity.errors import SanityError


def sgd_step(model, *, call_step=True, params=None):
    """A user's training step; ``call_step=False`` plants the forgotten optimizer.step()."""
    opt = torch.optim.SGD(model.parameters() if params is None else params, lr=0.1)

    def step(batch):
        x, y = batch
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        if call_step:
            opt.step()
        return loss

    return step


class Detached(nn.Module):
    """The first layer's output is .detach()ed by mistake, so it never learns."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(20, 32), nn.Linear(32, 10)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)).detach())


def with_dead_units(n_dead: int) -> nn.Module:
    model = zoo.mlp()
    with torch.no_grad():
        model[2].bias[:n_dead] = -100.0  # these ReLUs never fire
    return model


BATCH = zoo.classification_batch()


class ZeroInitResidual(nn.Module):
    """Residual blocks whose last norm starts at 0 (timm's zero_init_last), and a zero gate."""

    def __init__(self, blocks: int = 2, d: int = 32):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Linear(20, d)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d), nn.LayerNorm(d))
            for _ in range(blocks)
        )
        for block in self.blocks:
            nn.init.zeros_(block[3].weight)  # the branch adds nothing at init
        self.gate = nn.Parameter(torch.zeros(()))  # a ReZero-style gate
        self.extra = nn.Linear(d, d)
        self.head = nn.Linear(d, 10)

    def forward(self, x):
        h = self.stem(x)
        for block in self.blocks:
            h = h + block(h)
        h = h + self.gate * torch.relu(self.extra(h))
        return self.head(h)


@pytest.mark.parametrize("name", list(zoo.HEALTHY))
def test_passes_on_healthy_models_with_defaults(name):
    model_factory, batch_factory, loss_fn = zoo.HEALTHY[name]
    result = assert_params_update(model_factory(), batch_factory(), loss_fn)
    assert result.unchanged == () and all(d / t <= 0.1 for _, d, t in result.dead_units)


def test_passes_zero_initialised_residual_branches_and_gates_that_open_after_one_step():
    result = assert_params_update(ZeroInitResidual(), BATCH, F.cross_entropy)
    assert result.steps == 2 and result.zero_grad == () and result.unchanged == ()


def test_a_detached_layer_fails_at_once_even_beside_zero_initialised_branches():
    model = ZeroInitResidual()
    model.head.register_forward_pre_hook(lambda m, args: (args[0].detach(),))
    with pytest.raises(SanityError, match=r"(?s)receive no gradient.*'stem\.weight'") as e:
        assert_params_update(model, BATCH, F.cross_entropy)
    assert e.value.result.steps == 1


def test_passes_with_a_correct_user_training_step():
    model = zoo.mlp()
    assert_params_update(model, BATCH, F.cross_entropy, step=sgd_step(model))


def test_fails_when_a_layer_is_frozen_by_mistake():
    model = zoo.mlp()
    model[2].requires_grad_(False)
    with pytest.raises(
        SanityError,
        match=r"(?s)2 of 6 parameters are frozen.*'2\.weight', '2\.bias'.*frozen=\[",
    ):
        assert_params_update(model, BATCH, F.cross_entropy)


def test_passes_when_the_frozen_layer_is_listed_by_glob():
    model = zoo.mlp()
    model[2].requires_grad_(False)
    result = assert_params_update(model, BATCH, F.cross_entropy, frozen=["2.*"])
    assert result.frozen_changed == ()


def test_fails_when_a_parameter_listed_as_frozen_is_trainable():
    with pytest.raises(
        SanityError, match=r"(?s)match frozen= but are trainable!.*Parameters: '0\.weight'"
    ):
        assert_params_update(zoo.mlp(), BATCH, F.cross_entropy, frozen="0.weight")


def test_fails_when_a_layer_is_detached_by_mistake():
    with pytest.raises(
        SanityError,
        match=r"(?s)2 of 4 parameters receive no gradient.*'a\.weight', 'a\.bias'\n"
        r".*1\. .*\.detach\(\)",
    ):
        assert_params_update(Detached(), BATCH, F.cross_entropy)


def test_fails_on_a_layer_of_dead_relus_naming_the_zero_gradient_parameters():
    with pytest.raises(
        SanityError,
        match=r"(?s)get an exactly zero gradient at every step!.*"
        r"Parameters: '0\.weight', '0\.bias', '2\.weight', '2\.bias'.*"
        r"Dead units: .*'2' 32/32 units.*1\. dead ReLUs",
    ):
        assert_params_update(with_dead_units(32), BATCH, F.cross_entropy)


def test_fails_when_most_units_of_a_layer_are_dead():
    with pytest.raises(
        SanityError,
        match=r"(?s)Over 50% of a layer's units get exactly zero gradient \(dead\)!"
        r".*'2' 24/32 units \(75%\).*max_dead_fraction=0\.75",
    ):
        assert_params_update(with_dead_units(24), BATCH, F.cross_entropy)
    assert_params_update(with_dead_units(24), BATCH, F.cross_entropy, max_dead_fraction=0.75)


def test_fails_when_the_training_step_never_calls_optimizer_step():
    model = zoo.mlp()
    with pytest.raises(
        SanityError,
        match=r"None of the 6 trainable parameters changed(.|\n)*"
        r"never calls optimizer\.step\(\)",
    ):
        assert_params_update(model, BATCH, F.cross_entropy, step=sgd_step(model, call_step=False))


def test_fails_naming_parameters_missing_from_the_optimizer():
    model = zoo.mlp()
    step = sgd_step(model, params=[*model[0].parameters(), *model[4].parameters()])
    with pytest.raises(
        SanityError,
        match=r"(?s)2 of 6 parameters did not change after \d steps?!.*"
        r"'2\.weight', '2\.bias'\n.*missing from the optimizer",
    ):
        assert_params_update(model, BATCH, F.cross_entropy, step=step)


def test_fails_when_the_step_changes_a_frozen_parameter():
    model = zoo.mlp()
    model[0].requires_grad_(False)
    inner = sgd_step(model)

    def step(batch):
        with torch.no_grad():
            model[0].weight.mul_(0.99)  # hand-rolled weight decay that ignores requires_grad
        return inner(batch)

    with pytest.raises(SanityError, match=r"(?s)1 frozen parameters changed.*'0\.weight'"):
        assert_params_update(model, BATCH, F.cross_entropy, frozen="0.*", step=step)


def test_fails_when_one_step_makes_parameters_non_finite():
    with pytest.raises(SanityError, match=r"(?s)are NaN/Inf after 1 step!.*learning rate"):
        assert_params_update(
            zoo.mlp(),
            BATCH,
            F.cross_entropy,
            optimizer=lambda p: torch.optim.SGD(p, lr=float("inf")),
        )


def test_works_in_float64():
    model, (x, y) = zoo.mlp().double(), BATCH
    assert_params_update(model, (x.double(), y), F.cross_entropy)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"frozen": [0]}, TypeError, "frozen must be a glob"),
        ({"frozen": ["encoder.*"]}, ValueError, "matches no parameter.*'0.weight'"),
        ({"max_dead_fraction": 1.5}, ValueError, r"max_dead_fraction must be a number in \[0, 1\]"),
        ({"step": "train"}, TypeError, "step must be callable"),
        ({"optimizer": lambda p: None}, TypeError, "optimizer must be a factory"),
        ({"optimizer": 0.1}, TypeError, "optimizer must be a factory params -> Optimizer"),
        ({"optimizer": torch.optim.Adam, "step": print}, ValueError, "not both"),
        ({"loss_fn": 3}, TypeError, "loss_fn must be callable"),
    ],
)
def test_rejects_bad_arguments(kwargs, error, message):
    loss_fn = kwargs.pop("loss_fn", F.cross_entropy)
    with pytest.raises(error, match=message):
        assert_params_update(zoo.mlp(), BATCH, loss_fn, **kwargs)


def test_leaves_model_and_global_state_unchanged_even_when_it_fails():
    model = zoo.cnn()
    model[4].requires_grad_(False)
    model[0].weight.grad = torch.ones_like(model[0].weight)
    model.eval()
    before = snapshot(model)
    with pytest.raises(SanityError):
        assert_params_update(model, zoo.image_batch(), F.cross_entropy)
    assert_same(before, snapshot(model))
    measure_params_update(
        model, zoo.image_batch(), F.cross_entropy, frozen="4.*", step=sgd_step(model)
    )
    assert_same(before, snapshot(model))


class FrozenEncoder(nn.Module):
    """A convolutional encoder (BatchNorm2d with and without affine parameters) frozen for
    fine-tuning, and a trainable head."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8, affine=False), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip
        self.head = nn.Linear(8, zoo.N_CLASSES)
        self.encoder.requires_grad_(False)

    def forward(self, x):
        return self.head(self.encoder(x))


def _fine_tune_step(model, *, keep_frozen_in_eval):
    opt = torch.optim.SGD(model.head.parameters(), lr=0.1)

    def step(batch):
        x, y = batch
        model.train()
        if keep_frozen_in_eval:
            model.encoder.eval()
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    return step


def test_fails_when_a_frozen_encoders_batchnorm_stays_in_train_mode_naming_the_module():
    torch.manual_seed(0)
    model, batch = FrozenEncoder(), zoo.image_batch()
    step = _fine_tune_step(model, keep_frozen_in_eval=False)
    with pytest.raises(SanityError, match="buffers of frozen modules changed") as e:
        assert_params_update(model, batch, F.cross_entropy, frozen="encoder.*", step=step)
    r = e.value.result
    assert {n for n, _, _ in r.frozen_buffers_changed} >= {
        "encoder.1.running_mean", "encoder.4.running_var"
    }  # fmt: skip
    first = r.causes[0]
    assert first.id == "frozen_module_in_train_mode"
    assert first.where in ("encoder.1", "encoder.4")
    assert ".eval()" in first.remedy


def test_passes_when_the_step_keeps_the_frozen_encoder_in_eval_mode():
    torch.manual_seed(0)
    model, batch = FrozenEncoder(), zoo.image_batch()
    step = _fine_tune_step(model, keep_frozen_in_eval=True)
    r = measure_params_update(model, batch, F.cross_entropy, frozen="encoder.*", step=step)
    assert r.passed, str(r)
    assert r.frozen_buffers_changed == ()


# --- parameters kept for another task ------------------------------------------------------


class TwoHeads(nn.Module):
    """A backbone with a head for this loss and one for another task (BertForPreTraining's
    next-sentence head under a masked-LM loss), and a mask token read only when masking."""

    def __init__(self, forget_layer: bool = False):
        super().__init__()
        self.body, self.head, self.other_head = (
            nn.Linear(20, 32),
            nn.Linear(32, 10),
            nn.Linear(32, 2),
        )
        self.mask_token = nn.Parameter(torch.zeros(20))
        self.extra = nn.Linear(32, 32)  # called only when forget_layer is False
        self.forget_layer = forget_layer

    def forward(self, x, masked=None):
        if masked is not None:
            x = torch.where(masked[:, None], self.mask_token, x)
        h = torch.relu(self.body(x))
        if not self.forget_layer:
            h = h + self.extra(h)
        return {"logits": self.head(h), "other_logits": self.other_head(h)}


def _first_logits(out, y):
    return F.cross_entropy(out["logits"], y)


def test_parameters_kept_for_another_task_fail_naming_what_they_are():
    with pytest.raises(SanityError, match="unused=") as e:
        assert_params_update(TwoHeads(), BATCH, _first_logits)
    r = e.value.result
    assert set(r.not_read) == {"mask_token"}
    assert dict(r.unused_outputs) == {
        "other_head.weight": "other_head",
        "other_head.bias": "other_head",
    }
    assert {c.id for c in r.causes[:2]} == {"not_read_by_forward", "output_not_in_loss"}


def test_parameters_named_unused_pass():
    r = assert_params_update(
        TwoHeads(), BATCH, _first_logits, unused=["other_head.*", "mask_token"]
    )
    assert set(r.unused) == {"mask_token", "other_head.weight", "other_head.bias"}


def test_a_detached_layer_still_fails_beside_parameters_named_unused():
    class DetachedTwoHeads(TwoHeads):
        def forward(self, x, masked=None):
            out = super().forward(x)
            return {**out, "logits": self.head(torch.relu(self.body(x)).detach())}

    with pytest.raises(SanityError) as e:
        assert_params_update(
            DetachedTwoHeads(), BATCH, _first_logits, unused=["other_head.*", "mask_token"]
        )
    assert e.value.result.causes[0].id == "graph_cut"
    assert "body.weight" in e.value.result.no_grad


def test_a_layer_defined_but_never_called_is_named_as_never_read():
    with pytest.raises(SanityError) as e:
        assert_params_update(
            TwoHeads(forget_layer=True), BATCH, _first_logits, unused=["other_head.*", "mask_token"]
        )
    assert e.value.result.causes[0].id == "not_read_by_forward"
    assert set(e.value.result.not_read) == {"extra.weight", "extra.bias"}


def test_an_unused_glob_that_matches_nothing_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unused pattern 'nope\.\*' matches no parameter"):
        measure_params_update(TwoHeads(), BATCH, _first_logits, unused="nope.*")
