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
                         verdict=Verdict.REPRODUCED, interval=(0.5, 1.5),
                         interval_kind="demo interval", flip=0.0))
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


def test_claims_are_printed_as_a_table_and_written_as_json_with_provenance(pytester):
    pytester.makepyfile(CLAIM_TEST)
    result = pytester.runpytest("--nnsanity-report=out/claims.json")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "*nnsanity claims*",
            "claim*fidelity*published*verdict used*n*interval*interval kind*verdict*flip",
            "X1.demo*faithful*1*mean 1*3*[[]0.5, 1.5[]]*demo interval*reproduced*0.00",
            "1 reproduced; 0 identities*",
        ]
    )
    doc = json.loads((pytester.path / "out" / "claims.json").read_text())
    assert doc["seed"] == 0 and doc["budget"] == "smoke" and doc["device"] == "cpu"
    assert "cpu_count" in doc["machine"] and doc["wall_seconds"] > 0
    assert {"numpy", "scipy", "torch", "nnsanity"} <= set(doc["packages"])
    assert set(doc["git"]) == {"commit", "dirty"}
    (claim,) = doc["claims"]
    assert claim["measured"] == [0.9, 1.1, 1.0] and claim["verdict"] == "reproduced"
    assert claim["test"].endswith("::test_records_a_claim") and claim["seconds"] >= 0


def test_the_markdown_report_is_generated_from_the_json(pytester):
    pytester.makepyfile(CLAIM_TEST)
    pytester.runpytest("--nnsanity-report=claims.json").assert_outcomes(passed=1)
    figures = pytester.mkdir("figures")
    (figures / "N1_accuracy_by_depth.png").write_bytes(b"png")
    from nnsanity.repro.report import main

    main(["claims.json", "--markdown", "--figures", str(figures), "-o", "REPORT.md"])
    text = (pytester.path / "REPORT.md").read_text()
    assert "| `X1.demo` | nowhere | one is one | 1 | 1 ± 0.1 (n=3) | mean 1 |" in text
    assert "**Verdicts:** 1 reproduced; 0 identities" in text
    assert "![N1_accuracy_by_depth.png](figures/N1_accuracy_by_depth.png)" in text
    assert "**Commit:**" in text and "numpy" in text


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
    result.stdout.fnmatch_lines(["*X1.demo*reproduced*", "*X2.demo*reproduced*"])


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


def test_two_reports_are_compared_claim_by_claim():
    from nnsanity.repro.report import compare

    def doc(*claims):
        return {"claims": [{"id": i, "verdict": v, "flip": f} for i, v, f in claims]}

    first = doc(("A", "reproduced", 0.0), ("B", "reproduced", 0.3), ("C", "identity", 0.0))
    second = doc(("A", "reproduced", 0.0), ("B", "inconclusive", 0.4), ("D", "reproduced", 0.1))
    assert compare(first, second) == [
        "B: reproduced (flip 0.30) vs inconclusive (flip 0.40)",
        "C: only in the first report",
        "D: only in the second report",
        "1 of 2 shared claims have the same verdict",
    ]


def test_a_report_never_records_a_folder_of_the_machine():
    from nnsanity.repro.report import portable_command

    args = ["pytest", "reproductions", "--nnsanity-report=/home/me/runs/full.json", "-q"]
    assert portable_command(args) == "pytest reproductions --nnsanity-report=full.json -q"
    assert "/work" not in portable_command(["pytest", "--nnsanity-plots=/work/x/figs/"])


def test_the_report_lists_rows_in_the_notes_order_and_shares_as_percents():
    from nnsanity.repro.report import _interval, _used, counts, notes_order

    ids = ["K7.a", "N1.accuracy-1-hidden", "S1.x", "N8.y", "N9.z", "K11.fails-silently"]
    assert [c["id"] for c in notes_order([{"id": i} for i in ids])] == [
        "N8.y",
        "N9.z",
        "N1.accuracy-1-hidden",
        "S1.x",
        "K11.fails-silently",
        "K7.a",
    ]
    share = {"estimator": "proportion", "estimate": 0.125, "interval": [0.05, 0.3], "unit": "%"}
    assert _used(share) == "proportion 12.5%" and _interval(share) == "[5%, 30%]"
    claims = [
        {"id": "a", "verdict": "reproduced"},
        {"id": "b", "verdict": "not testable at this budget"},
        {"id": "c", "verdict": "reproduced", "origin": "ours"},
        {"id": "d", "verdict": "identity"},
    ]
    assert counts(claims) == (
        "1 reproduced, 1 not testable at this budget; 1 of our own predictions (1 held), "
        "counted apart; 1 identities (exact checks, not counted as reproductions)"
    )
