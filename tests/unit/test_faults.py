"""Faults are isolated: one variant running out of memory fails that variant alone, with its peak figures, after
its memory is freed; every variant gives its memory back, and the process-wide compile settings its build
changed, before the next one starts; and a baseline write killed at any moment leaves the old record or the new
one, never half of one."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

import pytest
import torch
from fake_records import example_record

import perf.run.case
import perf.run.measure
from perf.build.attention import choose_attention
from perf.judge.baseline_files import read_records, record_path, write_record
from perf.judge.record import from_data
from perf.run.case import CaseFailed, open_case
from perf.run.measure import assert_no_leak
from perf.run.stack_check import check_stack, pipeline_kinds
from perf.spec.recipes import get_recipe

ROOT = Path(__file__).resolve().parents[2]
OOM = "CUDA out of memory. Tried to allocate 2.00 GiB"


def quiet(message: str) -> None:
    pass


@pytest.fixture
def open_tiny_case(tiny_spec):
    def run(recipe: str):
        return open_case(tiny_spec, get_recipe(recipe), progress=quiet)

    return run


@pytest.fixture
def device_memory(monkeypatch) -> weakref.WeakSet:
    """GPU memory in use, faked on CPU: 1 GiB for every pipeline ``open_case`` built that is still alive. Only a
    pipeline nothing references any more stops counting, as only freed tensors leave ``memory_allocated``."""
    live = weakref.WeakSet()
    build = perf.run.case.build_pipeline

    def tracked_build(*args, **kwargs):
        built = build(*args, **kwargs)
        live.add(built.pipe)
        return built

    def in_use_gib(device_type: str) -> float:
        return float(len(live))

    monkeypatch.setattr(perf.run.case, "build_pipeline", tracked_build)
    monkeypatch.setattr(perf.run.case, "in_use_gib", in_use_gib)
    monkeypatch.setattr(perf.run.measure, "in_use_gib", in_use_gib)
    return live


# --- out of memory and leaks ---------------------------------------------------------------------------------


def test_out_of_memory_fails_only_its_variant_with_peak_figures_and_the_next_variant_runs(
    monkeypatch, device_memory, open_tiny_case
):
    """An OOM during hotswap_eager's scenario becomes that case's ``CaseFailed`` naming the peak, with its
    pipeline already released; the next variant (baseline) then builds and runs its whole scenario."""
    run_scenario = perf.run.case.run_scenario

    def scenario_out_of_memory_once(built, progress, probe=None):
        if built.recipe.name == "hotswap_eager":
            raise torch.OutOfMemoryError(OOM)
        return run_scenario(built, progress, probe)

    monkeypatch.setattr(perf.run.case, "run_scenario", scenario_out_of_memory_once)
    start = perf.run.measure.in_use_gib("cpu")

    with pytest.raises(CaseFailed, match=r"hotswap_eager: out of memory on cpu .*\(peak .*GiB.*\): " + OOM):
        open_tiny_case("hotswap_eager")
    assert_no_leak(start, "cpu", slack_gib=0.5)

    case = open_tiny_case("baseline")
    assert [step.adapter for step in case.scenario.steps] == ["kohya", "xlabs", "ai_toolkit_reordered", "peft_all"]
    assert case.record.name == "baseline"
    case.release()


def test_memory_returns_to_its_starting_level_between_variants(device_memory, open_tiny_case):
    """Each variant holds its pipeline while it runs and gives it back on release, so the next one is measured
    from the same level (a hot-swap variant also builds and drops a fresh reference pipeline)."""
    start = perf.run.measure.in_use_gib("cpu")
    for recipe in ("hotswap_eager", "baseline"):
        case = open_tiny_case(recipe)
        assert perf.run.measure.in_use_gib("cpu") == start + 1, f"{recipe}: only its own pipeline may be alive"
        case.release()
        assert_no_leak(start, "cpu", slack_gib=0.5)


def test_a_variant_whose_pipeline_outlives_its_release_is_reported_as_a_leak(device_memory, open_tiny_case):
    """Negative control: a reference kept past ``release()`` (a cache, a global, a hook) must fail the check."""
    start = perf.run.measure.in_use_gib("cpu")
    case = open_tiny_case("baseline")
    kept = case.built
    case.release()
    with pytest.raises(AssertionError, match=r"1\.00 GiB in use after the variant, 0\.00 GiB at its start"):
        assert_no_leak(start, "cpu", slack_gib=0.5)
    assert kept.recipe.name == "baseline"


def test_a_compile_past_its_budget_fails_its_variant_with_the_elapsed_time_and_the_next_variant_runs(
    tiny_spec, cpu_profile
):
    """A compile that hangs must not hold the job: past the profile's compile budget the variant fails, its
    record says ``over_compile_budget``, and the next variant runs. (The tiny compile takes seconds; 0.2 s is
    too little for it even from a warm cache.)"""
    tight = dataclasses.replace(cpu_profile, profile=dataclasses.replace(cpu_profile.profile, compile_budget_s=0.2))
    with pytest.raises(CaseFailed, match=r"no_fa3_fp8: first generation: no result after \d+ s, past the compile "
                       r"budget of 0.2 s") as failed:
        open_case(dataclasses.replace(tiny_spec, active=tight), get_recipe("no_fa3_fp8"), progress=quiet,
                  references=())
    assert failed.value.record.outcome == "over_compile_budget"
    assert failed.value.record.name == "no_fa3_fp8"

    case = open_case(dataclasses.replace(tiny_spec, active=tight), get_recipe("baseline"), progress=quiet)
    assert len(case.scenario.steps) == len(tiny_spec.pool.adapters)  # B, C, D and back to A
    case.release()


# --- interrupted baseline writes -----------------------------------------------------------------------------

PAD = 6_000_000  # bytes of padding per payload: a write takes long enough to be killed in the middle of it
WRITER = f"""
import json, os, sys, time
from pathlib import Path
from perf.judge.baseline_files import atomic_write_bytes

path, pause = Path(sys.argv[1]), sys.argv[2] == "pause"
fsync = os.fsync

def fsync_then_pause(fd):  # "pause": stop inside the write, after the data and before the rename
    fsync(fd)
    if pause:
        print("in-write", flush=True)
        time.sleep(60)

os.fsync = fsync_then_pause
base = json.loads(path.read_text())
payloads = [  # valid records: the padding is the command line, the iteration the commit
    json.dumps({{**base, "commit": f"iteration-{{i}}", "command": "x" * {PAD}}}, indent=1, sort_keys=True).encode()
    for i in range(2)
]
print("ready", flush=True)
for i in range(10**6):  # the loop is all writing: payloads are built before it
    atomic_write_bytes(path, payloads[i % 2])
"""


def kill_writer(path: Path, after: str, delay: float) -> None:
    """Start a process rewriting ``path`` in a loop and SIGKILL it ``delay`` seconds after it prints ``after``."""
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), "pause" if after == "in-write" else "loop"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )
    deadline = threading.Timer(60, writer.kill)  # a writer that never prints ``after`` fails the test, not hangs it
    deadline.start()
    try:
        while (line := writer.stdout.readline().strip()) != after:
            assert line, f"the writer exited before printing {after!r} (rc {writer.poll()})"
        time.sleep(delay)
    finally:
        deadline.cancel()
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait(timeout=30)
        writer.stdout.close()
    assert writer.returncode == -signal.SIGKILL


def assert_old_or_complete(path: Path, old: dict) -> dict:
    record = json.loads(path.read_text())
    if record != old:
        assert record == {**old, "commit": record["commit"], "command": "x" * PAD}
    return record


def test_a_killed_baseline_write_leaves_the_old_or_the_new_record(tmp_path):
    """SIGKILL lands at arbitrary points of a loop of several-MB atomic writes, then once provably inside a write
    (after the data, before the rename): the record always parses as the old record or one complete new payload,
    and the only debris is a ``.tmp`` file that ``read_records`` ignores."""
    path = write_record(tmp_path, example_record("hotswap_eager", [0.5], profile="cpu", device="x86_64"))
    assert path == record_path(tmp_path, "cpu", "hotswap_eager")
    old = assert_old_or_complete(path, json.loads(path.read_text()))

    for delay in (0.02, 0.05, 0.1, 0.2, 0.35):
        kill_writer(path, "ready", delay)
        old = assert_old_or_complete(path, old)

    kill_writer(path, "in-write", 0.0)
    assert json.loads(path.read_text()) == old, "a write killed before its rename changed the record"

    leftovers = sorted(p.name for p in path.parent.iterdir() if p != path)
    assert leftovers, "the paused writer must leave its temporary file, or the kill did not land inside a write"
    assert all(name.startswith(f".{path.name}.") and name.endswith(".tmp") for name in leftovers), leftovers
    assert read_records(tmp_path, "cpu") == ({"hotswap_eager": from_data(old)}, [])


def test_a_cold_start_that_fails_in_its_child_process_says_which_start_and_why(tiny_cache):
    """The child's error reaches the parent as one ``SuiteError`` with the last lines of its output, and the
    temporary compile cache is removed."""
    from perf.errors import SuiteError
    from perf.run.cold_start import measure_cold_start

    with pytest.raises(SuiteError, match=r"the cold start failed \(exit 2\):\n.*--model synthetic-huge"):
        measure_cold_start("baseline", "cpu", tiny_cache, {"--model": "synthetic-huge"}, timeout_s=300,
                           progress=quiet)
    assert not list(tiny_cache.glob("coldstart-*"))


def _set_like_torchao(*args, **kwargs):
    """What torchao's ``quantize_`` does to the process (``set_inductor_config=True``), during a build."""
    import torch._inductor.config as inductor_config

    inductor_config.coordinate_descent_tuning = True
    inductor_config.coordinate_descent_check_all_directions = True
    torch.set_float32_matmul_precision("high")
    return choose_attention(*args, **kwargs)


def test_compile_settings_a_build_changes_stay_with_its_recipe(open_tiny_case, monkeypatch):
    import torch._inductor.config as inductor_config

    before = (inductor_config.coordinate_descent_tuning, torch.get_float32_matmul_precision())
    assert before == (False, "highest")
    monkeypatch.setattr("perf.build.builder.choose_attention", _set_like_torchao)
    case = open_tiny_case("hotswap_eager")
    recorded = case.record.applied.compile_settings
    assert recorded["coordinate_descent_tuning"] is True  # the recipe ran, and is recorded, under them
    assert recorded["float32_matmul_precision"] == "high"
    case.release()
    assert (inductor_config.coordinate_descent_tuning, torch.get_float32_matmul_precision()) == before
    monkeypatch.undo()
    follower = open_tiny_case("hotswap_eager")  # the next recipe compiles under the settings it found
    assert follower.record.applied.compile_settings["coordinate_descent_tuning"] is False
    follower.release()


def test_a_recipes_own_inductor_options_are_in_effect_recorded_and_undone(tiny_spec):
    """``Recipe.inductor`` (issue 25's multi-kernel row): set for the recipe's build and compile, in its record,
    and the process's own again once its case is released."""
    import torch._inductor.config as inductor_config

    assert inductor_config.triton.multi_kernel == 0
    recipe = dataclasses.replace(get_recipe("no_fa3_fp8"), inductor=(("triton.multi_kernel", 1),))
    case = open_case(tiny_spec, recipe, progress=quiet)
    assert inductor_config.triton.multi_kernel == 1
    assert case.record.applied.compile_settings["triton.multi_kernel"] == 1
    case.release()
    assert inductor_config.triton.multi_kernel == 0


def test_the_stack_check_builds_a_recipe_with_inductor_options_eagerly(tiny_spec):
    """Found on the H200 (2026-12-01): the stack check's eager kind of the multi-kernel row kept its Inductor
    options, which an uncompiled recipe refuses, and the session ended in an INTERNALERROR before any test."""
    recipe = dataclasses.replace(get_recipe("no_fa3_fp8"), inductor=(("triton.multi_kernel", 1),))
    [kind] = pipeline_kinds([recipe])
    assert not kind.compiled and kind.inductor == ()
    assert check_stack(lambda: tiny_spec, [recipe]).ok


def test_an_inductor_option_torch_does_not_have_fails_the_build_by_name(tiny_spec):
    recipe = dataclasses.replace(get_recipe("no_fa3_fp8"), inductor=(("triton.multi_kernal", 1),))
    with pytest.raises(ValueError, match=r"no option 'triton\.multi_kernal'"):
        open_case(tiny_spec, recipe, progress=quiet)


def test_a_recipe_decides_whether_torchao_sets_inductor_options(tiny_spec,
                                                                 monkeypatch):
    """The seed's rows quantize with torchao's Inductor settings; ``optimized_fullgraph_defaults`` (and the CUDA
    graph row built on it) without them, the fix for the full-graph FP8 compile that did not finish."""
    from perf.build.builder import build_pipeline

    asked = []

    def quantize(transformer, device=None, set_inductor_config=True):
        asked.append(set_inductor_config)
        return "not quantized: FP8 needs a GPU"

    monkeypatch.setattr("perf.build.builder.quantize_fp8", quantize)
    for name in ("optimized", "optimized_fullgraph_defaults", "optimized_cudagraphs"):
        eager = dataclasses.replace(get_recipe(name), attention="sdpa", compile="none")
        build_pipeline(tiny_spec, eager)
    assert asked == [True, False, False]
