"""The upgrade gate's negative control lives in a test plugin, not in the library: with ``-p tests.gate_slowdown``
every generation sleeps the injected delay, and the verdict against the unslowed baselines must say regressed."""

from __future__ import annotations

import json
import shutil

from suite_run import ROOT, run_pytest


def test_the_injected_delay_slows_every_generation_and_the_gate_fails(tmp_path, monkeypatch):
    baselines = tmp_path / "baselines"
    shutil.copytree(ROOT / "baselines" / "cpu", baselines / "cpu")
    monkeypatch.setenv("FLUX_LORA_PERF_INJECT_DELAY_S", "0.5")

    done = run_pytest("-m", "cpu", "--recipes", "hotswap_eager", "--no-cold-start", "--rounds", "3",
                      "-p", "tests.gate_slowdown", "--baselines-dir", str(baselines), "--fail-on-regression",
                      "--results-dir", str(tmp_path / "results"), cache=tmp_path / "cache", timeout=300)

    record = json.loads((tmp_path / "results" / "cpu" / "hotswap_eager.json").read_text())
    assert min(record["latency"]["samples_s"]) >= 0.5
    assert done.returncode == 1, done.stdout[-2000:]
    latency = next(line for line in done.stdout.splitlines() if line.startswith("hotswap_eager") and "latency" in line)
    assert latency.split()[2] == "regressed", latency

