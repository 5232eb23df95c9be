"""--benchmark-compare compares out of the box: pytest-benchmark's storage is the profile's stored baselines, in
pytest-benchmark's own naming, and the newest stored file holds every recipe's latest timing."""

from __future__ import annotations

import json
import logging
import os
import shutil
from types import SimpleNamespace

import pytest
from pytest_benchmark.storage.file import FileStorage
from pytest_benchmark.utils import safe_dumps
from suite_run import ROOT, run_pytest

from perf.judge.benchmark_storage import SAVE_NAME, latest_baseline, merged_with_stored, read_stored, save_atomically


def bench(name: str, median: float) -> dict:
    return {"fullname": f"tests/perf/test_hotswap.py::test_generation_latency[{name}]", "stats": {"median": median}}


def test_the_newest_stored_file_is_found_whatever_machine_id_saved_it(tmp_path):
    for machine, number in (("Linux-CPython-3.12-64bit", "0002"), ("Linux-CPython-3.11-64bit", "0001")):
        (tmp_path / machine).mkdir()
        (tmp_path / machine / f"{number}_{SAVE_NAME}.json").write_text("{}")
    (tmp_path / "Linux-CPython-3.11-64bit" / "0003_autosaved.json").write_text("{}")  # not a stored baseline

    assert latest_baseline(tmp_path) == tmp_path / "Linux-CPython-3.12-64bit" / f"0002_{SAVE_NAME}.json"
    assert latest_baseline(tmp_path / "nothing-here") is None


def test_a_new_baseline_keeps_the_recipes_this_run_did_not_time_at_their_newest_timing():
    older = {"benchmarks": [bench("h100-baseline", 5.9), bench("h100-no_fa3", 3.3)]}
    newer = {"benchmarks": [bench("h100-baseline", 5.7), bench("h100-optimized", 3.2)]}
    output = {"machine_info": {"node": "now"}, "benchmarks": [bench("h100-optimized", 3.0)]}

    merged = merged_with_stored(output, [older, newer])

    assert [(b["fullname"].split("[")[1], b["stats"]["median"]) for b in merged["benchmarks"]] == [
        ("h100-optimized]", 3.0), ("h100-baseline]", 5.7), ("h100-no_fa3]", 3.3)]
    assert merged["machine_info"] == {"node": "now"}


def test_compare_is_announced_and_saved_baselines_are_compared_on_the_next_run(tmp_path):
    """A baselines folder with no stored timings says so in one line; --update-baselines stores them in
    pytest-benchmark's naming; the next --benchmark-compare compares against them."""
    baselines = tmp_path / "baselines"
    shutil.copytree(ROOT / "baselines" / "cpu", baselines / "cpu", ignore=shutil.ignore_patterns("benchmarks"))
    common = ("-m", "cpu", "--recipes", "hotswap_eager", "--no-cold-start", "--baselines-dir", str(baselines),
              "--results-dir", str(tmp_path / "results"), "--rounds", "3")

    first = run_pytest(*common, "--benchmark-compare", "--update-baselines", cache=tmp_path / "cache", timeout=300)
    second = run_pytest(*common, "--benchmark-compare", cache=tmp_path / "cache", timeout=300)

    assert first.returncode == 0, first.stdout[-3000:]
    assert "nothing to compare against" in first.stdout + first.stderr
    stored = list((baselines / "cpu" / "benchmarks").glob(f"*/0001_{SAVE_NAME}.json"))
    assert len(stored) == 1 and json.loads(stored[0].read_text())["benchmarks"]
    assert second.returncode == 0, second.stdout[-3000:]
    assert f"against {stored[0]}" in second.stdout
    assert "(NOW)" in second.stdout and "(0001_baselin)" in second.stdout


def test_a_truncated_stored_file_is_left_out_not_a_traceback(tmp_path):
    """A save cut short (pytest-benchmark's own plain write, killed) is named and skipped: the newest readable
    file is compared against, and a new baseline merges the readable ones."""
    machine = tmp_path / "Linux-CPython-3.11-64bit"
    machine.mkdir()
    (machine / f"0001_{SAVE_NAME}.json").write_text(json.dumps({"benchmarks": [bench("cpu-baseline", 0.1)]}))
    (machine / f"0002_{SAVE_NAME}.json").write_text('{"benchmarks": [{"fullname": "tests/pe')

    stored, unreadable = read_stored(tmp_path)

    assert unreadable == [machine / f"0002_{SAVE_NAME}.json"]
    assert [b["stats"]["median"] for s in stored.values() for b in s["benchmarks"]] == [0.1]
    assert latest_baseline(tmp_path) == machine / f"0001_{SAVE_NAME}.json"


def test_pytest_benchmarks_save_is_atomic(tmp_path, monkeypatch):
    """A save that fails before its rename (as a kill would stop it) leaves no file and no temporary file; one
    that completes leaves pytest-benchmark's own bytes under its own next name."""
    storage = FileStorage(tmp_path, logging.getLogger("test"), default_machine_id="machine")
    save_atomically(storage)
    output = {"benchmarks": [bench("cpu-baseline", 0.1)]}

    def killed(*args):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", killed)
        with pytest.raises(KeyboardInterrupt):
            storage.save(output, SAVE_NAME)
    assert list(tmp_path.rglob("*")) == [tmp_path / "machine"]

    storage.save(output, SAVE_NAME)
    saved = tmp_path / "machine" / f"0001_{SAVE_NAME}.json"
    assert list(tmp_path.rglob("*.json")) == [saved]
    assert saved.read_bytes() == safe_dumps(output, ensure_ascii=True, indent=4).encode()


def compare_machine_info(*plugins, storage, logger) -> list:
    """pytest-benchmark's ``pytest_benchmark_compare_machine_info`` through pluggy, with ``plugins`` registered,
    for stored timings from another machine."""
    from _pytest.config import PytestPluginManager  # takes unmarked pytest_* hookspecs, as pytest-benchmark's are
    from pytest_benchmark import hookspec

    manager = PytestPluginManager()
    manager.add_hookspecs(hookspec)
    for plugin in plugins:
        manager.register(plugin)
    session = SimpleNamespace(logger=logger, storage=storage)
    return manager.hook.pytest_benchmark_compare_machine_info(
        config=None, benchmarksession=session, machine_info={"cpu": "this one"},
        compared_benchmark={"machine_info": {"cpu": "the recording one"}})


def test_timings_stored_outside_the_working_directory_on_another_machine_are_a_warning_not_a_crash(
        tmp_path, monkeypatch):
    """pytest-benchmark names its storage relative to the working directory in that warning, and raises where the
    stored timings lie elsewhere (a --baselines-dir outside the checkout): an INTERNALERROR, exit 3, before any
    test. The suite's plugin gives the warning instead. Control: pytest-benchmark alone still raises."""
    from pytest_benchmark import plugin as benchmark_plugin

    from perf import plugin

    work, stored = tmp_path / "checkout", tmp_path / "elsewhere" / "benchmarks"
    work.mkdir()
    monkeypatch.chdir(work)
    warnings: list[str] = []
    logger = SimpleNamespace(warning=lambda text, **_: warnings.append(text))
    storage = FileStorage(stored, logger)
    with pytest.raises(ValueError, match="is not in the subpath of"):
        compare_machine_info(benchmark_plugin, storage=storage, logger=logger)
    assert compare_machine_info(benchmark_plugin, plugin, storage=storage, logger=logger) == []
    assert warnings == [f"Benchmark machine_info is different from that of the stored timings in {stored}"]
