"""The regression verdict, specified: its error rates on simulated noise, then each metric's rule and the CLI.

Noise model: one generation's time is multiplicative log-normal noise of a given CV (coefficient of variation)
around the true time; runs are independent. 4000 simulated baseline/candidate pairs per case, seeded. Rounds that
rotate through a pool of adapters add each adapter's own speed, the same on both sides (``POOL``).
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fake_records import example_record

from perf.judge.baseline_files import write_record
from perf.judge.compare import (
    DEFAULT_ROUNDS,
    LATENCY_THRESHOLD,
    PROFILE_LATENCY_THRESHOLDS,
    any_regression,
    bootstrap_medians,
    classify_interval,
    compare_records,
    format_table,
    main,
    median_ratio_interval,
    paired_ratio_interval,
    verdict_rows,
)
from perf.judge.record import (
    ChurnSummary,
    ColdStartSummary,
    Compile,
    Latency,
    PeakMemory,
    Quality,
    RecordedStart,
    RunRecord,
)

PAIRS = 4000
GPU_CV = 0.01  # twice the spread GPU runs show (<= 0.5% of the median)
CPU_CV = 0.05  # a shared CPU runner


def outcome_rates(rounds: int, cv: float, slowdown: float, threshold: float, seed: int) -> dict[str, float]:
    """Share of simulated comparisons per outcome when the candidate is truly ``slowdown`` times the baseline."""
    rng = np.random.default_rng(seed)
    baseline = np.exp(cv * rng.standard_normal((PAIRS, rounds)))
    candidate = slowdown * np.exp(cv * rng.standard_normal((PAIRS, rounds)))
    outcomes = classify_interval(median_ratio_interval(baseline, candidate), threshold)
    return {name: float(np.mean(outcomes == name)) for name in ("regressed", "improved", "ok")}


@pytest.mark.parametrize("rounds", [DEFAULT_ROUNDS, 3])
def test_identical_runs_rarely_alarm(rounds):
    rates = outcome_rates(rounds, GPU_CV, 1.0, LATENCY_THRESHOLD, seed=1)
    assert rates["regressed"] <= 0.01
    assert rates["improved"] <= 0.01


@pytest.mark.parametrize("rounds", [DEFAULT_ROUNDS, 3])
def test_true_seven_percent_change_is_caught(rounds):
    assert outcome_rates(rounds, GPU_CV, 1.07, LATENCY_THRESHOLD, seed=2)["regressed"] >= 0.95
    assert outcome_rates(rounds, GPU_CV, 1 / 1.07, LATENCY_THRESHOLD, seed=3)["improved"] >= 0.95


@pytest.mark.parametrize("rounds", [DEFAULT_ROUNDS, 3])
def test_the_shift_between_fresh_machines_rarely_alarms(rounds):
    """The H100 baseline row measured 5.587 and 5.72 s on two fresh machines (2.4%), samples within 0.5%."""
    assert outcome_rates(rounds, GPU_CV / 2, 1.024, LATENCY_THRESHOLD, seed=7)["regressed"] <= 0.01


def test_gpu_margin_on_a_noisy_cpu_would_false_alarm():
    """Why the cpu profile has its own margin: 5 samples at 5% CV cannot meet both targets."""
    assert outcome_rates(DEFAULT_ROUNDS, CPU_CV, 1.0, LATENCY_THRESHOLD, seed=4)["regressed"] > 0.01


def test_cpu_margin_keeps_false_alarms_low_and_catches_large_slowdowns():
    margin = PROFILE_LATENCY_THRESHOLDS["cpu"]
    assert outcome_rates(DEFAULT_ROUNDS, CPU_CV, 1.0, margin, seed=5)["regressed"] <= 0.01
    assert outcome_rates(DEFAULT_ROUNDS, CPU_CV, 2.0, margin, seed=6)["regressed"] >= 0.95


POOL = (1.0, 1.045, 1.055, 1.10)
"""Adapters' own times relative to the fastest, as the H200's power cap makes them (2026-12-01: peft_all 2.28 s,
kohya 2.38, xlabs 2.41, ai_toolkit_reordered 2.51 on the fastest row); rounds serve them in turn."""


def rotated_rates(rounds: int, cv: float, slowdown: float, seed: int, paired: bool = True) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    adapters = np.resize(np.array(POOL[:3] if rounds == 3 else POOL), rounds)
    baseline = adapters * np.exp(cv * rng.standard_normal((PAIRS, rounds)))
    candidate = slowdown * adapters * np.exp(cv * rng.standard_normal((PAIRS, rounds)))
    interval = (paired_ratio_interval if paired else median_ratio_interval)(baseline, candidate)
    outcomes = classify_interval(interval, LATENCY_THRESHOLD)
    return {name: float(np.mean(outcomes == name)) for name in ("regressed", "improved", "ok")}


@pytest.mark.parametrize("rounds", [DEFAULT_ROUNDS, 3])
def test_rounds_paired_by_adapter_catch_a_seven_percent_change_that_unpaired_rounds_miss(rounds):
    assert rotated_rates(rounds, GPU_CV, 1.07, seed=8)["regressed"] >= 0.95
    assert rotated_rates(rounds, GPU_CV, 1 / 1.07, seed=9)["improved"] >= 0.95
    assert rotated_rates(rounds, GPU_CV, 1.07, seed=8, paired=False)["regressed"] <= 0.5


@pytest.mark.parametrize("rounds", [DEFAULT_ROUNDS, 3])
def test_rounds_paired_by_adapter_rarely_alarm_unchanged_or_on_another_machine(rounds):
    unchanged = rotated_rates(rounds, GPU_CV, 1.0, seed=10)
    assert unchanged["regressed"] <= 0.01 and unchanged["improved"] <= 0.01
    assert rotated_rates(rounds, GPU_CV / 2, 1.024, seed=11)["regressed"] <= 0.01


@pytest.mark.parametrize("rounds", [4, 5])
def test_bootstrap_medians_equal_medians_of_resampled_samples(rounds):
    """Indices drawn by the same generator pick from the sorted samples, so medians match one for one."""
    samples = np.random.default_rng(0).random(rounds)
    fast = bootstrap_medians(samples, 500, np.random.default_rng(7))
    indices = np.random.default_rng(7).integers(0, rounds, (500, rounds))
    np.testing.assert_allclose(fast, np.median(np.sort(samples)[indices], axis=1))


def test_interval_is_reproducible():
    base, cand = np.array([1.0, 1.02, 0.99, 1.01, 1.0]), np.array([1.05, 1.04, 1.06, 1.05, 1.07])
    np.testing.assert_array_equal(median_ratio_interval(base, cand), median_ratio_interval(base, cand))


BASE_SAMPLES = [1.000, 1.004, 0.997, 1.002, 0.999]


def record(samples=BASE_SAMPLES, recipe="optimized", **changes) -> RunRecord:
    return example_record(recipe, samples, **changes)


def verdicts_of(baseline: RunRecord, candidate: RunRecord) -> dict[str, str]:
    return {v.metric: v.verdict for v in compare_records({"optimized": baseline}, {"optimized": candidate})}


def test_unchanged_run_is_ok_on_every_metric():
    assert set(verdicts_of(record(), record()).values()) == {"ok"}


def test_slower_run_regresses_and_faster_run_improves():
    assert verdicts_of(record(), record([s * 1.08 for s in BASE_SAMPLES]))["latency_median_s"] == "regressed"
    assert verdicts_of(record(), record([s * 0.90 for s in BASE_SAMPLES]))["latency_median_s"] == "improved"


def latency_reason(baseline: RunRecord, candidate: RunRecord) -> str:
    (verdict,) = [v for v in compare_records({"optimized": baseline}, {"optimized": candidate})
                  if v.metric == "latency_median_s"]
    return verdict.reason


def timed_on(adapters: list[str], clocks: list[float]) -> RunRecord:
    latency = Latency.of(BASE_SAMPLES[:len(adapters)], "pytest-benchmark", adapters=adapters,
                         gpu=[{"sm_clock_mhz": clock, "power_w": 690.0} for clock in clocks])
    return record(BASE_SAMPLES[:len(adapters)], latency=latency)


def test_rounds_on_the_same_adapters_are_judged_pair_by_pair():
    """The fastest H200 row's two records of 2026-12-01 (the fused kernel's cheaper GELU between them): the pool's
    spread hid a slowdown unpaired; paired, 10% reads as a regression and their own change stays within the
    margin. Rounds on other adapters, or on one adapter, are judged unpaired as before."""
    pool = ["peft_all", "kohya", "xlabs"]
    first = example_record("optimized", [2.319281, 2.470441, 2.464725], latency=Latency.of(
        [2.319281, 2.470441, 2.464725], "pytest-benchmark", adapters=pool))
    second = [2.271374, 2.367098, 2.419211]

    def verdict(samples, adapters):
        candidate = example_record("optimized", samples, latency=Latency.of(samples, "pytest-benchmark",
                                                                            adapters=adapters))
        (latency,) = [v for v in compare_records({"optimized": first}, {"optimized": candidate})
                      if v.metric == "latency_median_s"]
        return latency

    assert verdict(second, pool).verdict == "ok"
    slower = verdict([s * 1.10 for s in second], pool)
    assert slower.verdict == "regressed" and "same adapter" in slower.reason
    assert verdict([s * 1.10 for s in second], ["kohya", "xlabs", "peft_all"]).verdict == "ok"  # unpaired: hidden


def test_the_latency_verdict_says_what_the_rounds_ran_on_where_it_is_known():
    """The adapters served and the GPU's clock after each round (issue 25: at the H200's power cap an adapter's
    data sets the clock): reported beside the verdict, which they do not change."""
    same = ["peft_all", "kohya", "xlabs"]
    assert "SM clock 1890 -> 1725 MHz" in latency_reason(timed_on(same, [1890, 1890, 1900]),
                                                        timed_on(same, [1725, 1700, 1800]))
    reason = latency_reason(timed_on(same, [1890] * 3), timed_on(["kohya", "xlabs", "peft_all"], [1890] * 3))
    assert "rounds served peft_all,kohya,xlabs -> kohya,xlabs,peft_all" in reason
    assert "rounds served" not in latency_reason(timed_on(same, [1890] * 3), timed_on(same, [1890] * 3))
    assert "SM clock" not in latency_reason(record(), record())  # records without readings: nothing invented


@pytest.mark.parametrize(("key", "value"), [("device", "NVIDIA H200"), ("model_source", "black-forest-labs/FLUX.1-dev"),
                                            ("emulated", True)])
def test_records_of_another_device_or_model_are_incomparable(key, value):
    (verdict,) = compare_records({"optimized": record()}, {"optimized": record(**{key: value})})
    assert verdict.verdict == "incomparable"
    assert key in verdict.reason


def test_too_few_samples_is_incomparable():
    assert verdicts_of(record(), record(samples=[1.0]))["latency_median_s"] == "incomparable"


def test_recipe_on_one_side_only_is_incomparable():
    verdicts = compare_records({"optimized": record()}, {"fresh": record(recipe="fresh")})
    assert {(v.recipe, v.verdict) for v in verdicts} == {("fresh", "incomparable"), ("optimized", "incomparable")}


def test_any_new_recompile_regresses():
    assert verdicts_of(record(), record(recompiles_after_warmup=1))["recompiles"] == "regressed"


@pytest.mark.parametrize(("reserved", "expected"), [(34.56, "regressed"), (32.64, "ok"), (28.0, "improved")])
def test_peak_memory_beyond_five_percent_regresses(reserved, expected):
    candidate = record(peak_memory=PeakMemory(30.0, reserved, "cuda"))
    assert verdicts_of(record(), candidate)["peak_memory_gib"] == expected


def cold_compile(seconds: float, graphs: int = 1) -> Compile:
    """A warm-up that compiled ``graphs`` graphs anew (empty compile cache) in ``seconds``."""
    return Compile("full", "default", seconds, graphs, {"fxgraph_cache_hit": 0, "fxgraph_cache_miss": graphs})


@pytest.mark.parametrize("seconds", [193.4, 280.0])
def test_cold_compiles_of_the_same_code_on_other_fresh_h100s_are_ok(seconds):
    """A/A: optimized_fullgraph_defaults compiled in 157, 193 and ~280 s on three fresh H100s, same stack."""
    verdicts = verdicts_of(record(compile=cold_compile(156.6)), record(compile=cold_compile(seconds)))
    assert verdicts["warmup_s"] == "ok"
    assert verdicts["compile.warmup_graphs"] == "ok"


def test_the_coordinate_descent_compile_blow_up_regresses():
    """Negative control: torchao's coordinate-descent tuning gave no image after 570 s against 157 s."""
    verdicts = verdicts_of(record(compile=cold_compile(156.6)), record(compile=cold_compile(570.0)))
    assert verdicts["warmup_s"] == "regressed"


def test_a_new_graph_break_regresses_whatever_the_time():
    """Negative control: one graph more in warm-up is a new graph break, even in a compile no slower."""
    verdicts = verdicts_of(record(compile=cold_compile(156.6, graphs=1)), record(compile=cold_compile(150.0, graphs=2)))
    assert verdicts["compile.warmup_graphs"] == "regressed"
    assert verdicts["warmup_s"] == "ok"


def test_subsecond_warmup_jitter_is_not_a_regression():
    base = record(compile=Compile("none", "default", 0.05, 0))
    cand = record(compile=Compile("none", "default", 0.3, 0))
    assert verdicts_of(base, cand)["warmup_s"] == "ok"


def test_warmup_of_a_cold_compile_is_not_compared_with_a_warm_one():
    """A compile loaded from the cache (45 s on the H100) says nothing about one made anew (157 s), either way."""
    cold = record(compile=cold_compile(156.6))
    warm = record(compile=dataclasses.replace(cold_compile(45.0),
                                              warmup_cache={"fxgraph_cache_hit": 1, "fxgraph_cache_miss": 0}))
    assert verdicts_of(cold, warm)["warmup_s"] == "incomparable"
    assert verdicts_of(warm, cold)["warmup_s"] == "incomparable"


@pytest.mark.parametrize(("base", "cand", "expected"), [
    ("completed", "out_of_memory", "regressed"), ("out_of_memory", "completed", "improved"),
    ("out_of_memory", "out_of_memory", "ok"), ("completed", "over_compile_budget", "regressed"),
])
def test_a_row_that_stops_completing_regresses_and_a_memory_control_that_still_fails_is_ok(base, cand, expected):
    verdicts = verdicts_of(record(outcome=base), record(outcome=cand))
    assert verdicts == {"outcome": expected}


def start(seconds: float, graphs: int = 1, misses: int = 0) -> RecordedStart:
    return RecordedStart(seconds, 2.0, 3.0, 1.0, seconds - 6.0, graphs,
                         {"fxgraph_cache_hit": graphs - misses, "fxgraph_cache_miss": misses}, seconds - 9.0)


def serving(cold: float, warm: float, warm_misses: int = 0, churn_recompiles: int = 0) -> dict:
    churn = ChurnSummary(20, 6, (16, 32, 64), churn_recompiles, 0.15, 0.2, 3.0, 18.0, 0.0, ())
    return {"cold_start": ColdStartSummary(start(cold, misses=1), start(warm, misses=warm_misses), 3.0, cold - warm),
            "churn": churn}


def test_a_cold_start_on_a_loaded_cpu_runner_is_ok():
    """A/A: the CPU CI's cold start of no_fa3_fp8 moved 29.0 -> 35.6 s with the code unchanged."""
    verdicts = verdicts_of(record(**serving(29.0, 10.0)), record(**serving(35.6, 11.0)))
    assert {verdicts[m] for m in verdicts if m.startswith(("cold_start", "churn"))} == {"ok"}


def test_start_times_beyond_the_factor_and_broken_cache_or_churn_counts_regress():
    """Negative controls: a start that takes 570 s instead of 157 s, a warm start that compiles its graph anew
    instead of loading it, a recompile during the churn."""
    verdicts = verdicts_of(record(**serving(157.0, 45.0)), record(**serving(570.0, 46.0, 1, 1)))
    assert verdicts["cold_start.cold.process_to_first_image_s"] == "regressed"
    assert verdicts["cold_start.warm.process_to_first_image_s"] == "ok"
    assert verdicts["cold_start.warm.cache.fxgraph_cache_miss"] == "regressed"
    assert verdicts["churn.recompiles"] == "regressed"
    assert verdicts["churn.swap_p95_s"] == "ok"


def test_serving_figures_are_compared_only_where_both_records_have_them():
    verdicts = verdicts_of(record(), record(**serving(570.0, 46.0, 1, 1)))
    assert not any(metric.startswith(("cold_start", "churn")) for metric in verdicts)


def test_quality_drop_beyond_tolerance_regresses_and_unshared_scores_are_skipped():
    base = record(quality=Quality("synthetic", 31.0, psnr_vs_reference=38.0))
    cand = record(quality=Quality("synthetic", 29.5, psnr_vs_reference=37.5))
    verdicts = verdicts_of(base, cand)
    assert verdicts["quality.clip_score"] == "regressed"
    assert verdicts["quality.psnr_vs_reference"] == "ok"
    assert not any(metric.startswith("quality") for metric in verdicts_of(base, record()))


def test_table_lists_every_verdict():
    verdicts = compare_records({"optimized": record()}, {"optimized": record(recompiles_after_warmup=2)})
    table = format_table(verdicts).splitlines()
    assert table[0].split()[:3] == ["recipe", "metric", "verdict"]
    assert len(table) == 1 + len(verdicts)
    assert any("recompiles" in line and "regressed" in line for line in table)


def write_run(root: Path, candidate: RunRecord) -> tuple[Path, Path]:
    write_record(root / "base", record())
    write_record(root / "cand", candidate)
    return root / "base", root / "cand"


def test_cli_exits_one_on_regression(tmp_path, capsys):
    base, cand = write_run(tmp_path, record(recompiles_after_warmup=1))
    assert main([str(base), str(cand), "--profile", "h100"]) == 1
    assert "regressed" in capsys.readouterr().out


def test_cli_exits_zero_without_regression(tmp_path, capsys):
    base, cand = write_run(tmp_path, record([s * 0.9 for s in BASE_SAMPLES]))
    assert main([str(base), str(cand), "--profile", "h100"]) == 0
    assert "improved" in capsys.readouterr().out


def test_cli_refuses_a_missing_candidate_folder(tmp_path, capsys):
    base, _ = write_run(tmp_path, record())
    assert main([str(base), str(tmp_path / "nothing"), "--profile", "h100"]) == 2
    assert f"CANDIDATE_DIR {tmp_path / 'nothing'}: no such folder" in capsys.readouterr().err


def test_module_entry_point_exits_one_on_regression(tmp_path):
    base, cand = write_run(tmp_path, record([s * 1.2 for s in BASE_SAMPLES]))
    run = subprocess.run([sys.executable, "-m", "perf.judge.compare", str(base), str(cand), "--profile", "h100"],
                         capture_output=True, text=True, cwd=Path(__file__).parents[2], timeout=60)
    assert run.returncode == 1, run.stderr
    assert "latency_median_s" in run.stdout


@pytest.mark.parametrize(("baseline_db", "candidate_db", "expected"), [
    (55.1, 52.97, "ok"),  # measured: optimized_fast on two fresh H100s, unchanged stack
    (55.1, 26.2, "regressed"),  # another adapter's image (H100 thumbnails: 26.1-26.3 dB)
    (55.1, 33.8, "regressed"),  # the FP8 compiled row's image where the bf16 row's was stored
])
def test_psnr_drops_count_only_below_the_visually_identical_floor(baseline_db, candidate_db, expected):
    verdicts = verdicts_of(record(quality=Quality("synthetic", 31.0, psnr_vs_reference=baseline_db)),
                           record(quality=Quality("synthetic", 31.0, psnr_vs_reference=candidate_db)))
    assert verdicts["quality.psnr_vs_reference"] == expected


def test_on_the_cpu_profile_wall_and_cpu_time_are_reported_but_never_fail_the_gate():
    """An unchanged tree on a loaded 2-core machine read 3.8-92x slower; the same tree's CPU seconds moved 2.9x.
    Both stay in the table, marked not gated; a count (a graph break) still fails the gate."""
    def cpu(samples, graphs=1):
        return record(samples, profile="cpu", device="x86_64", latency=Latency.of(samples, "suite", samples),
                      compile=Compile("full", "default", warmup_seconds=1.0, warmup_graphs=graphs))

    slower = compare_records({"r": cpu(BASE_SAMPLES)}, {"r": cpu([s * 10 for s in BASE_SAMPLES])})
    rows = {row[1]: row[2] for row in verdict_rows(slower)}
    assert rows["latency_median_s"] == rows["latency_cpu_median_s"] == "regressed (not gated)"
    assert not any_regression(slower)

    broken = compare_records({"r": cpu(BASE_SAMPLES)}, {"r": cpu(BASE_SAMPLES, graphs=2)})
    assert any_regression(broken)
