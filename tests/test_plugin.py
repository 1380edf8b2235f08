"""The pytest plugin, driven through real pytest runs with pytester."""

from __future__ import annotations

import json

import pytest

CLAIM_TEST = """
from nnsanity.claims import Claim, Verdict

def test_records_a_claim(nnsanity_claim):
    nnsanity_claim(Claim(id="X1.demo", source="nowhere", statement="one is one",
                         published=1.0, measured=[0.9, 1.1, 1.0], statistic="demo",
                         verdict=Verdict.REPRODUCED, interval=(0.5, 1.5)))
"""


def test_header_shows_the_seed_as_the_flag_that_reproduces_the_run(pytester):
    pytester.makepyfile("def test_ok(): pass")
    result = pytester.runpytest("--nnsanity-seed=1234")
    result.stdout.fnmatch_lines(["nnsanity: --nnsanity-seed=1234 --nnsanity-budget=smoke*"])


def test_seed_fixture_seeds_torch_numpy_random_and_restores_them(pytester):
    pytester.makepyfile(
        """
        import random, numpy as np, torch

        def test_seeded(nnsanity_seed):
            assert nnsanity_seed == 77
            a = (torch.rand(1).item(), np.random.rand(), random.random())
            torch.manual_seed(77); np.random.seed(77); random.seed(77)
            assert a == (torch.rand(1).item(), np.random.rand(), random.random())

        def test_state_is_restored(request):
            torch.manual_seed(5)
            before = torch.get_rng_state().clone()
            request.getfixturevalue("nnsanity_seed")
            torch.rand(10)
            # teardown of the fixture happens after this test; check in the next one
            pytest_state["before"] = before

        pytest_state = {}

        def test_after():
            assert torch.equal(torch.get_rng_state(), pytest_state["before"])
        """
    )
    pytester.runpytest("--nnsanity-seed=77", "-p", "no:randomly").assert_outcomes(passed=3)


def test_last_reuses_the_previous_runs_seed(pytester):
    pytester.makepyfile("def test_ok(): pass")
    first = pytester.runpytest("--nnsanity-seed=random")
    seed = next(ln for ln in first.outlines if ln.startswith("nnsanity: ")).split()[1]
    again = pytester.runpytest("--nnsanity-seed=last")
    again.stdout.fnmatch_lines([f"nnsanity: {seed} *"])


def test_a_bad_seed_is_a_usage_error(pytester):
    pytester.makepyfile("def test_ok(): pass")
    result = pytester.runpytest("--nnsanity-seed=abc")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--nnsanity-seed must be an integer*"])


@pytest.mark.parametrize("seed", ["-1", str(2**64)])
def test_a_seed_outside_what_torch_takes_is_a_usage_error(pytester, seed):
    pytester.makepyfile("def test_ok(nnsanity_seed): pass")
    result = pytester.runpytest(f"--nnsanity-seed={seed}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*--nnsanity-seed must be in [[]0, 2**64), got {seed}*"])


def test_options_can_be_set_in_the_ini_file(pytester):
    pytester.makeini("[pytest]\nnnsanity_seed = 9\nnnsanity_budget = full\n")
    pytester.makepyfile("def test_budget(nnsanity_budget): assert nnsanity_budget == 'full'")
    result = pytester.runpytest()
    result.stdout.fnmatch_lines(["nnsanity: --nnsanity-seed=9 --nnsanity-budget=full*"])
    result.assert_outcomes(passed=1)


def test_cuda_device_is_a_clear_skip_without_cuda(pytester):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    pytester.makepyfile("def test_dev(nnsanity_device): pass")
    result = pytester.runpytest("--nnsanity-device=cuda", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*asked for CUDA, but torch sees no CUDA device*"])


def test_cpu_device_is_the_default(pytester):
    pytester.makepyfile("def test_dev(nnsanity_device): assert str(nnsanity_device) == 'cpu'")
    pytester.runpytest().assert_outcomes(passed=1)


def test_a_failed_check_says_how_to_rerun_with_the_same_seed(pytester):
    pytester.makepyfile(
        """
        from nnsanity import SanityError

        def test_fails(nnsanity_seed):
            raise SanityError("loss did not decrease")
        """
    )
    result = pytester.runpytest("--nnsanity-seed=31")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*rerun with: pytest 'test_a_failed_check*::test_fails' --nnsanity-seed=31"]
    )


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


def test_xdist_workers_share_the_controllers_seed(pytester):
    pytest.importorskip("xdist")
    pytester.makepyfile(
        "\n".join(f"def test_{i}(nnsanity_seed): assert nnsanity_seed == 4242" for i in range(4))
    )
    pytester.runpytest_subprocess("-n", "2", "--nnsanity-seed=4242").assert_outcomes(passed=4)


def test_loading_the_plugin_does_not_import_torch(pytester):
    pytester.makepyfile(
        """
        import sys

        def test_no_torch():
            assert "torch" not in sys.modules
        """
    )
    pytester.runpytest_subprocess("-p", "no:randomly").assert_outcomes(passed=1)


def test_plots_without_matplotlib_is_a_clear_usage_error(pytester):
    pytester.makeconftest("import sys\nsys.modules['matplotlib'] = None\n")
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
    assert "Traceback" not in result.stdout.str() and "datasets.py" not in result.stdout.str()


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
