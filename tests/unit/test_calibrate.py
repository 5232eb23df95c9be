"""Calibration as a command: each check's false alarms on unchanged runs and the smallest defect it catches, from
records alone (``perf.judge.calibrate``)."""

from __future__ import annotations

import json

from fake_records import example_record

from perf.judge.baseline_files import write_record
from perf.judge.calibrate import calibrate, main
from perf.judge.record import RunRecord, SwapCheck, SwapControls


def swap_check(swap: float, scale: dict[str, float], partial: float = 2.0, not_swapped: float = 5.0) -> SwapCheck:
    return SwapCheck("fraction of the adapter's effect", 0.05, "style_b", 3.0, swap, 0.0, 0,
                     SwapControls(swap, 0.0, scale, partial, not_swapped, 0))


def hotswap_run(samples: list[float], check: SwapCheck, **changes) -> RunRecord:
    """A run of ``optimized`` (compiled, hot-swapped) with its swap check's figures."""
    return example_record("optimized", samples, swap_check=check, **changes)


def rows_by_check(rows) -> dict:
    return {row.check: row for row in rows}


def test_swap_check_counts_false_alarms_and_reports_the_smallest_strength_error_caught_in_every_run():
    runs = [hotswap_run([3.0, 3.01, 3.02], swap_check(0.01, {"0.01": 0.02, "0.03": 0.04, "0.1": 0.11})),
            hotswap_run([3.0, 3.01, 3.02], swap_check(0.06, {"0.01": 0.02, "0.03": 0.06, "0.1": 0.12}))]

    row = rows_by_check(calibrate({"optimized": runs}))["swap check (one step)"]

    assert (row.runs, row.false_alarms, row.worst_aa) == (2, 1, 0.06)
    assert row.smallest_caught.startswith("strength off by 10%;")  # 3% slipped through in the first run
    assert "partial swap caught; no swap caught" in row.smallest_caught


def test_a_control_the_check_lets_pass_is_reported_missed():
    runs = [hotswap_run([3.0, 3.01, 3.02], swap_check(0.01, {"0.1": 0.11}, partial=0.01))]

    row = rows_by_check(calibrate({"optimized": runs}))["swap check (one step)"]

    assert "partial swap MISSED" in row.smallest_caught


def test_latency_rule_on_a_pair_of_unchanged_runs_and_the_smallest_slowdown_it_flags():
    runs = [hotswap_run([3.00, 3.01, 3.02], swap_check(0.0, {"0.1": 1.0})),
            hotswap_run([3.01, 3.02, 3.00], swap_check(0.0, {"0.1": 1.0}))]

    row = rows_by_check(calibrate({"optimized": runs}))["latency verdict"]

    assert (row.runs, row.false_alarms) == (1, 0)
    assert row.smallest_caught == "5% slower"  # 2% stays inside the H100 margin of 3%


def test_the_command_writes_the_table_with_the_records_it_was_made_from_each_run_once(tmp_path):
    for folder, swap in (("a", 0.01), ("b", 0.02)):
        write_record(tmp_path / folder, hotswap_run([3.0, 3.01, 3.02], swap_check(swap, {"0.1": 0.2}),
                                                    commit=f"commit-{folder}"))

    write_record(tmp_path / "copy", hotswap_run([3.0, 3.01, 3.02], swap_check(0.01, {"0.1": 0.2}), commit="commit-a"))
    status = main(["--profile", "h100", "--baselines-dir", str(tmp_path / "a"), "--from", str(tmp_path / "b"),
                   "--from", str(tmp_path / "copy"), "--out", str(tmp_path / "out")])

    table = (tmp_path / "out" / "calibration.md").read_text()
    assert status == 0
    assert "| swap check (one step) | optimized | 2 | 0 | 0.02 | 0.05 | strength off by 10%;" in table
    assert [r["commit"] for r in json.loads((tmp_path / "out" / "calibration.json").read_text())["records"]] == [
        "commit-a", "commit-b"]
