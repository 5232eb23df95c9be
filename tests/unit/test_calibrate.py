"""Calibration as a command: each check's false alarms on unchanged runs and the smallest defect it catches, from
records alone (``perf.judge.calibrate``)."""

from __future__ import annotations

import dataclasses
import json

from fake_records import example_record

from perf.judge.baseline_files import write_record
from perf.judge.calibrate import calibrate, main
from perf.judge.record import HOTSWAP_SCALING, LoraFinding, RunRecord, SwapCheck, SwapControls
from perf.judge.serving_record import Request, ScaleFigures, ServingResult


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


def serving(errors: dict[str, float], controls: dict[str, float], floor: float, first: int = 1, steady: int = 0,
            smallest_scale: float | None = 0.02) -> dict[str, ServingResult]:
    """A run's ``scale`` scenario: its checks and controls at a noise floor, graphs first and once warm."""
    figures = ScaleFigures("kohya", 0.9, 3.0, 0, {}, 0.05, smallest_scale)
    request = Request("scale 0.6", 60.0, first, 3.0, steady)
    return {"scale": ServingResult("scale", (request,), errors, controls, expected_recompiles=1, noise_floor=floor,
                                   scale=figures)}


def test_serving_checks_count_false_alarms_against_each_runs_floor_and_the_controls_caught_in_every_run():
    runs = [hotswap_run([3.0], swap_check(0.0, {"0.1": 1.0}), serving=serving(
                {"scale 0.6": 0.024}, {"scale 0.6 ignored": 0.2, "scale 0.6 served 5% off": 0.05}, floor=0.0226)),
            hotswap_run([3.0], swap_check(0.0, {"0.1": 1.0}), serving=serving(
                {"scale 0.6": 0.040}, {"scale 0.6 ignored": 0.3, "scale 0.6 served 5% off": 0.06}, floor=0.0226,
                smallest_scale=0.05))]

    rows = rows_by_check(calibrate({"optimized": runs}))
    checks = rows["serving scale: swap checks"]

    assert (checks.runs, checks.false_alarms, checks.worst_aa) == (2, 1, 0.040)  # 0.040 > 1.5 x 0.0226
    assert checks.tolerance.startswith("0.0339 ")
    assert checks.smallest_caught.startswith("every control caught, the nearest at 1.47x the tolerance (scale 0.6 "
                                             "served 5% off)")
    assert checks.smallest_caught.endswith("a scale 5.0% off caught at every scale")  # 2% slipped in one run
    assert (rows["serving scale: documented graph count"].false_alarms,
            rows["serving scale: nothing compiles once warm"].false_alarms) == (0, 0)


def test_a_serving_control_under_the_tolerance_is_missed_and_a_graph_count_off_is_an_alarm():
    runs = [hotswap_run([3.0], swap_check(0.0, {"0.1": 1.0}), serving=serving(
        {"scale 0.6": 0.0}, {"scale 0.6 ignored": 0.001}, floor=1e-6, first=2, steady=1))]

    rows = rows_by_check(calibrate({"optimized": runs}))

    assert rows["serving scale: swap checks"].smallest_caught.startswith("MISSED: scale 0.6 ignored")
    assert (rows["serving scale: documented graph count"].false_alarms,
            rows["serving scale: documented graph count"].worst_aa) == (1, 1)
    assert rows["serving scale: nothing compiles once warm"].false_alarms == 1


def test_a_swap_back_the_hotswap_scaling_finding_explains_is_no_false_alarm_and_any_other_is():
    finding = LoraFinding(HOTSWAP_SCALING, "the patterns are ignored", {"peft": "0.21.0"})
    explained = hotswap_run([3.0], swap_check(0.0, {"0.1": 1.0}), lora_findings=(finding,))
    explained = dataclasses.replace(explained, swap_check=dataclasses.replace(explained.swap_check, swap_back=395.0))
    unexplained = dataclasses.replace(explained, lora_findings=())

    rows = rows_by_check(calibrate({"optimized": [explained, unexplained]}))
    back = rows["swap back to the first adapter (one step)"]

    assert (back.runs, back.false_alarms, back.worst_aa) == (2, 1, 395.0)
    assert "over the tolerance in 1 run(s) that found peft's hot-swap ignoring per-module ranks" in back.smallest_caught
    assert rows["swap check (one step)"].false_alarms == 0
