"""``--serving NAME,NAME`` serves only those scenarios, so GPU jobs can split them (each compiles for minutes there):
the others' tests skip saying so, the record holds only what was served, and nothing is made for the scenarios
left out."""

import json

from suite_run import run_pytest


def test_only_the_scenarios_named_are_served_and_the_others_skip_saying_why(tmp_path):
    results = tmp_path / "results"
    run = run_pytest("--recipes", "no_fa3_fp8", "--serving", "batches", "--no-churn", "--no-cold-start",
                     "-k", "test_serving and compiles_nothing", "-rs", "--results-dir", str(results),
                     cache=tmp_path / "cache", timeout=900)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    assert "1 passed," in output  # batches; every other scenario's test skipped with the reason
    for scenario in ("scale", "resident", "two", "named", "resolutions", "resolutions_static", "resolutions_dynamic"):
        assert f"--serving batches leaves {scenario} out" in output
    record = json.loads((results / "cpu" / "no_fa3_fp8.json").read_text())
    assert list(record["serving"]) == ["batches"]
    assert not list((tmp_path / "cache" / "loras").glob("churn-*"))  # made only for the scenarios keeping them
