"""The upgrade gate on real published packages, on the CPU: three upgrades of the CI lock, each moving the
package that does harm and a harmless one (accelerate 1.15.0 -> 1.14.0), must each give the right verdict, and
the bisect must name the harmful package. The packages are overlaid on this environment (pip --no-deps
--target), never a second torch; the known-good run and the harmless mix are run once and reused by every test
(same stack, same command). Needs pip to reach PyPI (or PIP_FIND_LINKS / a mirror with these versions)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
KNOWN_GOOD = ROOT / "constraints" / "known-good.txt"
HARMLESS = {"accelerate": "1.14.0"}
SUITE = ("--recipes", "hotswap_eager", "--no-churn", "--no-cold-start", "--rounds", "3")


@pytest.fixture(scope="module")
def gate_dirs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Results, installed packages and the suite cache, shared by the module's gate runs."""
    return tmp_path_factory.mktemp("gate")


def candidate_file(folder: Path, moves: dict[str, str]) -> Path:
    """The CI lock with ``moves`` applied: the upgrade under test."""
    lines = []
    for line in KNOWN_GOOD.read_text().splitlines():
        name = line.split("==")[0].strip().lower().replace("_", "-")
        lines.append(f"{name}=={moves[name]}" if "==" in line and name in moves else line)
    path = folder / ("candidate-" + "-".join(f"{n}{v}" for n, v in sorted(moves.items())) + ".txt")
    path.write_text("\n".join(lines) + "\n")
    return path


def run_gate(gate_dirs: Path, moves: dict[str, str], *options: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "FLUX_LORA_PERF_CACHE": str(gate_dirs / "cache")}
    env.pop("FLUX_LORA_PERF_SESSION", None)
    command = [sys.executable, "-m", "perf.gate", "--candidate", str(candidate_file(gate_dirs, moves)),
               "--results", str(gate_dirs / "results"), "--store", str(gate_dirs / "store"), "--bisect", "--reuse",
               *options, *SUITE, "-q"]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def rows(done: subprocess.CompletedProcess, metric: str) -> list[list[str]]:
    """The gate's verdict rows of ``metric`` (the table between its title and its summary line)."""
    after_title = done.stdout.split("upgrade gate verdict", 1)[-1]
    table = re.split(r"upgrade gate: (REGRESSED|ok|ERROR)", after_title, maxsplit=1)[0]
    return [line.split(None, 7) for line in table.splitlines()
            if line.startswith("hotswap_eager ") and line.split()[1] == metric]


def test_an_upgrade_that_breaks_lora_loading_regresses_and_bisects_to_peft(gate_dirs):
    done = run_gate(gate_dirs, {"peft": "0.15.2", **HARMLESS})

    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-2000:]
    [stack] = rows(done, "stack")
    assert stack[2] == "regressed"
    assert "PEFT backend is required" in stack[-1] and "build" in stack[-1]
    assert "bisect: caused by: peft" in done.stdout


def test_an_upgrade_that_breaks_the_import_regresses_and_bisects_to_diffusers(gate_dirs):
    """diffusers 0.34 imports transformers' HybridCache, which transformers 5 removed."""
    done = run_gate(gate_dirs, {"diffusers": "0.34.0", **HARMLESS})

    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-2000:]
    [stack] = rows(done, "stack")
    assert stack[2] == "regressed"
    assert "import diffusers failed in diffusers 0.34.0" in stack[-1], stack
    assert "bisect: caused by: diffusers" in done.stdout


def test_an_upgrade_that_only_slows_generation_regresses_on_latency_and_bisects_to_it(gate_dirs):
    """The test slowdown is tied to torchmetrics 1.8.2: only runs with that version installed spin 4 s per image
    (a tiny-model image takes 0.02 s on an idle CPU and up to 2 s on a loaded 2-core machine; the CPU margin is
    60%). safetensors 0.7.0 would not do: transformers 5.23 refuses it at import, which the gate reports as a
    broken stack. On the cpu profile the latency row is "regressed (not gated)" (a shared CPU's load moves an
    unchanged tree 3x): the gate passes, and the bisect still names the package that slowed it."""
    done = run_gate(gate_dirs, {"torchmetrics": "1.8.2", **HARMLESS}, "--inject-delay", "4",
                    "--inject-if", "torchmetrics==1.8.2")

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]  # cpu latency is reported, never gated
    [latency] = rows(done, "latency_median_s")
    assert latency[2:4] == ["regressed", "(not"], latency
    assert not rows(done, "stack"), "a slowdown is not a broken stack"
    assert "bisect: caused by: torchmetrics" in done.stdout
    assert "bisect: accelerate 1.15.0 -> 1.14.0: no regression" in done.stdout


def test_a_broken_known_good_stack_is_a_usage_error(gate_dirs, tmp_path):
    """Nothing can be judged against a known-good side that cannot run: exit 4 with one message."""
    broken = candidate_file(tmp_path, {"peft": "0.15.2"})
    env = {**os.environ, "FLUX_LORA_PERF_CACHE": str(gate_dirs / "cache")}
    done = subprocess.run(
        [sys.executable, "-m", "perf.gate", "--known-good", str(broken), "--candidate", str(KNOWN_GOOD),
         "--results", str(tmp_path / "results"), "--store", str(gate_dirs / "store"), *SUITE, "-q"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)

    assert done.returncode == 4, done.stdout[-2000:] + done.stderr[-2000:]
    assert "the known-good stack is broken: build (sdpa, hotswap) failed" in done.stderr


def test_offline_stacks_use_the_machine_where_the_wheelhouse_lacks_a_pin_both_sides_share(tmp_path):
    """The GPU box: its own torch and transformers, a wheelhouse with diffusers, both torchao versions and an
    importlib_metadata other than the lock's. Only torchao is under test; the rest is the machine's or the
    wheelhouse's on both sides, and a moving pin the wheelhouse lacks stops the gate with the fix."""
    from perf.gate.stacks import GateError, PackageSource, differences, plan

    for wheel in ("diffusers-0.42.1-py3-none-any.whl", "torchao-0.17.0-cp310-abi3-linux_x86_64.whl",
                  "torchao-0.18.0-cp310-abi3-linux_x86_64.whl", "importlib_metadata-8.7.0-py3-none-any.whl"):
        (tmp_path / wheel).write_bytes(b"")
    source = PackageSource(tmp_path, offline=True)
    machine = {"torch": "2.11.0+cu130", "transformers": "5.17.0", "peft": "0.21.0"}
    known_good = {"torch": "2.13.0", "transformers": "5.23.0", "peft": "0.21.2", "diffusers": "0.42.1",
                  "torchao": "0.17.0", "importlib-metadata": "10.2.0"}

    base, candidate = plan(known_good, {"torch": "2.14.1", "torchao": "0.18.0"}, machine, source)

    assert differences(base, candidate) == ["torchao"]
    assert [(p.name, p.version) for p in base.packages if p.origin == "overlay"] == [
        ("diffusers", "0.42.1"), ("importlib-metadata", "8.7.0"), ("torchao", "0.17.0")]
    assert candidate.placement("torch").version == "2.11.0+cu130"
    with pytest.raises(GateError, match="--keep transformers"):
        plan(known_good, {"transformers": "5.24.0"}, machine, source)
