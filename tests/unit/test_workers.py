"""Several GPUs: each pytest-xdist worker sees one GPU, a recipe's tests stay on one worker, and the controller
prints one verdict for what all workers ran. Checked on CPU with two workers (no GPU to pin: the tiny rows)."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest
from suite_run import run_pytest

from perf.workers import pin_worker_gpu, prefer_loadgroup


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


@pytest.mark.parametrize(("dist", "switched", "after"), [("load", True, "loadgroup"), ("no", False, "no"),
                                                          ("loadscope", False, "loadscope")])
def test_plain_dash_n_becomes_loadgroup(dist, switched, after):
    config = SimpleNamespace(option=SimpleNamespace(dist=dist))
    assert prefer_loadgroup(config) is switched
    assert config.option.dist == after


def test_two_workers_run_the_matrix_and_the_controller_reports_every_recipe(tmp_path):
    """``pytest -n 2``: the two recipes run on different workers (loadgroup), each record says its worker and
    this session, and the verdict table printed by the controller lists both recipes."""
    results = tmp_path / "results"
    done = run_pytest("-n", "2", "-m", "cpu", "--recipes", "baseline,hotswap_eager", "--results-dir", str(results),
                      "--no-cold-start", "--rounds", "3", cache=tmp_path / "cache", timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    records = {p.stem: json.loads(p.read_text()) for p in (results / "cpu").glob("*.json")}
    assert set(records) == {"baseline", "hotswap_eager"}
    assert {r["worker"] for r in records.values()} == {"gw0", "gw1"}
    assert len({r["session"] for r in records.values()}) == 1
    assert all(r["latency"]["timer"] == "suite" and len(r["latency"]["samples_s"]) == 3 for r in records.values())
    verdict = done.stdout[done.stdout.index("flux-lora-perf verdict"):]
    assert "baseline" in verdict and "hotswap_eager" in verdict
