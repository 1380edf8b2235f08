"""assert_finite: no NaN/Inf in parameters, outputs, loss or gradients; the first one is named."""

from __future__ import annotations

import numpy as np
import padding_zoo
import pytest
import torch
import zoo
from causes import cause_ids
from state_oracle import assert_same, snapshot
from torch import nn
from torch.nn import functional as F

from nnsanity import assert_finite, measure_finite
from nnsanity.errors import SanityError

BATCH = zoo.classification_batch()


class LogOfRelu(nn.Module):
    """log of a ReLU output: -inf wherever the unit is off."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = nn.Linear(20, 32), nn.Linear(32, 10)

    def forward(self, x):
        return self.fc2(torch.log(torch.relu(self.fc1(x))))


class Standardise(LogOfRelu):
    """Standardises its input by the batch std: 0/0 on a constant feature (a blank pixel)."""

    def forward(self, x):
        x = (x - x.mean(0)) / x.std(0)
        return self.fc2(torch.relu(self.fc1(x)))


class PairwiseDistances(nn.Module):
    """sqrt of squared distances: finite forward, NaN gradient from the zero diagonal."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = nn.Linear(20, 8), nn.Linear(16, 10)

    def forward(self, x):
        h = self.fc1(x)
        d = ((h[:, None] - h[None]) ** 2).sum(-1).sqrt()  # (B, B), zero on the diagonal
        return self.fc2(d)


@pytest.mark.parametrize("name", list(zoo.HEALTHY))
def test_passes_on_healthy_models_with_defaults(name):
    model_factory, batch_factory, loss_fn = zoo.HEALTHY[name]
    result = assert_finite(model_factory(), batch_factory(), loss_fn)
    assert result.passed and np.isfinite(result.loss)


def test_fails_on_the_log_of_a_value_that_can_be_zero_naming_where_it_appears():
    with pytest.raises(
        SanityError,
        match=r"(?s)The input of 'fc2' \(Linear\) is the first non-finite value in forward!"
        r".*Last finite module output: 'fc1' \(Linear\).*1\. log",
    ):
        assert_finite(LogOfRelu(), BATCH, F.cross_entropy)


def test_fails_on_a_division_by_zero():
    x, y = BATCH
    x = x.clone()
    x[:, 3] = 0.0
    with pytest.raises(
        SanityError,
        match=r"(?s)The input of 'fc1' \(Linear\) is the first non-finite value in forward!"
        r".*Non-finite values: 16 of 320 are NaN/Inf.*division",
    ):
        assert_finite(Standardise(), (x, y), F.cross_entropy)


def test_fails_on_a_non_finite_gradient_behind_a_finite_forward():
    with pytest.raises(
        SanityError,
        match=r"(?s)gradient at the output of 'fc1' \(Linear\) is the first non-finite gradient "
        r"in backward!.*NaN/Inf gradients: 'fc1\.weight', 'fc1\.bias'\n.*1\. .*sqrt",
    ):
        assert_finite(PairwiseDistances(), BATCH, F.cross_entropy)
    result = measure_finite(PairwiseDistances(), BATCH, F.cross_entropy)
    assert result.stage == "gradient" and "fc2.weight" not in result.nonfinite_grads


def test_fails_on_a_loss_that_takes_the_log_of_an_underflowed_softmax():
    def loss_fn(outputs, targets):
        return F.nll_loss(torch.log(F.softmax(1e4 * outputs, dim=1)), targets)

    with pytest.raises(
        SanityError,
        match=r"(?s)The loss is not finite though every output is!\n\nLoss: inf\n.*log_softmax",
    ):
        assert_finite(zoo.mlp(), BATCH, loss_fn)


def test_fails_naming_a_nan_parameter_or_buffer():
    model = zoo.cnn()
    with torch.no_grad():
        model[4].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(
        SanityError, match=r"Parameter '4\.weight' is not finite!\n\nNon-finite values: 1 of 1152"
    ):
        assert_finite(model, zoo.image_batch(), F.cross_entropy)
    model = zoo.cnn()
    model[1].running_var[0] = float("inf")
    with pytest.raises(SanityError, match=r"Buffer '1\.running_var' is not finite"):
        assert_finite(model, zoo.image_batch(), F.cross_entropy)


def test_works_in_float64():
    model, (x, y) = zoo.mlp().double(), BATCH
    assert assert_finite(model, (x.double(), y), F.cross_entropy).passed


def test_rejects_bad_arguments():
    with pytest.raises(TypeError, match="model must be"):
        assert_finite(lambda x: x, BATCH, F.cross_entropy)
    with pytest.raises(TypeError, match="batch must be"):
        assert_finite(zoo.mlp(), BATCH[0], F.cross_entropy)
    x = BATCH[0].clone()
    x[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN/Inf"):
        assert_finite(zoo.mlp(), (x, BATCH[1]), F.cross_entropy)


def test_leaves_model_and_global_state_unchanged_and_removes_its_hooks():
    model = LogOfRelu()
    model.eval()
    model.fc1.weight.grad = torch.ones_like(model.fc1.weight)
    before = snapshot(model)
    with pytest.raises(SanityError):
        assert_finite(model, BATCH, F.cross_entropy)
    assert_same(before, snapshot(model))
    assert torch.equal(model.fc1.weight.grad, torch.ones_like(model.fc1.weight))
    assert model.fc2.weight.grad is None and not model.training and torch.is_grad_enabled()
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_field_report_05_nan_on_the_eval_path_of_an_inverted_padding_mask_is_named():
    """True passed for the real tokens as key_padding_mask: train mode gives 0 for a sentence
    without padding (every key masked), the eval fast path under no_grad gives NaN."""
    model, batch = padding_zoo.MaskedClassifier(inverted=True), padding_zoo.sentences()
    with pytest.raises(
        SanityError,
        match=r"(?s)^The output of 'enc' \(TransformerEncoderLayer\) is the first non-finite "
        r"value in eval mode!\n\nWhere: 'enc' \(TransformerEncoderLayer\)\n"
        r"First non-finite value in an eval-mode forward under no_grad\(\)"
        r": the output of 'enc' \(TransformerEncoderLayer\) \(the training step is finite\)\n"
        r"Non-finite values: 768 of 3072 are NaN/Inf\nLast finite module output: 'emb' "
        r"\(Embedding\)\n\nLikely causes:\n  1\. a query whose every key is masked",
    ):
        assert_finite(model, batch, F.cross_entropy)
    r = assert_finite(padding_zoo.MaskedClassifier(), batch, F.cross_entropy)
    assert all("forward" not in vars(m) for m in model.modules())  # the wrappers are gone
    assert r.passed


class LogInEval(LogOfRelu):
    """Takes the log of a ReLU output in eval mode only: -inf where a unit is off."""

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        return self.fc2(h if self.training else torch.log(h))


def test_a_non_finite_value_only_on_the_eval_path_names_the_eval_only_branch_first():
    with pytest.raises(
        SanityError,
        match=r"The input of 'fc2' \(Linear\) is the first non-finite value in eval mode!",
    ) as e:
        assert_finite(LogInEval(), BATCH, F.cross_entropy)
    # the op that made it, at its line, then the eval-only branch it sits in
    assert e.value.result.where.op == "log" and "test_finite.py" in e.value.result.where.line
    assert cause_ids(e)[:2] == ["log_of_zero", "eval_only_branch"]
    assert e.value.result.stage == "eval input" and np.isfinite(e.value.result.loss)
