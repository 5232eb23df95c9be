"""Nothing lost, nothing judged empty (issue 24): every path and option is checked once before any test, a
command whose input is missing writes nothing, a baseline of another run is replaced only on purpose, a gate
that compared nothing fails, and a record out of step with its stored timing is reported. Each refusal is one
short message with its exit status, and the disk is as it was."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from fake_records import example_record
from interrupted_run import STOP_AT
from suite_run import ROOT, disk_state, run_pytest
from test_user_errors import BASELINES, MAX_LINES, lora_file, pool_args, refused_unchanged
from test_verdict_inputs import SAMPLES, write_folder

from perf.judge.baseline_files import read_record, read_records, record_path, write_record
from perf.judge.benchmark_storage import LATENCY_TEST, SAVE_NAME, benchmarks_folder, torn_pairs
from perf.judge.calibrate import main as calibrate_main
from perf.judge.compare import main as compare_main
from perf.judge.record import Latency, PoolAdapter
from perf.report.report import main as report_main
from perf.session import verdict_lines


def a_file(tmp_path: Path) -> Path:
    path = tmp_path / "notes.txt"
    path.write_text("not a folder\n")
    return path


# --- paths and options, before any test ----------------------------------------------------------------------


def test_results_dir_naming_a_file(tmp_path):
    path = a_file(tmp_path)
    output = refused_unchanged(tmp_path, "--results-dir", str(path))
    assert f"--results-dir {path}: is a file; give a folder" in output


def test_results_dir_below_a_file(tmp_path):
    path = a_file(tmp_path) / "results"
    output = refused_unchanged(tmp_path, "--results-dir", str(path))
    assert f"--results-dir {path}: cannot be a folder: {path.parent} is a file" in output


def test_results_dir_where_nothing_can_be_written(tmp_path):
    output = refused_unchanged(tmp_path, "--results-dir", "/proc/flux-results", watched=(Path("/proc/flux-results"),))
    assert "--results-dir /proc/flux-results: cannot create a file in /proc" in output


def test_perf_cache_naming_a_file(tmp_path):
    path = a_file(tmp_path)
    output = refused_unchanged(tmp_path, "--perf-cache", str(path))
    assert f"--perf-cache {path}: is a file; give a folder" in output
    assert "INTERNALERROR" not in output


def test_perf_cache_inside_the_source_tree(tmp_path):
    inside = ROOT / ".perf-cache-in-tree"
    output = refused_unchanged(tmp_path, "--perf-cache", str(inside), watched=(inside,))
    assert f"--perf-cache {inside}: inside the source tree {ROOT}; give a folder outside it" in output


def test_clip_model_that_does_not_exist_stops_before_any_build(tmp_path):
    output = refused_unchanged(tmp_path, "--clip-model", str(tmp_path / "clip"))
    assert f"--clip-model {tmp_path / 'clip'}: no such folder" in output


def test_clip_hub_id_not_in_the_local_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    output = refused_unchanged(tmp_path, "--clip-model", "someone/clip-vit")
    assert "--clip-model someone/clip-vit: not in the local Hugging Face cache" in output


@pytest.mark.parametrize("value", ["-5", "0", "inf"])
def test_compile_budget_must_be_positive(tmp_path, value):
    """-5 failed every compiled recipe in setitimer and was accepted by eager ones; 0 silently meant no limit."""
    output = refused_unchanged(tmp_path, f"--compile-budget={value}", "--recipes", "hotswap_eager")
    assert f"argument --compile-budget: {value} is not a positive number of seconds" in output


@pytest.mark.parametrize("value", ["", ",", " , "])
def test_a_recipe_list_naming_nothing_is_not_every_recipe(tmp_path, value):
    output = refused_unchanged(tmp_path, "--recipes", value)
    assert f"--recipes {value!r} names no recipe" in output


def test_unknown_recipe_in_the_list(tmp_path):
    output = refused_unchanged(tmp_path, "--recipes", "hotswap_eager,hotswap_eagre")
    assert "unknown recipe 'hotswap_eagre'" in output


def test_baselines_dir_that_does_not_exist_is_refused_and_not_created(tmp_path):
    """It used to pass with nothing compared under --fail-on-regression, creating <dir>/cpu/benchmarks."""
    missing = tmp_path / "nonexistent"
    output = refused_unchanged(tmp_path, "--baselines-dir", str(missing), "--fail-on-regression")
    assert f"--baselines-dir {missing}: no such folder" in output
    assert "--update-baselines" in output


def test_update_baselines_with_another_lora_pool_refuses_to_replace_the_synthetic_pools_record(tmp_path):
    """The user's own pool must not silently replace the shipped synthetic-pool record (the next default run
    would be incomparable and pass); refused before any build, naming what differs and the override."""
    baselines = tmp_path / "baselines"
    shutil.copytree(BASELINES / "cpu", baselines / "cpu")
    pool = pool_args(lora_file(tmp_path / "a.safetensors", rank=8), lora_file(tmp_path / "b.safetensors"))
    output = refused_unchanged(tmp_path, "-m", "cpu", "--recipes", "hotswap_eager", "--update-baselines",
                               "--baselines-dir", str(baselines), *pool)
    assert f"--update-baselines would replace {record_path(baselines, 'cpu', 'hotswap_eager')}" in output
    assert "LoRA pool differs" in output and "a.safetensors" in output
    assert "pass --overwrite-foreign-baselines to replace it" in output


# --- the commands: a missing or empty input is exit 2, and nothing is written --------------------------------


def refused_command(main, argv: list[str], capsys, *watched: Path) -> str:
    before = disk_state(*watched)
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert len((out + err).splitlines()) < MAX_LINES, out + err
    assert err.count("error:") == 1, err
    assert disk_state(*watched) == before
    return err


def warned_command(main, argv: list[str], capsys, *watched: Path) -> str:
    """A comparison that succeeds (exit 0) with one warning line and changes nothing on disk: its stderr."""
    before = disk_state(*watched)
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert len((out + err).splitlines()) < MAX_LINES, out + err
    assert err.count("warning:") == 1 and "error:" not in err, err
    assert disk_state(*watched) == before
    return err


def test_compare_with_a_missing_baselines_folder_exits_two(tmp_path, capsys):
    results = write_folder(tmp_path / "results", ["baseline"])
    err = refused_command(compare_main, [str(tmp_path / "nonexistent"), str(results), "--profile", "h100"], capsys,
                          tmp_path)
    assert f"BASELINE_DIR {tmp_path / 'nonexistent'}: no such folder" in err


def test_compare_that_compared_nothing_exits_two_naming_why(tmp_path, capsys):
    baselines = write_folder(tmp_path / "baselines", ["baseline"])
    results = tmp_path / "results"
    write_record(results, example_record("baseline", SAMPLES, device="NVIDIA H200"))
    assert compare_main([str(baselines), str(results), "--profile", "h100"]) == 2
    err = capsys.readouterr().err
    assert f"nothing compared against {baselines / 'h100'}: baseline: device differs" in err


@pytest.mark.parametrize("source", ["missing", "empty"])
def test_calibrate_from_a_missing_or_empty_folder_keeps_the_stored_table(tmp_path, capsys, source):
    """It used to ignore --from and overwrite the stored calibration (15 records became 5)."""
    baselines = tmp_path / "baselines"
    shutil.copytree(BASELINES / "cpu", baselines / "cpu")
    given = tmp_path / source
    if source == "empty":
        given.mkdir()
    err = refused_command(calibrate_main, ["--profile", "cpu", "--from", str(given), "--baselines-dir",
                                           str(baselines)], capsys, tmp_path)
    assert f"--from {given / 'cpu'}: no such folder; nothing written" in err


def test_calibrate_writes_nothing_when_an_aa_run_did_not_complete(tmp_path, capsys):
    """A run refused by pytest (exit 4, here an unknown recipe) is not an A/A run: no table from the rest."""
    baselines = tmp_path / "baselines"
    shutil.copytree(BASELINES / "cpu", baselines / "cpu")
    err = refused_command(calibrate_main, ["--profile", "cpu", "--runs", "1", "--baselines-dir", str(baselines),
                                           "--work", str(tmp_path / "work"), "--", "--recipes", "nope"],
                          capsys, baselines)
    assert "calibration run 1/1 ended with pytest exit 4, not a complete run; nothing written" in err


def test_report_of_a_missing_folder_exits_two(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = refused_command(report_main, [str(tmp_path / "nonexistent" / "cpu")], capsys, tmp_path)
    assert f"RECORDS_DIR {tmp_path / 'nonexistent' / 'cpu'}: no such folder; nothing written" in err


# --- a gate that compared nothing fails ------------------------------------------------------------------------


def gating(baselines: Path, finished: dict, first_recording: bool = False) -> tuple:
    """``verdict_lines``' arguments for an H100 run's ``finished`` records against the baselines it started with."""
    return read_records(baselines, "h100"), finished, baselines / "h100", first_recording


def test_a_gate_whose_baselines_are_of_another_pool_fails_saying_so(tmp_path):
    synthetic = (PoolAdapter("style_a", 4, 7, True),)
    mine = (PoolAdapter("lora0", 16, 190, False, "mine.safetensors", "c" * 64),)
    baselines = tmp_path / "baselines"
    write_record(baselines, example_record("optimized", SAMPLES, lora_pool=synthetic))
    ran = {"optimized": example_record("optimized", SAMPLES, lora_pool=mine)}
    lines, failed = verdict_lines(*gating(baselines, ran))
    assert failed
    assert lines[-1].startswith(f"nothing compared against {baselines / 'h100'}: optimized: LoRA pool differs")


def test_a_gate_without_a_baselines_folder_for_the_profile_fails(tmp_path):
    (tmp_path / "baselines").mkdir()
    lines, failed = verdict_lines(*gating(tmp_path / "baselines", {"optimized": example_record("optimized", SAMPLES)}))
    assert failed and lines[-1] == f"nothing compared: no baselines folder {tmp_path / 'baselines' / 'h100'}"


def test_a_first_recording_compares_nothing_and_passes(tmp_path):
    (tmp_path / "baselines").mkdir()
    lines, failed = verdict_lines(*gating(tmp_path / "baselines", {"optimized": example_record("optimized", SAMPLES)},
                                          first_recording=True))
    assert not failed and "no baseline recorded" in lines[-1]


def test_a_gating_run_against_an_empty_baselines_folder_fails_in_one_line(tmp_path, tiny_cache):
    """The whole path: the run passes its tests, compares nothing, and --fail-on-regression fails it; the empty
    folder stays empty (pytest-benchmark's storage is not created where nothing is saved)."""
    baselines = tmp_path / "baselines"
    baselines.mkdir()
    done = run_pytest("-m", "cpu", "--recipes", "hotswap_eager", "--rounds", "3", "--no-cold-start",
                      "--baselines-dir", str(baselines), "--results-dir", str(tmp_path / "results"),
                      "--fail-on-regression", cache=tiny_cache, timeout=600)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-2000:]
    verdict = done.stdout[done.stdout.index("flux-lora-perf verdict"):]
    assert f"nothing compared: no baselines folder {baselines / 'cpu'}" in verdict
    assert "failing the run (--fail-on-regression)" in verdict
    assert not any(baselines.iterdir())


# --- interrupts ----------------------------------------------------------------------------------------------


def test_ctrl_c_during_a_baseline_update_says_what_was_saved_and_leaves_the_baselines_whole(tmp_path, tiny_cache):
    """SIGINT while the first recipe is being built: one line saying nothing was kept, no pytest-benchmark
    traceback, and the baselines folder exactly as it was."""
    baselines = tmp_path / "baselines"
    shutil.copytree(BASELINES / "cpu", baselines / "cpu")
    before = disk_state(baselines)
    env = {**os.environ, "FLUX_LORA_PERF_CACHE": str(tiny_cache)}
    env.pop("FLUX_LORA_PERF_SESSION", None)
    child = subprocess.Popen(
        [sys.executable, "-m", "pytest", "tests/perf", "-m", "cpu", "--recipes", "hotswap_eager", "--no-cold-start",
         "--update-baselines", "--baselines-dir", str(baselines), "--results-dir", str(tmp_path / "results"), "-q",
         "-p", "no:cacheprovider"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in child.stdout:
        lines.append(line)
        if "building" in line:
            child.send_signal(signal.SIGINT)
            break
    output = "".join(lines) + child.communicate(timeout=300)[0]
    assert child.returncode == pytest.ExitCode.INTERRUPTED, output
    assert "flux-lora-perf: interrupted: kept no record; the recipe cut off" in output
    assert "Traceback" not in output and "min() arg" not in output, output
    assert len(output.splitlines()) < MAX_LINES, output
    assert disk_state(baselines) == before


# --- a record and its stored timing: saved in step, or reported -----------------------------------------------

ONE_RECIPE = ("-m", "cpu", "--recipes", "hotswap_eager", "--no-cold-start", "--no-churn", "--rounds", "3")
SHIPPED_TIMINGS = sorted(p.relative_to(BASELINES) for p in benchmarks_folder(BASELINES, "cpu").rglob("*.json"))
RERECORD = "re-record it: pytest tests/perf -m cpu --recipes hotswap_eager --update-baselines"


def shipped_cpu_baselines(tmp_path: Path) -> Path:
    baselines = tmp_path / "baselines"
    shutil.copytree(BASELINES / "cpu", baselines / "cpu")
    return baselines


def update_stopped_at(baselines: Path, results: Path, cache: Path, moment: str) -> subprocess.CompletedProcess:
    """hotswap_eager re-recorded into ``baselines`` by a run that stops itself at ``moment`` (``interrupted_run``)."""
    path = os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(ROOT / "tests" / "unit")]))
    return run_pytest(*ONE_RECIPE, "--update-baselines", "--baselines-dir", str(baselines), "--results-dir",
                      str(results), "-p", "interrupted_run", cache=cache, timeout=600,
                      env={STOP_AT: moment, "PYTHONPATH": path})


def recorded_then_killed(tmp_path: Path, cache: Path, moment: str) -> Path:
    """A copy of the shipped CPU baselines whose hotswap_eager is re-recorded by a run SIGKILLed at ``moment``;
    the baselines root."""
    baselines = shipped_cpu_baselines(tmp_path)
    done = update_stopped_at(baselines, tmp_path / "killed", cache, moment)
    assert done.returncode == -signal.SIGKILL, done.stdout[-3000:] + done.stderr[-2000:]
    assert read_record(record_path(baselines, "cpu", "hotswap_eager")) != read_record(
        record_path(BASELINES, "cpu", "hotswap_eager"))
    return baselines


def timings_of(baselines: Path) -> list[Path]:
    return sorted(p.relative_to(baselines) for p in benchmarks_folder(baselines, "cpu").rglob("*.json"))


def test_a_run_killed_between_a_record_and_its_timing_is_reported_by_the_next_run(tmp_path, tiny_cache, capsys):
    """SIGKILL after hotswap_eager's record is written and before its timing is: the compare CLI (a warning) and
    the next --benchmark-compare run (a row) say so in one line naming both files and the fix, and change nothing;
    the gate still judges the record, which is whole (--fail-on-regression passes on an unchanged tree); the
    re-record it names mends the pair."""
    baselines = recorded_then_killed(tmp_path, tiny_cache, "kill-before-timing-save")
    assert timings_of(baselines) == SHIPPED_TIMINGS
    stale = benchmarks_folder(baselines, "cpu") / "Linux-CPython-3.11-64bit" / f"0003_{SAVE_NAME}.json"

    err = warned_command(compare_main, [str(baselines), str(tmp_path / "killed"), "--profile", "cpu"], capsys,
                         tmp_path)
    assert f"warning: {record_path(baselines, 'cpu', 'hotswap_eager')} (median" in err
    assert f"is out of step with pytest-benchmark's stored timings: {stale} holds median" in err
    assert RERECORD in err

    before = disk_state(baselines)
    done = run_pytest(*ONE_RECIPE, "--benchmark-compare", "--fail-on-regression", "--baselines-dir", str(baselines),
                      "--results-dir", str(tmp_path / "next"), cache=tiny_cache, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    verdict = done.stdout[done.stdout.index("flux-lora-perf verdict"):]
    (row,) = [line for line in verdict.splitlines() if "out of step with pytest-benchmark" in line]
    assert row.split()[:4] == ["hotswap_eager", "stored", "timing", "incomparable"] and RERECORD in row
    assert "failing the run" not in verdict
    assert "Traceback" not in done.stdout + done.stderr
    assert disk_state(baselines) == before

    mended = run_pytest(*ONE_RECIPE, "--update-baselines", "--baselines-dir", str(baselines), "--results-dir",
                        str(tmp_path / "mended"), cache=tiny_cache, timeout=600)
    assert mended.returncode == 0, mended.stdout[-3000:]
    assert torn_pairs(baselines, "cpu", read_records(baselines, "cpu")[0]) == []


def test_a_run_killed_before_pytest_benchmarks_own_save_leaves_every_record_in_step(tmp_path, tiny_cache):
    """Each recipe's timing is saved right after its record, not only at the session's end: a job killed after its
    last recipe (before pytest-benchmark's save) leaves the new record and the new timing together."""
    baselines = recorded_then_killed(tmp_path, tiny_cache, "kill-at-session-end")
    assert len(timings_of(baselines)) == len(SHIPPED_TIMINGS) + 1
    assert torn_pairs(baselines, "cpu", read_records(baselines, "cpu")[0]) == []


def test_ctrl_c_while_timing_saves_neither_the_record_nor_its_timing(tmp_path, tiny_cache):
    """Ctrl-C in the second timed round of a baseline update: pytest-benchmark's save stored the cut-off recipe's
    first round without its record (a pair out of step, under a line saying nothing was saved); now neither is
    saved, in one line, with no traceback."""
    baselines = shipped_cpu_baselines(tmp_path)
    before = disk_state(baselines)
    done = update_stopped_at(baselines, tmp_path / "results", tiny_cache, "ctrl-c-while-timing")
    output = done.stdout + done.stderr
    assert done.returncode == pytest.ExitCode.INTERRUPTED, output
    assert "flux-lora-perf: interrupted: kept no record; the recipe cut off" in output
    assert "Traceback" not in output and "min() arg" not in output, output
    assert len(output.splitlines()) < MAX_LINES, output
    assert disk_state(baselines) == before


def test_a_timing_file_newer_than_its_records_is_reported(tmp_path, capsys):
    """The other way round: the newest stored timings are another run's (saved with --benchmark-save baseline and
    no --update-baselines, or restored from git without their records)."""
    baselines = shipped_cpu_baselines(tmp_path)
    machine = benchmarks_folder(baselines, "cpu") / "Linux-CPython-3.11-64bit"
    shutil.copy(machine / f"0002_{SAVE_NAME}.json", machine / f"0004_{SAVE_NAME}.json")  # an older run's, newest now
    results = tmp_path / "results"
    write_record(results, read_record(record_path(BASELINES, "cpu", "hotswap_eager")))
    err = warned_command(compare_main, [str(baselines), str(results), "--profile", "cpu"], capsys, tmp_path)
    assert f"stored timings: {machine / f'0004_{SAVE_NAME}.json'} holds median" in err and RERECORD in err


def test_a_timing_save_cut_short_is_named_beside_the_record_it_left_behind(tmp_path, capsys):
    """An older version's plain save killed part-way: the run's record is new, its timing file truncated; the
    newest readable timing is reported as the record's stale pair, and the truncated file is named."""
    baselines = shipped_cpu_baselines(tmp_path)
    shipped = read_record(record_path(BASELINES, "cpu", "hotswap_eager"))
    write_record(baselines, dataclasses.replace(shipped, latency=Latency.of(SAMPLES, "pytest-benchmark")))
    machine = benchmarks_folder(baselines, "cpu") / "Linux-CPython-3.11-64bit"
    (machine / f"0004_{SAVE_NAME}.json").write_text('{"machine_info": {"node": "gpu-bo')
    results = tmp_path / "results"
    write_record(results, shipped)
    err = warned_command(compare_main, [str(baselines), str(results), "--profile", "cpu"], capsys, tmp_path)
    assert f"{machine / f'0003_{SAVE_NAME}.json'} holds median" in err
    assert f"({machine / f'0004_{SAVE_NAME}.json'} cannot be read)" in err and RERECORD in err


def test_the_shipped_cpu_baselines_are_in_step_with_their_timings(capsys):
    """The negative control on an unchanged stack: every shipped CPU record and its stored timing agree, and the
    baselines judged against themselves pass."""
    records, _ = read_records(BASELINES, "cpu")
    assert records and torn_pairs(BASELINES, "cpu", records) == []
    assert compare_main([str(BASELINES), str(BASELINES), "--profile", "cpu"]) == 0
    assert "out of step" not in capsys.readouterr().out


def latency_row(recipe: str, latency: Latency) -> dict:
    """pytest-benchmark's stored row of ``recipe``'s latency test, as it saves it (statistics, no raw data)."""
    return {"name": f"{LATENCY_TEST}[h100-{recipe}]", "extra_info": {"recipe": recipe, "profile": "h100"},
            "stats": {"median": latency.median_s, "min": latency.min_s, "mean": latency.mean_s,
                      "rounds": latency.rounds}}


def stored_timing(baselines: Path, *rows: dict) -> Path:
    path = benchmarks_folder(baselines, "h100") / "Linux-CPython-3.12-64bit" / f"0001_{SAVE_NAME}.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"benchmarks": list(rows)}))
    return path


@pytest.mark.parametrize(("recorded", "stored", "reported"), [
    (SAMPLES, SAMPLES, False),
    (SAMPLES, [s * (1 + 1e-6) for s in SAMPLES], True),  # the smallest difference: a millionth of the median
    (SAMPLES, SAMPLES[:3], True),  # another run's rounds
    (SAMPLES, None, True),  # no row of the recipe in the stored timings
])
def test_a_record_and_its_stored_timing_agree_to_the_last_digit(tmp_path, recorded, stored, reported):
    record = example_record("optimized", recorded)
    write_record(tmp_path, record)
    other = example_record("baseline", SAMPLES)
    rows = [latency_row("baseline", other.latency)]
    if stored is not None:
        rows.append(latency_row("optimized", Latency.of(stored, "pytest-benchmark")))
    stored_timing(tmp_path, *rows)
    torn = torn_pairs(tmp_path, "h100", {"optimized": record})
    assert [pair.recipe for pair in torn] == (["optimized"] if reported else [])


def test_records_without_a_stored_timing_of_their_own_are_not_reported(tmp_path):
    """A folder with no stored timings holds records only; a record timed by the suite's own timer
    (pytest-benchmark off, under pytest-xdist) or not timed at all never had a row."""
    timed = example_record("optimized", SAMPLES)
    assert torn_pairs(tmp_path, "h100", {"optimized": timed}) == []
    stored_timing(tmp_path, latency_row("baseline", timed.latency))
    by_the_suite = example_record("optimized", SAMPLES, latency=Latency.of(SAMPLES, "suite"))
    untimed = example_record("no_fp8", latency=Latency.of([]))
    assert torn_pairs(tmp_path, "h100", {"optimized": by_the_suite, "no_fp8": untimed}) == []
