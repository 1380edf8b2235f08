"""assert_eval_mode: eval mode is deterministic, and BatchNorm collects and uses its statistics."""

from __future__ import annotations

import architectures as A
import pytest
import torch
import zoo
from causes import first_cause
from state_oracle import assert_restores
from torch import nn
from torch.nn import functional as F

from nnsanity import assert_eval_mode, measure_eval_mode
from nnsanity.errors import SanityError

pytestmark = pytest.mark.usefixtures("one_thread")

BATCH = zoo.classification_batch()


@pytest.mark.parametrize("name", zoo.HEALTHY)
def test_passes_on_the_healthy_zoo_with_defaults(name):
    model, batch, _ = zoo.healthy(name)
    assert assert_eval_mode(model, batch).difference == 0.0


@pytest.mark.parametrize("name", A.ZOO)
def test_passes_on_every_real_architecture_with_defaults(name):
    arch = A.ZOO[name]
    r = assert_eval_mode(arch.build(), arch.batch())
    assert r.difference == 0.0 and r.train_in_eval == ()


def test_checks_every_batchnorm_layer_of_a_resnet_including_zero_initialised_ones():
    r = assert_eval_mode(A.ZOO["timm_resnet18"].build(), A._images())  # bn2.weight = 0 in timm
    assert r.batchnorms == 20


class Block(nn.Module):
    """Linear + ReLU + dropout; ``functional`` drops with F.dropout's default training=True."""

    def __init__(self, functional: str = "", d: int = 32):
        super().__init__()
        self.fc, self.functional = nn.Linear(d, d), functional

    def forward(self, x):
        h = F.relu(self.fc(x))
        if self.functional == "bug":
            return F.dropout(h, 0.2)
        return F.dropout(h, 0.2, self.training)


def with_block(functional: str) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 32), Block(functional), nn.Linear(32, 10))


def test_f_dropout_with_its_default_training_true_is_caught_naming_the_module_it_is_in():
    with pytest.raises(
        SanityError,
        match=r"(?s)^Two eval-mode forwards of the same batch differ!\n\n"
        r"Where: '1' \(Block\): dropout\(p=0\.2\) at test_eval_mode\.py:\d+, in Block\.forward, "
        r"after '1\.fc' \(still holds\)\n"
        r"Largest difference between two eval forwards: [0-9.]+ \(up to 1e-05 allowed\) of the "
        r"output scale\n\n"
        r"Likely causes:\n  1\. F\.dropout\(x, p\) in a forward",
    ) as failure:
        assert_eval_mode(with_block("bug"), BATCH)
    assert first_cause(failure).id == "functional_dropout"
    assert assert_eval_mode(with_block("fixed"), BATCH).difference == 0.0


class SelfAttention(nn.Module):
    """Scaled dot-product attention with dropout on its weights; ``bug``: always on."""

    def __init__(self, bug: bool, d: int = 32):
        super().__init__()
        self.qkv, self.p, self.bug = nn.Linear(d, 3 * d), 0.1, bug

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, -1)
        p = self.p if self.bug or self.training else 0.0
        return F.scaled_dot_product_attention(q, k, v, dropout_p=p)


def attention_model(bug: bool) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(16, 32), SelfAttention(bug), nn.Linear(32, 16))


def test_attention_dropout_that_ignores_self_training_is_caught_with_the_attention_cause_first():
    batch = zoo.token_batch()
    with pytest.raises(
        SanityError,
        match=r"(?s)Where: '1' \(SelfAttention\): scaled_dot_product_attention at .*1\. attention "
        r"dropout that ignores self\.training",
    ) as failure:
        assert_eval_mode(attention_model(bug=True), batch)
    assert first_cause(failure).id == "attention_dropout"
    assert_eval_mode(attention_model(bug=False), batch)


class OwnTrain(nn.Module):
    """A ``train()`` override that sets its own flag only (``bug``), or passes the mode on."""

    def __init__(self, bug: bool):
        super().__init__()
        torch.manual_seed(0)
        self.bug = bug
        self.net = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 10))

    def train(self, mode: bool = True):
        if not self.bug:
            return super().train(mode)
        self.training = mode  # the children stay in whatever mode they were
        return self

    def forward(self, x):
        return self.net(x)


def test_a_train_override_that_leaves_dropout_on_is_caught_naming_the_modules_in_train_mode():
    with pytest.raises(
        SanityError,
        match=r"(?s)Where: 'net\.2' \(Dropout\).*"
        r"1\. modules ran in train mode during the eval forward \('net', 'net\.0', 'net\.1', "
        r"'net\.2', 'net\.3'\)",
    ):
        assert_eval_mode(OwnTrain(bug=True), BATCH)
    assert_eval_mode(OwnTrain(bug=False), BATCH)


class Normed(nn.Module):
    """An MLP with a BatchNorm layer built with ``kwargs``."""

    def __init__(self, bn: type[nn.Module] = nn.BatchNorm1d, **kwargs):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.bn, self.fc2 = nn.Linear(20, 32), bn(32, **kwargs), nn.Linear(32, 10)

    def forward(self, x):
        return self.fc2(F.relu(self.bn(self.fc1(x))))


def test_momentum_zero_is_caught_as_statistics_that_never_move():
    with pytest.raises(
        SanityError,
        match=r"(?s)^1 BatchNorm layer did not update its running statistics in train mode!"
        r"\n\nBatchNorm layers: 'bn' \(of 1 checked\)\nWith momentum=0: 'bn'\n"
        r"In eval mode during the train forward: none\n\nLikely causes:\n  1\. momentum=0",
    ):
        assert_eval_mode(Normed(momentum=0.0), BATCH)
    assert_eval_mode(Normed(momentum=None), BATCH)  # a cumulative average moves too


class FrozenNorm(Normed):
    """Keeps its BatchNorm in eval mode while training (frozen statistics for fine-tuning)."""

    def train(self, mode: bool = True):
        super().train(mode)
        self.bn.eval()
        return self


def test_a_batchnorm_kept_in_eval_mode_while_training_is_caught_unless_exempt():
    with pytest.raises(
        SanityError,
        match=r"(?s)did not update.*In eval mode during the train forward: 'bn'\n.*"
        r"1\. the layer stays in eval mode while the model trains",
    ):
        assert_eval_mode(FrozenNorm(), BATCH)
    assert assert_eval_mode(FrozenNorm(), BATCH, exempt="bn").batchnorms == 0


def test_track_running_stats_false_is_caught_as_batch_statistics_in_eval_unless_exempt():
    with pytest.raises(
        SanityError,
        match=r"(?s)1 BatchNorm layer has no running statistics \(track_running_stats=False\)!"
        r".*'bn'.*"
        r"1\. track_running_stats=False makes eval mode normalise with the batch",
    ):
        assert_eval_mode(Normed(track_running_stats=False), BATCH)
    assert_eval_mode(Normed(track_running_stats=False), BATCH, exempt=["b*"])


class BatchStatsAlways(nn.BatchNorm1d):
    """A BatchNorm subclass whose forward always normalises with the batch's statistics."""

    def forward(self, x):
        return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)


def test_a_batchnorm_that_ignores_its_running_statistics_in_eval_is_caught():
    with pytest.raises(
        SanityError, match=r"(?s)1 BatchNorm layer ignores its running statistics in eval mode!"
    ):
        assert_eval_mode(Normed(BatchStatsAlways), BATCH)
    r = measure_eval_mode(Normed(BatchStatsAlways), BATCH)
    assert r.stats_unused_in_eval == ("bn",) and r.stats_frozen == ("bn",)


class TrainsItsNorm(Normed):
    """Calls self.bn.train() in forward: eval mode normalises with batch statistics, and
    updates the running ones."""

    def forward(self, x):
        self.bn.train()
        return super().forward(x)


def test_a_batchnorm_switched_to_train_mode_in_forward_is_caught_with_its_mode_first():
    with pytest.raises(
        SanityError,
        match=r"(?s)^1 BatchNorm layer changed its running statistics in eval mode!.*'bn'.*"
        r"1\. modules ran in train mode during the eval forward \('bn'\)",
    ):
        assert_eval_mode(TrainsItsNorm(), BATCH)


def test_a_zero_initialised_batchnorm_weight_still_shows_its_statistics_are_used():
    model = Normed()
    nn.init.zeros_(model.bn.weight)  # its output is its bias whatever the statistics
    assert measure_eval_mode(model, BATCH).stats_unused_in_eval == ()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"exempt": [0]}, TypeError, "exempt must be a glob"),
        ({"exempt": "encoder.*"}, ValueError, "matches no BatchNorm layer; the model's are 'bn'"),
        ({"max_difference": -1}, ValueError, "max_difference must be"),
        ({"output": 5}, ValueError, "names no tensor"),
    ],
)
def test_rejects_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        assert_eval_mode(Normed(), BATCH, **kwargs)
    with pytest.raises(TypeError, match="model must be"):
        assert_eval_mode(lambda x: x, BATCH)


@pytest.mark.parametrize(
    "build",
    [lambda: Normed(momentum=0.0), TrainsItsNorm, lambda: OwnTrain(bug=True), A._dropout_cnn],
    ids=["momentum_0", "train_in_forward", "own_train", "dropout_batchnorm_cnn"],
)
def test_leaves_model_and_global_state_unchanged_even_when_it_fails(build):
    model = build()
    model.train()
    model.apply(lambda m: m.eval() if isinstance(m, nn.Dropout) else None)  # mixed modes
    batch = A._images() if isinstance(model, A.DropoutCNN) else BATCH
    assert_restores(lambda: measure_eval_mode(model, batch), model)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_results_are_the_same_run_after_run():
    first = measure_eval_mode(with_block("bug"), BATCH)
    assert measure_eval_mode(with_block("bug"), BATCH) == first


def _bn_cnn(momentum):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8, momentum=momentum), nn.ReLU(), nn.Flatten(),
        nn.Linear(8 * 14 * 14, 4),
    )  # fmt: skip


@pytest.mark.parametrize("momentum", [0.99, 0.9, 0.5])
def test_batchnorm_momentum_in_tensorflows_convention_fails_naming_the_layer(momentum):
    batch = (torch.randn(16, 3, 16, 16), torch.randint(0, 4, (16,)))
    with pytest.raises(
        SanityError,
        match=r"(?s)1 BatchNorm layer keeps only the last batch's running statistics.*"
        rf"'1' \(momentum={momentum:g}\).*Eval-vs-train gap.*"
        r"1\. BatchNorm momentum in TensorFlow's convention",
    ) as e:
        assert_eval_mode(_bn_cnn(momentum), batch)
    r = e.value.result
    assert r.last_batch_momentum == ("1",) and r.momentum_gap is not None


def test_batchnorm_with_pytorchs_momentum_passes():
    batch = (torch.randn(16, 3, 16, 16), torch.randint(0, 4, (16,)))
    r = assert_eval_mode(_bn_cnn(0.1), batch)
    assert r.last_batch_momentum == () and r.momentum_gap is None
