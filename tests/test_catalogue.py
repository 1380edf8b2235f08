"""The catalogue is the one list of checks: every check is in it, in the README table and in the
install test; its twins agree; its predicates say when a check applies."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest
import torch
from test_install import SCRIPT
from torch.nn import functional as F

import nnsanity
from nnsanity._result import CheckResult
from nnsanity.catalogue import BY_NAME, CATALOGUE, CATEGORIES, Subject, get

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
IDS = [c.name for c in CATALOGUE]


def _defined_asserts() -> dict[str, str]:
    """Every ``assert_*`` defined in a check module, with its module (read from the source)."""
    found = {}
    for path in sorted((ROOT / "nnsanity" / "checks").glob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("assert_"):
                found[node.name] = f"nnsanity.checks.{path.stem}"
    return found


def test_every_check_module_s_assert_is_in_the_catalogue_once():
    listed = {c.assert_name: c.module for c in CATALOGUE}
    assert len(listed) == len(CATALOGUE)
    assert listed == _defined_asserts(), "add one row to CATALOGUE in nnsanity/catalogue.py"


@pytest.mark.parametrize("check", CATALOGUE, ids=IDS)
def test_every_check_is_public_and_its_functions_and_result_load(check):
    for name in (check.assert_name, check.measure_name, check.result_name):
        assert name in nnsanity.__all__, name
    assert getattr(nnsanity, check.assert_name) is check.assert_fn
    assert getattr(nnsanity, check.measure_name) is check.measure_fn
    assert issubclass(check.result_type, CheckResult)


@pytest.mark.parametrize("check", CATALOGUE, ids=IDS)
def test_every_assert_has_its_measure_twin_s_parameters_and_defaults_plus_msg(check):
    asserts = dict(inspect.signature(check.assert_fn).parameters)
    msg = asserts.pop("msg")
    assert msg.kind is inspect.Parameter.KEYWORD_ONLY and msg.default is None
    measures = dict(inspect.signature(check.measure_fn).parameters)
    assert list(asserts) == list(measures), "the same parameters, in the same order"
    for name, p in measures.items():
        a = asserts[name]
        assert (a.kind, a.default, a.annotation) == (p.kind, p.default, p.annotation), name


def _readme_rows() -> dict[str, str]:
    """README table rows: ``assert_x`` -> the category heading it stands under."""
    table = README[README.index("## The checks") :]
    table = table[: table.index("\n\n", table.index("| function |"))]
    rows, heading = {}, ""
    for line in table.splitlines():
        if m := re.match(r"\| \*\*(.+?)\*\* \|", line):
            heading = m.group(1)
        elif m := re.match(r"\| `(assert_\w+)` \|", line):
            rows[m.group(1)] = heading
    return rows


def test_every_check_has_a_readme_row_under_its_category_and_every_row_is_a_check():
    rows = _readme_rows()
    assert set(rows) == {c.assert_name for c in CATALOGUE}
    for check in CATALOGUE:
        assert rows[check.assert_name] == CATEGORIES[check.category], check.name


def test_every_check_is_called_by_the_install_test():
    called = set(re.findall(r'^\s+"(assert_\w+)": lambda', SCRIPT, flags=re.M))
    assert called == {c.assert_name for c in CATALOGUE}


def test_get_names_the_checks_when_the_name_is_not_one():
    assert get("can_overfit") is BY_NAME["can_overfit"]
    with pytest.raises(ValueError, match=r"no check is called 'overfit'.*'can_overfit'"):
        get("overfit")


# -- when a check applies ---------------------------------------------------------------------


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))


def _pair() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(6, 4), torch.randint(0, 3, (6,))


def test_a_loss_is_needed_unless_the_batch_carries_labels_for_the_model():
    check = get("can_overfit")
    assert "needs a loss" in str(check.applies(Subject(_mlp(), _pair())))
    assert check.applies(Subject(_mlp(), _pair(), loss_fn=F.cross_entropy)) is None
    labelled = {"input_ids": torch.ones(2, 3, dtype=torch.long), "labels": torch.zeros(2, 3)}
    assert check.applies(Subject(_mlp(), labelled)) is None
    assert get("batch_independence").applies(Subject(_mlp(), _pair())) is None  # no loss used
    assert check.applies(Subject(_TakesTargets(), _pair())) is None  # its own loss


class _TakesTargets(torch.nn.Module):
    """nanoGPT's shape: ``model(idx, targets) -> (logits, loss)``."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x, targets=None):
        logits = self.fc(x)
        return logits, F.cross_entropy(logits, targets)


def test_learns_signal_needs_a_holdout():
    check = get("learns_signal")
    subject = Subject(_mlp(), _pair(), loss_fn=F.cross_entropy)
    assert "needs a holdout" in str(check.applies(subject))
    assert check.applies(Subject(_mlp(), _pair(), F.cross_entropy, holdout=_pair())) is None


def _tagger() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Embedding(9, 8, padding_idx=0), torch.nn.Linear(8, 3))


@pytest.mark.parametrize("name", ["ignores_padding", "loss_masks_padding"])
def test_the_padding_checks_apply_to_padded_batches_only(name):
    check = get(name)
    ids = torch.randint(1, 9, (4, 6))
    tags = torch.randint(0, 3, (4, 6))
    assert "needs padded positions" in str(
        check.applies(Subject(_tagger(), (ids, tags), F.mse_loss))
    )
    padded = ids.clone()
    padded[1:, 4:] = 0
    assert check.applies(Subject(_tagger(), (padded, tags), F.mse_loss)) is None
    # a mask the suite gives marks padding the batch cannot show
    mask = torch.zeros(4, 6, dtype=torch.bool)
    mask[2:, 5:] = True
    assert (
        check.applies(Subject(_mlp(), (torch.randn(4, 6), tags), F.mse_loss, padding=mask)) is None
    )


class _FakeHF(torch.nn.Linear):
    """A Hugging Face model as the predicate sees it: a config and can_generate()."""

    def __init__(self, generates: bool, encoder_decoder: bool) -> None:
        super().__init__(4, 4)
        self.config = type("Config", (), {"is_encoder_decoder": encoder_decoder})()
        self.generates = generates

    def can_generate(self) -> bool:
        return self.generates


def test_causality_applies_to_autoregressive_models_only():
    check = get("causal")
    x = torch.randn(2, 5, 4)
    assert check.applies(Subject(_FakeHF(True, False), x)) is None  # a decoder-only LM
    assert "may read every position" in str(check.applies(Subject(_FakeHF(True, True), x)))
    assert "may read every position" in str(check.applies(Subject(_FakeHF(False, False), x)))
    plain = Subject(torch.nn.Linear(4, 4), x)
    assert "set autoregressive = True" in str(check.applies(plain))
    assert check.applies(Subject(torch.nn.Linear(4, 4), x, autoregressive=True)) is None


def test_the_arguments_pass_the_suite_s_step_and_optimizer_only_to_checks_that_take_them():
    def opt(p):
        return torch.optim.SGD(p, lr=0.1)

    subject = Subject(_mlp(), _pair(), F.cross_entropy, optimizer=opt, holdout=_pair())
    args, kwargs = get("can_overfit").arguments(subject)
    assert args == (subject.model, subject.batch, F.cross_entropy) and kwargs == {"optimizer": opt}
    args, kwargs = get("batch_independence").arguments(subject)
    assert args == (subject.model, subject.batch) and kwargs == {}
    assert get("learns_signal").arguments(subject)[1] == {
        "optimizer": opt,
        "holdout": subject.holdout,
    }


def test_the_causal_inputs_drop_the_labels_and_the_reproducible_forward_restores_the_mode():
    batch = {"input_ids": torch.ones(2, 3, dtype=torch.long), "labels": torch.zeros(2, 3)}
    (_, inputs), _ = get("causal").arguments(Subject(_mlp(), batch))
    assert set(inputs) == {"input_ids"}
    (_, inputs), _ = get("causal").arguments(Subject(_mlp(), _pair()))
    assert inputs is not None and inputs.shape == (6, 4)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.5)).eval()
    (forward,), _ = get("reproducible").arguments(Subject(model, _pair()))
    first = forward()
    assert not model.training
    assert not torch.equal(first, forward()), "dropout on: two calls draw different masks"


def test_the_loss_masking_check_skips_a_padded_sequence_classifier_and_applies_to_a_tagger():
    from architectures import ZOO

    check = BY_NAME["loss_masks_padding"]
    bert = ZOO["bert_classifier"]  # a padded batch, one (B, 3) prediction per sequence
    reason = check.applies(Subject(bert.build(), bert.batch()))
    assert reason is not None and "a prediction per position" in reason
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 9, (4, 6), generator=g)
    ids[1:, 4:] = 0
    tagger = torch.nn.Sequential(torch.nn.Embedding(9, 8, padding_idx=0), torch.nn.Linear(8, 3))
    tags = torch.randint(0, 3, (4, 6), generator=g)
    loss = lambda z, y: F.cross_entropy(z.transpose(1, 2), y)  # noqa: E731
    assert check.applies(Subject(tagger, (ids, tags), loss_fn=loss)) is None
