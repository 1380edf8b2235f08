"""The reproduction engine's pytest plugin (budget, MNIST, claims, report, plots, progress)."""

from __future__ import annotations

import json

import pytest

LOAD = 'pytest_plugins = ["nnsanity.repro.plugin"]\n'


@pytest.fixture(autouse=True)
def _load_the_engine_plugin(pytester):
    pytester.makeconftest(LOAD)


CLAIM_TEST = """
from nnsanity.repro.claims import Claim, Verdict

def test_records_a_claim(nnsanity_claim):
    nnsanity_claim(Claim(id="X1.demo", source="nowhere", statement="one is one",
                         published=1.0, measured=[0.9, 1.1, 1.0], statistic="demo",
                         verdict=Verdict.REPRODUCED, interval=(0.5, 1.5)))
"""


def test_options_can_be_set_in_the_ini_file(pytester):
    pytester.makeini("[pytest]\nnnsanity_seed = 9\nnnsanity_budget = full\n")
    pytester.makepyfile("def test_budget(nnsanity_budget): assert nnsanity_budget == 'full'")
    result = pytester.runpytest()
    result.stdout.fnmatch_lines(
        ["nnsanity: --nnsanity-seed=9 *", "nnsanity reproductions: --nnsanity-budget=full"]
    )
    result.assert_outcomes(passed=1)


def test_the_rerun_hint_carries_a_non_default_device_and_budget(pytester):
    pytester.makepyfile(
        """
        from nnsanity import SanityError

        def test_fails():
            raise SanityError("loss did not decrease")
        """
    )
    result = pytester.runpytest(
        "--nnsanity-seed=31", "--nnsanity-device=cuda:1", "--nnsanity-budget=full"
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*rerun with: pytest 'test_the_rerun*::test_fails' --nnsanity-seed=31 "
            "--nnsanity-device=cuda:1 --nnsanity-budget=full"
        ]
    )


def test_claims_are_printed_as_a_table_and_written_as_json(pytester):
    pytester.makepyfile(CLAIM_TEST)
    result = pytester.runpytest("--nnsanity-report=out/claims.json")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "*nnsanity claims*",
            "claim*published*verdict",
            "X1.demo*1*1 ± 0.1 (n=3)*[0.5, 1.5]*reproduced",
            "1 reproduced",
        ]
    )
    doc = json.loads((pytester.path / "out" / "claims.json").read_text())
    assert doc["seed"] == 0 and doc["budget"] == "smoke" and doc["device"] == "cpu"
    assert "torch" in doc["machine"] and "cpu_count" in doc["machine"]
    (claim,) = doc["claims"]
    assert claim["measured"] == [0.9, 1.1, 1.0] and claim["verdict"] == "reproduced"
    assert claim["test"].endswith("::test_records_a_claim")


def test_claims_from_xdist_workers_reach_the_table(pytester):
    pytest.importorskip("xdist")
    pytester.makepyfile(
        CLAIM_TEST
        + CLAIM_TEST.replace("X1.demo", "X2.demo").replace(
            "test_records_a_claim", "test_records_another"
        )
    )
    result = pytester.runpytest_subprocess("-n", "2", "--nnsanity-seed=5")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*X1.demo*reproduced", "*X2.demo*reproduced"])


def test_plots_without_matplotlib_is_a_clear_usage_error(pytester):
    pytester.makeconftest("import sys\nsys.modules['matplotlib'] = None\n" + LOAD)
    pytester.makepyfile("def test_ok(): pass")
    result = pytester.runpytest_subprocess("--nnsanity-plots=figs")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--nnsanity-plots needs matplotlib*nnsanity[[]repro[]]*"])


def test_a_missing_dataset_names_where_it_looked_and_the_fix(pytester, tmp_path):
    pytester.makepyfile("def test_data(nnsanity_mnist): pass")
    result = pytester.runpytest(f"--nnsanity-data-dir={tmp_path}")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            f"no MNIST found under {tmp_path}/MNIST/raw*"
            "Point --nnsanity-data-dir / NNSANITY_DATA_DIR*"
        ]
    )
    assert "Traceback" not in result.stdout.str() and "mnist.py" not in result.stdout.str()


PROGRESS_TEST = """
def test_long_run(nnsanity_progress):
    for done in range(0, 101, 20):
        nnsanity_progress("demo claim", done, 100)
"""


def test_progress_is_shown_past_output_capture_and_quiet_under_q(pytester):
    pytester.makepyfile(PROGRESS_TEST)
    result = pytester.runpytest()
    result.stdout.fnmatch_lines(["[[]nnsanity[]] demo claim: 100/100 model-epochs, *s, ETA 0s"])
    quiet = pytester.runpytest("-q")
    assert "demo claim" not in quiet.stdout.str()
