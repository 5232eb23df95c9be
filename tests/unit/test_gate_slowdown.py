"""The upgrade gate's negative control lives in a test plugin, not in the library: with ``-p tests.gate_slowdown``
every generation spins the injected delay on the CPU, and the verdict against the unslowed baselines must say
regressed: on the ``cpu`` profile by the CPU seconds of the generations (gated), while their wall time is
reported and not gated (a shared machine's load moves it by seconds)."""

from __future__ import annotations

import json

from suite_run import run_pytest


def test_the_injected_delay_slows_every_generation_and_the_gate_fails_on_cpu_time(tmp_path, monkeypatch):
    baselines = tmp_path / "baselines"
    baselines.mkdir()
    common = ("-m", "cpu", "--recipes", "hotswap_eager", "--no-cold-start", "--rounds", "3", "--baselines-dir",
              str(baselines), "--results-dir", str(tmp_path / "results"))
    recorded = run_pytest(*common, "--update-baselines", cache=tmp_path / "cache", timeout=300)
    assert recorded.returncode == 0, recorded.stdout[-2000:]
    stored = json.loads((baselines / "cpu" / "hotswap_eager.json").read_text())["latency"]["cpu_samples_s"]
    delay = 2 * max(stored)  # the generation's own CPU time, tripled: beyond the cpu profile's 60% margin
    monkeypatch.setenv("FLUX_LORA_PERF_INJECT_DELAY_S", f"{delay:.3f}")

    done = run_pytest(*common, "-p", "tests.gate_slowdown", "--fail-on-regression", cache=tmp_path / "cache",
                      timeout=300)

    record = json.loads((tmp_path / "results" / "cpu" / "hotswap_eager.json").read_text())
    assert min(record["latency"]["cpu_samples_s"]) >= delay
    assert done.returncode == 1, done.stdout[-2000:]
    lines = {line.split()[1]: line for line in done.stdout.splitlines() if line.startswith("hotswap_eager  latency")}
    assert lines["latency_cpu_median_s"].split()[2] == "regressed", lines
    assert "regressed (not gated)" in lines["latency_median_s"], lines
