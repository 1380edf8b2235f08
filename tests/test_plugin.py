"""The core pytest plugin (seed, device, header, rerun hint), driven through real pytest runs."""

from __future__ import annotations

import pytest


def test_header_shows_the_seed_as_the_flag_that_reproduces_the_run(pytester):
    pytester.makepyfile("def test_ok(): pass")
    result = pytester.runpytest("--nnsanity-seed=1234")
    result.stdout.fnmatch_lines(["nnsanity: --nnsanity-seed=1234 --nnsanity-device=cpu"])


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


def test_last_without_the_cache_is_a_usage_error_not_seed_0(pytester):
    pytester.makepyfile("def test_ok(): pass")
    result = pytester.runpytest("--nnsanity-seed=last", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--nnsanity-seed=last reads the previous run's seed*"])


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


def test_the_rerun_hint_carries_a_non_default_device(pytester):
    pytester.makepyfile(
        """
        from nnsanity import SanityError

        def test_fails():
            raise SanityError("loss did not decrease")
        """
    )
    result = pytester.runpytest("--nnsanity-seed=31", "--nnsanity-device=cuda:1")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*rerun with: pytest 'test_the_rerun*::test_fails' --nnsanity-seed=31 --nnsanity-device=*"]
    )


def test_users_of_the_checks_see_no_reproduction_options_or_fixtures(pytester):
    # the reproduction engine's plugin is opt-in: a user's pytest --help stays about the checks
    result = pytester.runpytest("--help")
    assert "--nnsanity-seed" in result.stdout.str()
    for engine_only in ("--nnsanity-budget", "--nnsanity-data-dir", "--nnsanity-report"):
        assert engine_only not in result.stdout.str()
    pytester.makepyfile("def test_data(nnsanity_mnist): pass")
    pytester.runpytest().assert_outcomes(errors=1)
