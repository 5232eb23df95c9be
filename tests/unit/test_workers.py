"""Several GPUs: each pytest-xdist worker sees one GPU, a recipe's tests stay on one worker, and the controller
prints one verdict for what all workers ran. Checked on CPU with two workers (no GPU to pin: the tiny rows)."""

from __future__ import annotations

import json
import os
import re

import pytest
from suite_run import run_pytest

from perf.workers import case_scope, pin_worker_gpu


@pytest.mark.parametrize(("worker", "visible", "expected"), [("gw0", "0,1", "0"), ("gw1", "0,1", "1"),
                                                              ("gw2", "4,5", "4"), ("gw1", "3", "3")])
def test_worker_n_sees_gpu_n_of_the_visible_ones(monkeypatch, worker, visible, expected):
    monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert pin_worker_gpu() == expected
    assert os.environ["CUDA_VISIBLE_DEVICES"] == expected


def test_outside_a_worker_nothing_is_pinned(monkeypatch):
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert pin_worker_gpu() is None
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1"


@pytest.mark.parametrize(("nodeid", "scope"), [
    ("tests/perf/test_hotswap.py::test_generation_latency[h100-optimized]", "h100-optimized"),
    ("tests/perf/test_memory.py::test_bf16_pipeline_without_offload_breaks_the_budget[rtx4090-rtx4090_bf16]",
     "rtx4090-rtx4090_bf16"),
    ("tests/perf/test_serving.py::test_first_requests_compile_the_documented_count[h100-optimized-scale]",
     "h100-optimized"),
    ("tests/perf/test_serving.py::test_first_requests_compile_the_documented_count[h100-optimized_fast-named]",
     "h100-optimized_fast"),
    ("tests/perf/test_serving.py::test_first_requests_compile_the_documented_count[h100-optimized_fastest-named]",
     None),
    ("tests/unit/test_workflows.py::test_ci_script_treats_no_tests_collected_as_success[5-0]", None),
])
def test_a_recipes_tests_share_one_scope_and_other_tests_keep_theirs(nodeid, scope):
    """A serving test's id carries its scenario after the case: it still shares the case's scope (negative
    control: before, ``[h100-optimized-scale]`` fell to its module's scope, a worker of its own)."""
    assert case_scope(nodeid, {"h100-optimized", "h100-optimized_fast", "rtx4090-rtx4090_bf16"}) == scope


def test_two_workers_run_the_matrix_and_the_controller_reports_every_recipe(tmp_path):
    """``pytest -n 2``: all tests of a recipe run on one worker (its pipeline is built once), the one its record
    names; records say this session; the controller's verdict table lists both recipes. (Which worker takes
    which recipe is xdist's choice: one worker may take both.) Negative control, seen before the suite had its
    own scheduler: with pytest 9.2 ``--dist loadgroup`` split a recipe over both workers and this failed."""
    results = tmp_path / "results"
    done = run_pytest("-n", "2", "-vv", "-m", "cpu", "--recipes", "baseline,hotswap_eager", "--results-dir",
                      str(results), "--no-cold-start", "--rounds", "3", cache=tmp_path / "cache", timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    records = {p.stem: json.loads(p.read_text()) for p in (results / "cpu").glob("*.json")}
    assert set(records) == {"baseline", "hotswap_eager"}
    for recipe, record in records.items():
        ran_on = set(re.findall(rf"\[(gw\d)\] .*(?:PASSED|SKIPPED|FAILED|ERROR) \S+\[cpu-{recipe}\]", done.stdout))
        assert ran_on == {record["worker"]}, f"{recipe}: tests on {ran_on}, record from {record['worker']}"
    assert len({r["session"] for r in records.values()}) == 1
    assert all(r["latency"]["timer"] == "suite" and len(r["latency"]["samples_s"]) == 3 for r in records.values())
    verdict = done.stdout[done.stdout.index("flux-lora-perf verdict"):]
    assert "baseline" in verdict and "hotswap_eager" in verdict
