"""assert_params_registered: every tensor that gets a gradient is one the optimizer updates."""

from __future__ import annotations

import architectures as A
import pytest
import torch
import zoo
from state_oracle import assert_restores, assert_same, snapshot
from torch import nn
from torch.nn import functional as F

from nnsanity import assert_params_registered, measure_params_registered
from nnsanity.errors import SanityError

pytestmark = pytest.mark.usefixtures("one_thread")

BATCH = zoo.classification_batch()
FIVE = (BATCH[0], BATCH[1] % 5)  # for the head swapped to 5 classes


@pytest.mark.parametrize("name", zoo.HEALTHY)
def test_passes_on_the_healthy_zoo_with_defaults(name):
    model, batch, loss_fn = zoo.healthy(name)
    r = assert_params_registered(model, batch, loss_fn)
    assert r.reached == r.n_params == len(list(model.parameters()))


@pytest.mark.parametrize("name", A.ZOO)
def test_passes_on_every_real_architecture_with_defaults(name):
    arch = A.ZOO[name]
    model = arch.build()
    r = assert_params_registered(model, arch.batch(), arch.loss_fn)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert r.reached == len(trainable) and r.optimizer is None  # tied weights counted once


def test_passes_with_the_users_healthy_step_and_compares_with_its_optimizer():
    model = zoo.mlp()
    r = assert_params_registered(model, BATCH, F.cross_entropy, step=zoo.user_step(model))
    assert r.optimizer == "Adam (called by your step)" and r.not_in_optimizer == ()


class ListOfLayers(nn.Module):
    """Hidden layers kept in a plain Python list (``bug``) or an nn.ModuleList."""

    def __init__(self, bug: bool):
        super().__init__()
        torch.manual_seed(0)
        self.inp, self.out = nn.Linear(20, 32), nn.Linear(32, 10)
        hidden = [nn.Linear(32, 32), nn.Linear(32, 32)]
        self.hidden = hidden if bug else nn.ModuleList(hidden)

    def forward(self, x):
        h = F.relu(self.inp(x))
        for layer in self.hidden:
            h = F.relu(layer(h))
        return self.out(h)


def test_layers_kept_in_a_plain_list_are_named_with_modulelist_as_the_remedy():
    with pytest.raises(
        SanityError,
        match=r"(?s)^4 tensors get gradients but are not parameters of the model!\n\n"
        r"Reach the loss, held in a plain list, tuple or dict: 'hidden\[0\]\.weight', "
        r"'hidden\[0\]\.bias', 'hidden\[1\]\.weight', 'hidden\[1\]\.bias'\n"
        r"Optimizer compared: none known \(built from model\.parameters\(\)\); 8 tensors reach "
        r"the loss, the model has 4 parameters\n\n"
        r"Likely causes:\n  1\. kept in a plain Python list.*use nn\.ModuleList",
    ):
        assert_params_registered(ListOfLayers(bug=True), BATCH, F.cross_entropy)
    assert assert_params_registered(ListOfLayers(bug=False), BATCH, F.cross_entropy).reached == 8


class Scaled(nn.Module):
    """A learned output scale: a plain tensor attribute, a tensor created in every forward, or
    an nn.Parameter made in __init__."""

    def __init__(self, how: str):
        super().__init__()
        torch.manual_seed(0)
        self.how, self.net = how, zoo.mlp()
        if how == "attribute":
            self.scale = torch.ones(10, requires_grad=True)
        elif how == "parameter":
            self.scale = nn.Parameter(torch.ones(10))

    def forward(self, x):
        if self.how == "forward":
            scale = torch.ones(10, requires_grad=True)  # a new leaf every call
        elif self.how == "recreated":
            self.scale = nn.Parameter(torch.ones(10))  # registered, but a new object every call
            scale = self.scale
        else:
            scale = self.scale
        return self.net(x) * scale


@pytest.mark.parametrize(
    ("how", "expected"),
    [
        (
            "attribute",
            r"1 tensor gets gradients but is not a parameter of the model!\n\n"
            r"Reach the loss, plain tensor attributes: 'scale'\n.*1\. a plain tensor attribute",
        ),
        (
            "forward",
            r"1 tensor gets gradients but is not a parameter of the model!\n\n"
            r"Reach the loss, created in forward and held by no attribute \(shapes\): \(10,\)\n"
            r".*1\. created in forward with requires_grad=True",
        ),
        (
            "recreated",
            r"1 parameter is re-created in every forward!\n\n"
            r"Parameters that are new objects after a forward: 'scale'\n.*1\. created in forward",
        ),
    ],
)
def test_a_tensor_the_optimizer_cannot_see_is_named_with_how_it_is_held(how, expected):
    with pytest.raises(SanityError, match=r"(?s)^" + expected):
        assert_params_registered(Scaled(how), BATCH, F.cross_entropy)


def test_an_nn_parameter_made_in_init_passes():
    assert assert_params_registered(Scaled("parameter"), BATCH, F.cross_entropy).reached == 7


def test_a_parameter_re_created_in_forward_is_given_back_to_the_model_as_it_was():
    model = Scaled("recreated")
    model(BATCH[0])
    scale = model.scale
    assert not measure_params_registered(model, BATCH, F.cross_entropy).passed
    assert model.scale is scale and dict(model.named_parameters())["scale"] is scale


def test_a_buffer_that_requires_grad_is_named():
    model = zoo.mlp()
    model.register_buffer("temperature", torch.ones(()).requires_grad_())
    model.forward = lambda x: nn.Sequential.forward(model, x) / model.temperature
    with pytest.raises(SanityError, match=r"buffers that require grad: 'temperature'"):
        assert_params_registered(model, BATCH, F.cross_entropy)


class Head(nn.Module):
    def __init__(self, classes: int):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64))
        self.head = nn.Linear(64, classes)

    def forward(self, x):
        return self.head(F.relu(self.body(x)))


def step_with(model, optimizer):
    def step(batch):
        x, y = batch
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        return loss

    return step


def test_field_report_03_a_head_swapped_after_the_optimizer_was_built_is_named_with_its_step():
    """The optimizer is built for a 10-class head, then the head is replaced for 5 classes."""
    model = Head(classes=10)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.head = nn.Linear(64, 5)
    with pytest.raises(
        SanityError,
        match=r"(?s)^2 parameters get gradients but are not in the optimizer!\n\n"
        r"Parameters that reach the loss but not the optimizer: 'head\.weight', 'head\.bias'\n"
        r"Tensors the optimizer holds that are no parameter of the model: 2, of shapes "
        r"\(10, 64\), \(10,\)\nOptimizer compared: Adam \(called by your step\).*"
        r"1\. a layer replaced after the optimizer was built",
    ):
        assert_params_registered(model, FIVE, F.cross_entropy, step=step_with(model, optimizer))
    assert optimizer.state == {}  # stopped before its step: no moments, no step count
    # The fix, an optimizer built after the swap, passes; without the step it cannot be seen.
    fixed = torch.optim.Adam(model.parameters(), lr=1e-3)
    assert_params_registered(model, FIVE, F.cross_entropy, step=step_with(model, fixed))
    assert assert_params_registered(model, FIVE, F.cross_entropy).optimizer is None


def test_an_optimizer_factory_that_leaves_parameters_out_is_caught_with_the_subset_cause():
    def first_layer_only(params):
        return torch.optim.SGD(list(params)[:2], lr=0.1)

    with pytest.raises(
        SanityError,
        match=r"(?s)4 parameters get gradients but are not in the optimizer!.*"
        r"Optimizer compared: SGD \(from optimizer=\).*1\. the optimizer was built from a subset",
    ):
        assert_params_registered(zoo.mlp(), BATCH, F.cross_entropy, optimizer=first_layer_only)


class Tempered(nn.Module):
    """A loss with a learned temperature: its parameter is the loss's, not the model's."""

    def __init__(self):
        super().__init__()
        self.log_t = nn.Parameter(torch.zeros(()))

    def forward(self, logits, y):
        return F.cross_entropy(logits / self.log_t.exp(), y)


def test_a_loss_modules_parameters_count_as_registered_and_must_be_in_the_steps_optimizer():
    model, loss_fn = zoo.mlp(), Tempered()
    assert assert_params_registered(model, BATCH, loss_fn).reached == 7
    both = torch.optim.SGD([*model.parameters(), *loss_fn.parameters()], lr=0.1)

    def step(opt):
        def run(batch):
            opt.zero_grad()
            loss = loss_fn(model(batch[0]), batch[1])
            loss.backward()
            opt.step()
            return loss

        return run

    assert_params_registered(model, BATCH, loss_fn, step=step(both))
    only_model = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(SanityError, match=r"not in the optimizer!\n\n.*'loss_fn\.log_t'"):
        assert_params_registered(model, BATCH, loss_fn, step=step(only_model))


def test_a_step_without_an_optimizer_or_that_swallows_exceptions_is_handled():
    model = zoo.mlp()

    def manual_sgd(batch):
        loss = F.cross_entropy(model(batch[0]), batch[1])
        loss.backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.1 * p.grad
        return loss

    assert (
        assert_params_registered(model, BATCH, F.cross_entropy, step=manual_sgd).optimizer is None
    )
    inner = zoo.user_step(model)

    def guarded(batch):
        try:
            return inner(batch)
        except Exception:  # a broad except must not hide the optimizer
            return 0.0

    r = assert_params_registered(model, BATCH, F.cross_entropy, step=guarded)
    assert r.optimizer == "Adam (called by your step)"


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"step": "train"}, TypeError, "step must be callable"),
        ({"optimizer": lambda p: None}, TypeError, "optimizer must be a factory"),
        ({"optimizer": torch.optim.Adam, "step": print}, ValueError, "not both"),
        ({"loss_fn": 3}, TypeError, "loss_fn must be callable"),
    ],
)
def test_rejects_bad_arguments(kwargs, error, message):
    loss_fn = kwargs.pop("loss_fn", F.cross_entropy)
    with pytest.raises(error, match=message):
        assert_params_registered(zoo.mlp(), BATCH, loss_fn, **kwargs)


def test_leaves_model_optimizer_and_global_state_unchanged_even_when_it_fails():
    model = Head(classes=10)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.head = nn.Linear(64, 5)
    model.eval()
    model.body[0].weight.grad = torch.ones_like(model.body[0].weight)
    r = assert_restores(
        lambda: measure_params_registered(
            model, FIVE, F.cross_entropy, step=step_with(model, optimizer)
        ),
        model,
    )
    assert not r.passed and optimizer.state == {}
    model = ListOfLayers(bug=True)
    before = snapshot(model.hidden[0])
    assert_restores(lambda: measure_params_registered(model, BATCH, F.cross_entropy), model)
    assert_same(before, snapshot(model.hidden[0]))  # not registered, not touched either


def test_results_are_the_same_run_after_run():
    first = measure_params_registered(ListOfLayers(bug=True), BATCH, F.cross_entropy)
    assert measure_params_registered(ListOfLayers(bug=True), BATCH, F.cross_entropy) == first
