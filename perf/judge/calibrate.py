"""Calibration as a command: every check's false alarms on an unchanged stack and the smallest defect it catches.

``python -m perf.judge.calibrate --profile h100 --runs 2 -- --recipes baseline,optimized`` runs the suite N times on
this machine (A/A repeats; pass runs from other fresh machines with ``--from DIR``), then judges the records only:

- the one-step swap checks (``perf.run.swap_probe``): each run's error against its tolerance (false alarms), and the
  controls every run writes into its candidate: the smallest strength error caught in every run, a partial swap,
  a swap that did not happen;
- the churn: its last adapter's error and its revisit drift;
- zero recompiles, with the recipe compiled without hot-swap as the control that must recompile;
- the serving scenarios' swap checks (each run's tolerance from its own noise floor) and their controls, nothing
  compiled once warm, and the first requests' graphs against the documented count;
- the verdict's latency, compile/start wall-time and memory rules on every pair of runs (the stored baseline
  counts as a run): false alarms, and the smallest slowdown or growth each rule flags when it is applied to the
  measured samples of every pair.

The table goes to ``baselines/<profile>/calibration/`` (``calibration.md`` and ``calibration.json``) with the records
it was made from. No torch here: a record is all it needs.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from perf.errors import SuiteError
from perf.judge.baseline_files import atomic_write_bytes, folder_problem, now_iso, read_records
from perf.judge.compare import (
    START_FACTOR,
    START_METRICS,
    cache_state,
    compare_latency,
    compare_value,
    compare_wall_time,
    latency_threshold,
    memory_threshold,
    peak_memory_gib,
    warmup_seconds,
)
from perf.judge.record import HOTSWAP_SCALING, Latency, RunRecord
from perf.judge.tolerances import SAME_NUMERICS_IMAGE_TOLERANCE

Record = RunRecord
SLOWDOWNS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)  # latency scaled by 1 + s, searched for the smallest flagged
FACTORS = (1.25, 1.5, 2.0, 2.5, 3.0, 4.0)  # compile/start wall times scaled by f
GROWTHS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)  # peak memory scaled by 1 + g


@dataclass(frozen=True)
class Calibration:
    """One check on one recipe: how often it fired with nothing changed, and the smallest defect it caught."""

    check: str
    recipe: str
    runs: int  # records (or pairs of records, for the verdict's rules) it was measured on
    false_alarms: int
    worst_aa: float | None  # the A/A figure nearest to firing (the check's own unit)
    tolerance: float | str
    smallest_caught: str  # the smallest injected defect caught in every run, in words

    def cells(self) -> tuple[str, ...]:
        worst = "-" if self.worst_aa is None else f"{self.worst_aa:.4g}"
        tolerance = self.tolerance if isinstance(self.tolerance, str) else f"{self.tolerance:.4g}"
        return (self.check, self.recipe, str(self.runs), str(self.false_alarms), worst, tolerance,
                self.smallest_caught)


HEADER = ("check", "recipe", "runs", "false alarms", "worst A/A", "tolerance", "smallest defect caught")


def _smallest(values: Sequence[float], caught: Callable[[float], bool], unit: Callable[[float], str]) -> str:
    return next((unit(v) for v in values if caught(v)), f"none up to {unit(values[-1])}")


def swap_checks(recipe: str, runs: list[Record]) -> list[Calibration]:
    """The one-step swap checks and their controls, from each run's ``swap_check``."""
    checked = [r.swap_check for r in runs if r.swap_check]
    if not checked:
        return []
    tolerance = max(c.tolerance for c in checked)
    figures = [c.swap for c in checked]
    strengths = sorted(float(e) for e in checked[0].controls.scale)
    caught = _smallest(strengths, lambda e: all(c.controls.scale[str(e)] > c.tolerance for c in checked),
                       lambda e: f"strength off by {e:.0%}")
    partial = all(c.controls.partial > c.tolerance for c in checked)
    absent = all(c.controls.not_swapped > c.tolerance for c in checked)
    controls = f"; partial swap {'caught' if partial else 'MISSED'}; no swap {'caught' if absent else 'MISSED'}"
    rows = [Calibration("swap check (one step)", recipe, len(checked), sum(f > tolerance for f in figures),
                        max(figures), tolerance, caught + controls)]
    # Swapping back to the first adapter hot-swaps it: where peft's hot-swap ignores its per-module ranks (the
    # record's finding), the check fires for that defect, which the test reports as an expected failure
    back = [(r.swap_check.swap_back, any(f.subject == HOTSWAP_SCALING for f in r.lora_findings))
            for r in runs if r.swap_check]
    explained = sum(error > tolerance and found for error, found in back)
    rows.append(Calibration("swap back to the first adapter (one step)", recipe, len(back),
                            sum(error > tolerance and not found for error, found in back), max(e for e, _ in back),
                            tolerance, "as the swap check (same probe and tolerance)" + (
                                f"; over the tolerance in {explained} run(s) that found peft's hot-swap ignoring "
                                "per-module ranks (the expected failure, not counted as a false alarm)"
                                if explained else "")))
    churned = [r.churn for r in runs if r.churn and r.churn.last_error is not None]
    if churned:
        last = [c.last_error for c in churned]
        drift = [c.revisit_drift for c in churned]
        rows += [
            Calibration("churn: last adapter (one step)", recipe, len(churned), sum(e > tolerance for e in last),
                        max(last), tolerance, "as the swap check (same probe and tolerance)"),
            Calibration("churn: revisit drift (image)", recipe, len(churned),
                        sum(d > SAME_NUMERICS_IMAGE_TOLERANCE for d in drift), max(drift),
                        SAME_NUMERICS_IMAGE_TOLERANCE, "-"),
        ]
    return rows


def recompile_checks(recipe: str, runs: list[Record]) -> list[Calibration]:
    """Zero recompiles after warm-up for hot-swap recipes; the recipe compiled without hot-swap must recompile."""
    counted = [r for r in runs if r.recompiles_after_warmup is not None and r.recipe.compiled]
    if not counted:
        return []
    recompiles = [r.recompiles_after_warmup for r in counted]
    if counted[0].recipe.hotswap:
        return [Calibration("zero recompiles after swaps", recipe, len(counted), sum(n > 0 for n in recompiles),
                            max(recompiles), "0 (exact)", "a recompile (control: the recipe without hot-swap)")]
    return [Calibration("control: compile without hot-swap recompiles", recipe, len(counted),
                        sum(n == 0 for n in recompiles), min(recompiles), "> 0", f"{min(recompiles)} recompile(s)")]


def serving_checks(recipe: str, runs: list[Record]) -> list[Calibration]:
    """The serving scenarios' checks (``perf.run.serving``), per scenario over the runs that served it: the swap
    checks against each run's floor-based tolerance and their controls (a scale ignored or off, a swap or switch
    not made, a weight not applied), nothing compiled once warm, and the first requests' transformer graphs
    against the documented count. A scenario that failed is not a run of its checks."""
    served: dict[str, list] = {}
    for run in runs:
        for scenario, result in run.serving.items():
            if result.failure is None:
                served.setdefault(scenario, []).append(result)
    rows = []
    for scenario, results in sorted(served.items()):
        checked = [r for r in results if r.errors]
        if checked:
            tolerances = sorted({round(r.tolerance, 4) for r in checked})
            floored = any(r.noise_floor is not None for r in checked)
            tolerance = (f"{tolerances[0]:.4g}" if len(tolerances) == 1 else f"{tolerances[0]:.4g}-{tolerances[-1]:.4g}"
                         ) + (" (max(0.005, 1.5 x floor))" if floored else " (fixed: no floor measured)")
            missed = sorted({c for r in checked for c, e in r.controls.items() if e <= r.tolerance})
            nearest = min((e / r.tolerance, c) for r in checked for c, e in r.controls.items())
            caught = (f"MISSED: {', '.join(missed)}" if missed else
                      f"every control caught, the nearest at {nearest[0]:.3g}x the tolerance ({nearest[1]})")
            scales = [r.scale.smallest_defect_caught for r in checked if r.scale is not None]
            if scales:
                smallest = None if None in scales else max(scales)
                caught += ("; a scale error caught at every scale: none measured" if smallest is None else
                           f"; a scale {smallest:.1%} off caught at every scale")
            rows.append(Calibration(f"serving {scenario}: swap checks", recipe, len(checked),
                                    sum(r.worst_error > r.tolerance for r in checked),
                                    max(r.worst_error for r in checked), tolerance, caught))
        steady = [r.steady_recompiles for r in results]
        counted = [r.transformer_recompiles - r.expected_recompiles for r in results]
        first = max(r.transformer_recompiles for r in results)
        rows += [
            Calibration(f"serving {scenario}: nothing compiles once warm", recipe, len(results),
                        sum(n > 0 for n in steady), max(steady), "0 (exact)",
                        f"a graph (the first requests' {first} counted)" if first else "a graph"),
            Calibration(f"serving {scenario}: documented graph count", recipe, len(results),
                        sum(d != 0 for d in counted), max(counted, key=abs), "the count (exact)",
                        "one graph more or fewer"),
        ]
    return rows


def _pairs(runs: list[Record]) -> list[tuple[Record, Record]]:
    return list(itertools.combinations(runs, 2))


def _scaled_latency(record: Record, factor: float) -> Record:
    latency = Latency.of([s * factor for s in record.latency.samples_s], record.latency.timer,
                         adapters=list(record.latency.adapters))
    return dataclasses.replace(record, latency=latency)


def verdict_checks(recipe: str, runs: list[Record]) -> list[Calibration]:
    """The verdict's rules on every pair of runs (A/A), and on the pairs with the candidate made worse."""
    pairs = [(a, b) for a, b in _pairs(runs) if a.latency.samples_s and b.latency.samples_s]
    if not pairs:
        return []
    margin = latency_threshold(pairs[0][0].profile)
    verdicts = [compare_latency(recipe, a, b, margin).verdict for a, b in pairs]
    ratios = [max(b_med / a_med, a_med / b_med) for a, b in pairs
              for a_med, b_med in [(a.latency.median, b.latency.median)]]
    slow = _smallest(SLOWDOWNS, lambda s: all(compare_latency(recipe, a, _scaled_latency(b, 1 + s), margin).verdict
                                              == "regressed" for a, b in pairs), lambda s: f"{s:.0%} slower")
    rows = [Calibration("latency verdict", recipe, len(pairs), sum(v != "ok" for v in verdicts), max(ratios),
                        f"interval beyond 1 ± {margin:.1%}", slow)]
    walls = [(a, b, metric, get) for a, b in pairs for metric, get in _wall_times()
             if get(a) is not None and get(b) is not None and cache_state(a) == cache_state(b)]
    if walls:
        outcomes = [compare_wall_time(recipe, metric, get(a), get(b)).verdict for a, b, metric, get in walls]
        spread = max(max(get(a), get(b)) / min(get(a), get(b)) for a, b, _, get in walls)
        caught = _smallest(FACTORS, lambda f: all(compare_wall_time(recipe, m, get(a), f * get(b)).verdict ==
                                                  "regressed" for a, b, m, get in walls), lambda f: f"{f:g}x slower")
        rows.append(Calibration("compile/start wall time", recipe, len(walls), sum(o != "ok" for o in outcomes),
                                spread, f"{START_FACTOR:g}x", caught))
    memory = [(a, b) for a, b in pairs if peak_memory_gib(a) and peak_memory_gib(b)]
    if memory:
        outcomes = [compare_value(recipe, "peak", peak_memory_gib(a), peak_memory_gib(b), memory_threshold(b)).verdict
                    for a, b in memory]
        spread = max(peak_memory_gib(b) / peak_memory_gib(a) for a, b in memory)
        caught = _smallest(GROWTHS, lambda g: all(
            compare_value(recipe, "peak", peak_memory_gib(a), (1 + g) * peak_memory_gib(b), memory_threshold(b))
            .verdict == "regressed" for a, b in memory), lambda g: f"{g:.0%} more")
        rows.append(Calibration("peak memory", recipe, len(memory), sum(o != "ok" for o in outcomes), spread,
                                f"{memory_threshold(memory[0][1]):.0%}", caught))
    return rows


def _wall_times() -> list[tuple[str, Callable[[Record], float | None]]]:
    """Wall-time metrics the verdict gates beyond ``START_FACTOR`` (warm-up only between runs of one compile-cache
    state, as the verdict does)."""
    return [("warmup_s", warmup_seconds), *START_METRICS.items()]


def calibrate(runs_by_recipe: dict[str, list[Record]]) -> list[Calibration]:
    rows = []
    for recipe, runs in sorted(runs_by_recipe.items()):
        rows += [*swap_checks(recipe, runs), *recompile_checks(recipe, runs), *serving_checks(recipe, runs),
                 *verdict_checks(recipe, runs)]
    return rows


def collect(folders: Sequence[Path], profile: str) -> tuple[dict[str, list[Record]], list[dict[str, Any]]]:
    """Completed records of ``profile`` in each folder (a results or baselines root), by recipe, each run once,
    and where each came from."""
    runs: dict[str, list[Record]] = {}
    sources, seen = [], set()
    for folder in folders:
        records, _ = read_records(folder, profile)
        for name, record in records.items():
            key = (name, record.date, record.commit, record.device, record.latency)
            if not record.completed or key in seen:
                continue  # a run kept in two folders (results and baselines) is one run
            seen.add(key)
            runs.setdefault(name, []).append(record)
            sources.append({"recipe": name, "folder": str(folder), "date": record.date, "commit": record.commit,
                            "device": record.device, "emulated": record.emulated,
                            "model_source": record.model_source, "command": record.command})
    return runs, sources


def markdown(rows: Sequence[Calibration], profile: str, sources: list[dict[str, Any]]) -> str:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    devices = sorted({f"{s['device']}{' (emulated)' if s['emulated'] else ''}" for s in sources})
    commits = sorted({str(s["commit"]) for s in sources})
    table = [line(HEADER), line(["---"] * len(HEADER)), *(line(r.cells()) for r in rows)]
    return "\n".join([
        f"# Calibration: {profile}", "",
        f"Generated by `python -m perf.judge.calibrate` on {now_iso()} from {len(sources)} records "
        f"(devices: {', '.join(devices)}; commits: {', '.join(commits)}); the records are listed in "
        "calibration.json. A false alarm is a check that fired on an unchanged stack; the smallest defect caught "
        "was caught in every run (or pair of runs).", "", *table, "",
    ])


COMPLETE_EXITS = (0, 1)
"""pytest exits of a run whose records count: all passed, or some tests failed (a failing check is data). An
interrupted (2), broken (3) or refused (4) run, or one that collected nothing (5), is not an A/A run."""


def run_suite(profile: str, runs: int, work: Path, pytest_args: Sequence[str]) -> list[Path]:
    """``runs`` A/A repeats of the perf suite on this machine, each into its own results folder. ``SuiteError`` at
    the first run that did not complete, so no table is written from part of the runs."""
    folders = []
    for i in range(runs):
        folder = work / f"run{i + 1}"
        command = [sys.executable, "-m", "pytest", "tests/perf", "-m", profile, "--profile", profile,
                   "--results-dir", str(folder), "-p", "no:cacheprovider", *pytest_args]
        print(f"calibration run {i + 1}/{runs}: {' '.join(command)}", flush=True)
        status = subprocess.run(command, check=False).returncode
        if status not in COMPLETE_EXITS:
            raise SuiteError(f"calibration run {i + 1}/{runs} ended with pytest exit {status}, not a complete run")
        folders.append(folder)
    return folders


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m perf.judge.calibrate",
        description="A/A repeats of the perf suite and every check's false alarms and smallest caught defect, as "
        "one table per profile. Arguments after -- go to each pytest run (e.g. -- --recipes baseline,optimized).",
    )
    parser.add_argument("--profile", required=True, help="hardware profile (cpu, h100, rtx4090, ...)")
    parser.add_argument("--runs", type=int, default=0, help="A/A runs of the suite to make here (default 0)")
    parser.add_argument("--from", dest="sources", type=Path, action="append", default=[], metavar="DIR",
                        help="results root of an earlier run (e.g. from another fresh machine); repeatable")
    parser.add_argument("--baselines-dir", type=Path, default=Path("baselines"),
                        help="stored baselines root; its records count as one run (default: baselines)")
    parser.add_argument("--work", type=Path, default=Path(".results/calibration"), help="folder for the A/A runs")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for calibration.md/.json (default: BASELINES_DIR/<profile>/calibration)")
    args, pytest_args = parser.parse_known_args(argv)
    pytest_args = [a for a in pytest_args if a != "--"]
    if args.runs < 0:
        parser.error("--runs must be 0 or more")
    problems = [folder_problem(folder / args.profile, name) for folder, name in (
        (args.baselines_dir, "--baselines-dir"), *((source, "--from") for source in args.sources))]
    if any(problems):  # a folder that holds nothing would shrink the table it overwrites
        print(f"error: {next(p for p in problems if p)}; nothing written", file=sys.stderr)
        return 2
    try:
        folders = [args.baselines_dir, *args.sources, *run_suite(args.profile, args.runs, args.work, pytest_args)]
    except (SuiteError, KeyboardInterrupt) as exc:
        print(f"error: {exc or 'interrupted during the A/A runs'}; nothing written", file=sys.stderr)
        return 2
    runs, sources = collect(folders, args.profile)
    if not runs:
        print(f"error: no {args.profile} records in {', '.join(map(str, folders))}", file=sys.stderr)
        return 2
    rows = calibrate(runs)
    out = args.out or args.baselines_dir / args.profile / "calibration"
    atomic_write_bytes(out / "calibration.md", markdown(rows, args.profile, sources).encode())
    atomic_write_bytes(out / "calibration.json", (json.dumps(
        {"profile": args.profile, "date": now_iso(), "rows": [asdict(r) for r in rows], "records": sources},
        indent=1) + "\n").encode())
    print(markdown(rows, args.profile, sources))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
