"""What the verdict compares, specified: a broken record file is reported and fails a gating run while every
readable recipe is still judged; a run with another LoRA pool is incomparable, never regressed."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
from pathlib import Path

import pytest
from fake_records import example_record
from suite_run import ROOT, run_pytest

from perf.judge.baseline_files import comparable, read_records, record_path, write_record
from perf.judge.compare import compare_folders, compare_records, main
from perf.judge.record import PoolAdapter, Quality
from perf.run.recording import _sha256, file_sha256, pool_entries
from perf.session import verdict_lines

SAMPLES = [1.000, 1.004, 0.997, 1.002, 0.999]
CORRUPT = '{"schema": 1, "profile": "h1'


def write_folder(root: Path, recipes: list[str], corrupt: str | None = None) -> Path:
    """Records of ``recipes`` under ``root/h100``; ``corrupt``'s file cut short, as a bad merge leaves it."""
    for recipe in recipes:
        write_record(root, example_record(recipe, SAMPLES))
    if corrupt:
        record_path(root, "h100", corrupt).write_text(CORRUPT)
    return root


@pytest.fixture
def run(tmp_path) -> tuple[Path, Path]:
    """Baselines of three recipes, one of them corrupt; a run of all three, all readable."""
    baselines = write_folder(tmp_path / "baselines", ["baseline", "optimized"], corrupt="no_fp8")
    results = write_folder(tmp_path / "results", ["baseline", "optimized", "no_fp8"])
    return baselines, results


def test_one_corrupt_file_leaves_the_others_readable(run):
    baselines, _ = run
    records, (unreadable,) = read_records(baselines, "h100")
    assert set(records) == {"baseline", "optimized"}
    assert unreadable.recipe == "no_fp8"
    assert "no_fp8.json is corrupt" in unreadable.message
    assert "restore it from git or re-record it" in unreadable.message


def test_the_readable_recipes_are_judged_and_the_corrupt_one_is_an_error(run):
    baselines, results = run
    _, verdicts = compare_folders(baselines, results, "h100")
    outcomes = {(v.recipe, v.verdict) for v in verdicts}
    assert {recipe for recipe, outcome in outcomes if outcome == "ok"} == {"baseline", "optimized"}
    (error,) = [v for v in verdicts if v.verdict == "error"]
    assert error.recipe == "no_fp8"
    assert "no_fp8.json is corrupt" in error.reason


def test_the_cli_prints_the_table_and_exits_two_on_a_corrupt_baseline(run, capsys):
    baselines, results = run
    assert main([str(baselines), str(results), "--profile", "h100"]) == 2
    out, err = capsys.readouterr()
    assert "optimized" in out and "latency_median_s" in out
    assert "no_fp8.json is corrupt" in err


def test_a_corrupt_baseline_of_a_recipe_not_run_is_not_this_runs_concern(run, capsys):
    baselines, results = run
    record_path(results, "h100", "no_fp8").unlink()
    assert main([str(baselines), str(results), "--profile", "h100"]) == 0
    assert "corrupt" not in capsys.readouterr().out


def test_a_corrupt_record_of_the_run_itself_is_an_error(run, capsys):
    baselines, results = run
    record_path(results, "h100", "optimized").write_text(CORRUPT)
    assert main([str(baselines), str(results), "--profile", "h100"]) == 2
    assert "optimized.json is corrupt" in capsys.readouterr().err


def test_the_plugin_verdict_judges_the_rest_and_fails_on_the_corrupt_baseline(run):
    baselines, _ = run
    finished = {recipe: example_record(recipe, SAMPLES) for recipe in ("baseline", "optimized", "no_fp8")}
    lines, failed = verdict_lines(read_records(baselines, "h100"), finished, baselines / "h100", False)
    assert failed
    assert any(line.startswith("optimized") and "latency_median_s" in line and " ok " in line for line in lines)
    assert any(line.startswith("no_fp8") and " error " in line and "no_fp8.json is corrupt" in line for line in lines)


def test_the_plugin_verdict_passes_when_only_an_unrun_recipes_baseline_is_corrupt(run):
    baselines, _ = run
    lines, failed = verdict_lines(read_records(baselines, "h100"), {"optimized": example_record("optimized", SAMPLES)},
                                  baselines / "h100", False)
    assert not failed
    assert not any("corrupt" in line for line in lines)


def test_a_gating_run_with_a_corrupt_baseline_fails_and_names_the_file(tmp_path, tiny_cache):
    """The whole path, as a user runs it: the recipe's stored baseline is corrupt, its tests pass, and
    ``--fail-on-regression`` turns the unreadable baseline into a failing exit (it used to exit 0)."""
    baselines = tmp_path / "baselines"
    shutil.copytree(ROOT / "baselines" / "cpu", baselines / "cpu")
    record_path(baselines, "cpu", "hotswap_eager").write_text('{"schema": 1, "profile": "cp')
    done = run_pytest("-m", "cpu", "--recipes", "hotswap_eager", "--rounds", "3", "--no-cold-start",
                      "--baselines-dir", str(baselines), "--results-dir", str(tmp_path / "results"),
                      "--fail-on-regression", cache=tiny_cache, timeout=600)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-2000:]
    verdict = done.stdout[done.stdout.index("flux-lora-perf verdict"):]
    assert "hotswap_eager.json is corrupt" in verdict
    assert "failing the run (--fail-on-regression)" in verdict
    assert " failed" not in done.stdout.splitlines()[-1]  # the tests themselves passed


SYNTHETIC = (PoolAdapter("style_a", 4, 7, True, "pytorch_lora_weights.safetensors", "a" * 64),
             PoolAdapter("style_b", 8, 6, True, "pytorch_lora_weights.safetensors", "b" * 64))


def user_pool(*hashes: str | None) -> tuple[PoolAdapter, ...]:
    return tuple(PoolAdapter(f"lora{i}", 16, 190, False, f"style{i}.safetensors", sha) for i, sha in enumerate(hashes))


def test_a_run_with_the_users_loras_is_incomparable_with_synthetic_baselines():
    """The issue's case: a --lora run judged against synthetic baselines said clip_score regressed."""
    baseline = example_record("hotswap_eager", SAMPLES, lora_pool=SYNTHETIC, quality=Quality("synthetic", 68.27))
    candidate = example_record("hotswap_eager", SAMPLES, lora_pool=user_pool("c" * 64, "d" * 64),
                            quality=Quality("synthetic", 66.42))
    (verdict,) = compare_records({"hotswap_eager": baseline}, {"hotswap_eager": candidate})
    assert verdict.verdict == "incomparable"
    assert verdict.reason.startswith("LoRA pool differs: baseline synthetic style_a r4")
    assert "style0.safetensors (sha cccccccccccc)" in verdict.reason


def test_user_pools_are_the_same_pool_when_their_files_hash_the_same():
    moved = tuple(dataclasses.replace(a, file="renamed.safetensors") for a in user_pool("c" * 64, "d" * 64))
    assert comparable(example_record("x", SAMPLES, lora_pool=user_pool("c" * 64, "d" * 64)),
                      example_record("x", SAMPLES, lora_pool=moved)) is None
    reason = comparable(example_record("x", SAMPLES, lora_pool=user_pool("c" * 64, "d" * 64)),
                        example_record("x", SAMPLES, lora_pool=user_pool("c" * 64, "e" * 64)))
    assert reason.startswith("LoRA pool differs: ")


def test_synthetic_pools_are_the_same_pool_whatever_their_files_bytes():
    """Synthetic adapters are made from code; the saving library's version may change their bytes."""
    rehashed = tuple(dataclasses.replace(adapter, sha256="f" * 64) for adapter in SYNTHETIC)
    assert comparable(example_record("x", SAMPLES, lora_pool=SYNTHETIC),
                      example_record("x", SAMPLES, lora_pool=rehashed)) is None


def test_records_without_hashes_are_compared_by_name_and_rank_and_say_so():
    old = tuple(dataclasses.replace(adapter, file=None, sha256=None) for adapter in SYNTHETIC)
    assert comparable(example_record("x", SAMPLES, lora_pool=old),
                      example_record("x", SAMPLES, lora_pool=SYNTHETIC)) is None
    unhashed = user_pool(None, None)
    assert comparable(example_record("x", SAMPLES, lora_pool=unhashed),
                      example_record("x", SAMPLES, lora_pool=user_pool("c" * 64, "d" * 64))) is None
    other_rank = (dataclasses.replace(unhashed[0], rank=32), unhashed[1])
    reason = comparable(example_record("x", SAMPLES, lora_pool=unhashed),
                        example_record("x", SAMPLES, lora_pool=other_rank))
    assert reason.startswith("LoRA pool differs (by name, rank and modules: a record without file hashes)")


def test_records_name_each_adapter_file_and_its_sha256(tiny_pool):
    entries = pool_entries(tiny_pool)
    assert [e.name for e in entries] == ["peft_all", "kohya", "xlabs", "ai_toolkit_reordered"]
    for entry, adapter in zip(entries, tiny_pool.adapters, strict=True):
        assert entry.file == adapter.path.name
        assert entry.sha256 == hashlib.sha256(adapter.path.read_bytes()).hexdigest()


def test_each_file_is_hashed_once_until_it_changes(tmp_path):
    path = tmp_path / "adapter.safetensors"
    path.write_bytes(b"x" * 3_000_000)
    first = file_sha256(path)
    misses = _sha256.cache_info().misses
    assert file_sha256(path) == first
    assert _sha256.cache_info().misses == misses
    path.write_bytes(b"y" * 3_000_000)
    os.utime(path, ns=(1, 1))  # a rewritten file, whatever the clock's resolution
    assert file_sha256(path) == hashlib.sha256(b"y" * 3_000_000).hexdigest()
