"""``SanitySuite`` through real pytest runs: one test per check, skips that say why, a failure
that shows the check's message, -k, markers, xdist, and the Markdown, JSON and terminal reports."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from nnsanity import SanityError, SanitySuite
from nnsanity.catalogue import CATALOGUE
from nnsanity.suite import NotApplicable

# A user's test file: a healthy MLP, and the same MLP subtracting the batch mean in forward.
SUITES = """
import pytest
import torch
import torch.nn.functional as F
from nnsanity import SanityError, SanitySuite


def signal(n, seed):  # a learnable relation, shared by the batch and the holdout
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return x, x[:, :3].argmax(1)


class TestMLP(SanitySuite):
    loss_fn = F.cross_entropy

    def model(self):
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))

    def batch(self):
        return signal(128, 1)

    def holdout(self):
        return signal(128, 2)


class MeanMLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)
        )

    def forward(self, x):
        return self.net(x - x.mean(0))


class TestMeanMLP(TestMLP):
    def model(self):
        torch.manual_seed(0)
        return MeanMLP()
"""
NAMES = [c.name for c in CATALOGUE]
# Runs that execute checks go to a subprocess: an in-process run drops the modules first
# imported inside it (torch's among them), and torch cannot load some of them twice.
# A plain MLP's batch holds no padding and the MLP does not say it is autoregressive
NOT_APPLICABLE = {c.name for c in CATALOGUE if c.needs & {"sequence", "padding"}}


@pytest.fixture
def suites(pytester):
    pytester.makepyfile(test_sanity=SUITES)
    return pytester


def test_a_suite_collects_one_test_per_check_with_ids_naming_the_check(suites):
    result = suites.runpytest("--collect-only", "-q")
    ids = {line for line in result.outlines if "::" in line}
    assert ids == {f"test_sanity.py::{s}::{n}" for s in ("TestMLP", "TestMeanMLP") for n in NAMES}


def test_the_healthy_mlp_passes_every_check_that_applies_and_skips_the_rest_saying_why(suites):
    js = suites.path / "results.json"
    suites.runpytest_subprocess("-p", "no:randomly", "-k", "TestMLP", f"--nnsanity-json={js}")
    results = {r["check"]: r for r in json.loads(js.read_text())["results"]}
    assert set(results) == set(NAMES)
    for name, r in results.items():
        if name in NOT_APPLICABLE:
            assert r["verdict"] == "skip" and r["reason"].startswith(f"{name} needs "), r
        else:
            assert r["verdict"] == "pass" and r["result"]["passed"], r


def test_a_model_subtracting_the_batch_mean_fails_batch_independence_with_the_check_message(
    suites,
):
    result = suites.runpytest_subprocess(
        "-p", "no:randomly", "-k", "TestMeanMLP and batch_independence"
    )
    result.assert_outcomes(failed=1)
    text = result.stdout.str()
    assert "Outputs depend on other samples' inputs!" in text  # the check's own message
    assert "mean(dim=0) reduces over the batch dim" in text  # its diagnosis
    rerun = "rerun with: pytest 'test_sanity.py::TestMeanMLP::batch_independence' --nnsanity-seed=0"
    assert rerun in text
    assert "self.suite().run" not in text, "the message, not the plugin's traceback"


def test_dash_k_selects_one_test_per_suite(suites):
    result = suites.runpytest("--collect-only", "-q", "-k", "can_overfit")
    ids = [line for line in result.outlines if "::" in line]
    assert ids == [
        "test_sanity.py::TestMLP::can_overfit",
        "test_sanity.py::TestMeanMLP::can_overfit",
    ]


def test_markers_select_suites_and_checks(pytester):
    pytester.makeini("[pytest]\nmarkers =\n    slow: slow suites\n")
    pytester.makepyfile(
        test_marked=SUITES
        + "\n\n@pytest.mark.slow\nclass TestSlow(TestMLP):\n    checks = ['finite']\n\n"
        + "def test_plain():\n    pass\n"
    )
    fast = pytester.runpytest("--collect-only", "-q", "-m", "not slow", "-k", "finite")
    assert [ln for ln in fast.outlines if "TestSlow" in ln] == []
    assert "test_marked.py::TestMLP::finite" in fast.outlines
    # the plugin marks every suite test nnsanity (with its check and category)
    ours = pytester.runpytest("--collect-only", "-q", "-m", "nnsanity")
    assert "test_marked.py::test_plain" not in ours.outlines
    assert "test_marked.py::TestSlow::finite" in ours.outlines


def test_checks_and_skip_choose_the_tests_and_an_unknown_name_is_a_collection_error(pytester):
    pytester.makepyfile(
        test_chosen=SUITES
        + "\n\nclass TestChosen(TestMLP):\n    checks = ['finite', 'can_overfit']\n"
        + "    skip = {'can_overfit': 'too slow for this job'}\n\n"
        + "class TestTypo(TestMLP):\n    checks = ['overfit']\n"
    )
    result = pytester.runpytest_subprocess(
        "-p", "no:randomly", "-rs", "-k", "TestChosen", "--continue-on-collection-errors"
    )
    result.assert_outcomes(passed=1, skipped=1, errors=1)  # the error: TestTypo
    result.stdout.fnmatch_lines(
        [
            "*TestTypo: no check is called 'overfit'*",
            "SKIPPED * test_chosen.py:*too slow for this job",
        ]
    )


def test_under_xdist_the_markdown_and_json_reports_gather_every_worker_s_results(suites):
    md, js = suites.path / "summary.md", suites.path / "results.json"
    md.write_text("earlier step\n")  # $GITHUB_STEP_SUMMARY is appended to
    result = suites.runpytest_subprocess(
        "-p", "no:randomly", "-n", "2", f"--nnsanity-md={md}", f"--nnsanity-json={js}"
    )
    n = len(NOT_APPLICABLE)
    result.assert_outcomes(passed=2 * (len(NAMES) - n) - 1, failed=1, skipped=2 * n)
    text = md.read_text()
    assert text.startswith("earlier step\n")
    header, rows = text.splitlines()[3], text.splitlines()[5:7]
    assert header == "| suite | " + " | ".join(NAMES) + " |"
    healthy, buggy = sorted(rows, key=lambda row: "MeanMLP" in row)
    cells = dict(zip(NAMES, (c.strip() for c in buggy.strip("|").split("|")[1:]), strict=True))
    assert cells["batch_independence"].startswith("**FAIL** ") and cells["causal"] == "skip"
    assert cells["can_overfit"].startswith("pass ") and cells["can_overfit"].endswith("s")
    assert "FAIL" not in healthy
    data = json.loads(js.read_text())
    assert data["seed"] == 0
    (failed,) = [r for r in data["results"] if r["verdict"] == "fail"]
    assert failed["check"] == "batch_independence" and failed["suite"].endswith("TestMeanMLP")
    measured = failed["result"]
    assert measured["passed"] is False and measured["max_dependence"] == 1e-05  # the bound
    assert max(measured["dependence"]) > measured["max_dependence"]  # the values it measured
    skipped = [r for r in data["results"] if r["verdict"] == "skip"]
    assert all(r["reason"] and r["result"] is None for r in skipped)
    # the terminal summary: one line per suite
    result.stdout.fnmatch_lines(
        ["*- nnsanity suites -*", "suite * pass  fail  skip  seconds  failed"]
    )
    line = rf"test_sanity.py::TestMeanMLP +\d+ +1 +{n} .* batch_independence$"
    result.stdout.re_match_lines([line])


# -- the class itself, without pytest ---------------------------------------------------------


def _pair():
    g = torch.Generator().manual_seed(0)
    return torch.randn(8, 4, generator=g), torch.randint(0, 3, (8,), generator=g)


class _Base(SanitySuite):
    def model(self):
        torch.manual_seed(0)
        return torch.nn.Linear(4, 3)

    def batch(self):
        return _pair()


class _AsValue(_Base):
    loss_fn = F.cross_entropy


class _AsLambda(_Base):
    loss_fn = staticmethod(lambda z, y: F.cross_entropy(z, y))


class _AsBareLambda(_Base):
    loss_fn = lambda z, y: F.cross_entropy(z, y)  # noqa: E731 (a user writes it so)


class _AsMethod(_Base):
    def loss_fn(self, outputs, targets):
        return F.cross_entropy(outputs, targets)


@pytest.mark.parametrize("suite", [_AsValue, _AsLambda, _AsBareLambda, _AsMethod])
def test_a_loss_given_as_a_function_a_lambda_or_a_method_is_called_with_outputs_and_targets(suite):
    loss_fn = suite().subject().loss_fn
    x, y = _pair()
    assert torch.equal(
        loss_fn(torch.nn.Linear(4, 3)(x) * 0, y), F.cross_entropy(torch.zeros(8, 3), y)
    )
    assert suite().run("finite").passed


def test_run_raises_not_applicable_with_the_reason_and_every_factory_is_called_afresh():
    with pytest.raises(NotApplicable, match="needs a loss"):
        _Base().run("can_overfit")
    suite = _AsValue()
    assert suite.subject().model is not suite.subject().model


def test_a_suite_without_model_or_batch_says_what_to_define():
    with pytest.raises(NotImplementedError, match=r"SanitySuite must define model\(\), a factory"):
        SanitySuite().model()
    with pytest.raises(NotImplementedError, match=r"SanitySuite must define batch\(\), a factory"):
        SanitySuite().subject()


@pytest.mark.parametrize(
    ("attribute", "value", "error"),
    [
        ("checks", "everything", 'must be "all" or a list'),
        ("checks", ["finite", "overfit"], "no check is called 'overfit'"),
        ("skip", {"overfit": "slow"}, "no check is called 'overfit'"),
        ("options", {"overfit": {}}, "no check is called 'overfit'"),
    ],
)
def test_a_name_that_is_not_a_check_is_a_value_error_listing_the_checks(attribute, value, error):
    suite = type("TestBad", (_AsValue,), {attribute: value})
    with pytest.raises(ValueError, match=error):
        suite.selected()


def test_options_reach_the_check():
    strict = type("TestStrict", (_AsValue,), {"options": {"update_ratio": {"max_ratio": 1e-9}}})

    with pytest.raises(SanityError, match="up to 1e-09 allowed"):
        strict().run("update_ratio")
    assert _AsValue().run("update_ratio").passed


def test_the_readme_s_first_example_is_a_suite_whose_every_applicable_check_passes(pytester):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    first = re.findall(r"```python\n(.*?)```", readme, flags=re.S)[0]
    assert "(SanitySuite):" in first, "the README shows the one-class way first"
    pytester.makepyfile(test_sanity=first)
    result = pytester.runpytest_subprocess("-p", "no:randomly")
    skips = len(NOT_APPLICABLE) + 1  # and learns_signal: the example has no holdout
    result.assert_outcomes(passed=len(NAMES) - skips, skipped=skips)


class _WithStepFactory(_AsValue):
    """A user's training step, built for each check's fresh model; ``skip_update`` plants the
    bug of a step that never calls ``optimizer.step()``."""

    skip_update = False

    def step_factory(self, model):
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        self.built.append(model)

        def step(batch):
            opt.zero_grad()
            loss = F.cross_entropy(model(batch[0]), batch[1])
            loss.backward()
            if not self.skip_update:
                opt.step()
            return loss

        return step


def test_a_step_factory_builds_the_user_s_step_for_each_check_s_own_model():
    healthy = _WithStepFactory()
    healthy.built = []
    assert healthy.run("params_update").passed
    assert healthy.run("update_ratio").passed
    assert len(healthy.built) == 2 and healthy.built[0] is not healthy.built[1]
    broken = type("TestNoStep", (_WithStepFactory,), {"skip_update": True})()
    broken.built = []
    with pytest.raises(SanityError, match=r"optimizer\.step"):
        broken.run("params_update")


DEEP = """
import torch
import torch.nn.functional as F
from nnsanity import SanitySuite


class TestDeep(SanitySuite):
    checks = ["gradient_ratio", "activation_growth", "can_overfit", "finite"]
    loss_fn = F.cross_entropy

    def model(self):
        torch.manual_seed(0)
        hidden = [m for _ in range(4) for m in (torch.nn.Linear(32, 32), torch.nn.ReLU())]
        model = torch.nn.Sequential(
            torch.nn.Linear(8, 32), torch.nn.ReLU(), *hidden, torch.nn.Linear(32, 3)
        )
        for m in model[:-1]:  # He init: a deep ReLU stack's signal keeps its scale
            if isinstance(m, torch.nn.Linear):
                torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        return model

    def batch(self):
        g = torch.Generator().manual_seed(0)
        return torch.randn(16, 8, generator=g), torch.randint(0, 3, (16,), generator=g)
"""


def test_plots_save_the_profiles_a_check_measured_and_none_for_the_others(pytester):
    pytest.importorskip("matplotlib")
    pytester.makepyfile(test_deep=DEEP)
    result = pytester.runpytest_subprocess("-p", "no:randomly", "--nnsanity-plots=figures")
    result.assert_outcomes(passed=4)
    saved = sorted(p.name for p in (pytester.path / "figures").iterdir())
    prefix = "test_deep.py_TestDeep"
    assert saved == [
        f"{prefix}.{c}.png" for c in ("activation_growth", "can_overfit", "gradient_ratio")
    ]
    assert all((pytester.path / "figures" / name).read_bytes()[:4] == b"\x89PNG" for name in saved)


def test_plots_without_matplotlib_is_a_usage_error_that_says_what_to_install(pytester, monkeypatch):
    blocker = pytester.mkdir("no_matplotlib") / "matplotlib"
    blocker.mkdir()
    (blocker / "__init__.py").write_text("raise ImportError('blocked: no matplotlib')\n")
    monkeypatch.setenv(
        "PYTHONPATH", f"{blocker.parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    )
    pytester.makepyfile(test_deep=DEEP)
    result = pytester.runpytest_subprocess("--nnsanity-plots=figures")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--nnsanity-plots needs matplotlib: pip install matplotlib*"])


def test_the_reports_are_written_without_a_terminal_and_when_no_suite_ran(pytester):
    pytester.makepyfile(
        test_one=SUITES + "\n\nclass TestOne(TestMLP):\n    checks = ['finite']\n",
        test_plain="def test_plain():\n    pass\n",
    )
    js = pytester.path / "one.json"
    args = ("-p", "no:randomly", "-p", "no:terminal", "-k", "TestOne", f"--nnsanity-json={js}")
    pytester.runpytest_subprocess(*args)
    (only,) = json.loads(js.read_text())["results"]
    assert (only["check"], only["verdict"]) == ("finite", "pass")
    md, js = pytester.path / "none.md", pytester.path / "none.json"
    plain = pytester.runpytest("test_plain.py", f"--nnsanity-md={md}", f"--nnsanity-json={js}")
    plain.assert_outcomes(passed=1)
    assert json.loads(js.read_text())["results"] == []
    assert md.read_text() == "## nnsanity\n\nNo SanitySuite ran.\n"


def test_a_suite_s_own_test_methods_and_fixtures_are_collected_beside_its_checks(pytester):
    pytester.makepyfile(
        test_extra=SUITES
        + "\n\nclass TestExtra(TestMLP):\n    checks = ['finite']\n\n"
        + "    @pytest.fixture\n    def rows(self):\n        return self.batch()[0].shape[0]\n\n"
        + "    def test_batch_rows(self, rows):\n        assert rows == 128\n"
    )
    listed = pytester.runpytest("--collect-only", "-q", "-k", "TestExtra").outlines
    assert [ln for ln in listed if "::" in ln] == [
        "test_extra.py::TestExtra::finite",
        "test_extra.py::TestExtra::test_batch_rows",
    ]
    pytester.runpytest("-k", "TestExtra and test_batch_rows").assert_outcomes(passed=1)
