"""A run's records made readable: ``report.md`` (the run's table, the verdicts) and PNG plots beside it.

Plots are drawn on matplotlib ``Figure`` objects saved through the Agg canvas, never through pyplot, so the
importing process keeps its backend and holds no open figures. With ``GITHUB_STEP_SUMMARY`` set (GitHub
Actions) the tables are appended to the job's summary page as well; the plots stay in the uploaded folder,
since a summary cannot show local images.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from perf.judge.baseline_files import atomic_write_bytes, folder_problem, read_records
from perf.judge.compare import (
    HEADER,
    Verdict,
    any_regression,
    compare_folders,
    peak_memory_gib,
    verdict_rows,
    warmup_seconds,
)
from perf.judge.record import RunRecord
from perf.judge.serving_record import BatchFit, Request, ServingResult

BASELINE_RECIPES = ("baseline", "rtx4090_offload")  # each seed table's unoptimized row: speedups are relative to it
RUN_HEADER = ("recipe", "latency median (s)", "speedup vs baseline row", "warm-up (s)",
              "peak memory / budget", "recompiles", "model source", "device", "emulated", "attention kernel")

Records = dict[str, RunRecord]


def baseline_recipe(records: Records) -> str | None:
    """The run's unoptimized row (``baseline`` on the H100 table, ``rtx4090_offload`` on the consumer one)."""
    return next((name for name in BASELINE_RECIPES if name in records), None)


def speedup(records: Records, recipe: str) -> float | None:
    """Baseline median over this recipe's median (2.0: twice as fast); None without a baseline row."""
    reference = baseline_recipe(records)
    base = records[reference].latency.median if reference else None
    mine = records[recipe].latency.median
    return base / mine if base and mine else None


def _value(value: float | None, spec: str = ".3f", unit: str = "") -> str:
    return "-" if value is None else format(value, spec) + unit


def memory_cell(record: RunRecord) -> str:
    peak, budget = record.peak_memory, record.memory_budget_gib
    if peak is None:
        return "-"
    if budget:
        return f"{peak.reserved_gib:.2f} / {budget:g} GiB ({peak.reserved_gib / budget:.0%})"
    return f"{peak.reserved_gib:.2f} GiB ({peak.kind}, no budget)"


def _text(value: object) -> str:
    return "-" if value is None else str(value)


def kernel(record: RunRecord) -> str:
    return record.attention.kernel if record.attention else "-"


def run_rows(records: Records) -> list[tuple[str, ...]]:
    return [
        (recipe, _value(record.latency.median) if record.completed else record.outcome.replace("_", " "),
         _value(speedup(records, recipe), ".2f", "x"), _value(warmup_seconds(record), ".1f"), memory_cell(record),
         _text(record.recompiles_after_warmup), record.model_source, record.device,
         "yes" if record.emulated else "no", kernel(record))
        for recipe, record in records.items()
    ]


SEED_HEADER = ("recipe", "ours (s)", "ours vs our baseline", "seed (s)", "seed vs seed baseline",
               "compile + warm-up (s)")


def seed_rows(records: Records) -> list[tuple[str, ...]]:
    """Our rows beside the seed's published figures. Absolute times are not comparable (other GPU clocks,
    real vs synthetic weights, another torch); each speedup is relative to its own baseline."""
    reference = baseline_recipe(records)
    seed_base = records[reference].recipe.seed_seconds if reference else None
    rows = []
    for recipe, record in records.items():
        seed = record.recipe.seed_seconds
        if seed is None:
            continue
        rows.append((
            recipe, _value(record.latency.median), _value(speedup(records, recipe), ".2f", "x"), f"{seed:.3f}",
            _value(seed_base / seed if seed_base else None, ".2f", "x"), _value(warmup_seconds(record), ".0f"),
        ))
    return rows


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header)), *map(line, rows)])


def _bar_figure(labels: list[str], values: list[float], xlabel: str, title: str) -> tuple[Figure, Any]:
    fig = Figure(figsize=(8, 1.2 + 0.45 * len(labels)), layout="constrained")
    ax = fig.add_subplot()
    ax.barh(labels, values, color="tab:blue", alpha=0.7)
    ax.invert_yaxis()  # first recipe on top, as in the table
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    return fig, ax


def plot_latency(records: Records, path: Path) -> None:
    """Medians as bars with every raw sample as a dot: the spread the verdict's interval comes from."""
    timed = {recipe: record for recipe, record in records.items() if record.latency.samples_s}
    fig, ax = _bar_figure(list(timed), [r.latency.median for r in timed.values()], "seconds per generation",
                          "Latency (median bar, raw samples as dots)")
    for row, record in enumerate(timed.values()):
        samples = record.latency.samples_s
        ax.plot(samples, [row] * len(samples), "k.", markersize=4)
    fig.savefig(path, dpi=100)


def plot_speedup(records: Records, path: Path) -> None:
    ratios = {recipe: speedup(records, recipe) for recipe in records}
    ratios = {recipe: value for recipe, value in ratios.items() if value}
    reference = baseline_recipe(records)
    fig, ax = _bar_figure(list(ratios), list(ratios.values()), f"speedup vs {reference} (x)",
                          f"Speedup over the {reference} recipe")
    ax.axvline(1.0, color="k", linewidth=1)
    fig.savefig(path, dpi=100)


def plot_memory(records: Records, path: Path) -> None:
    peaks = {recipe: peak_memory_gib(record) for recipe, record in records.items()}
    peaks = {recipe: value for recipe, value in peaks.items() if value is not None}
    fig, ax = _bar_figure(list(peaks), list(peaks.values()), "GiB", "Peak memory vs budget")
    for budget in sorted({r.memory_budget_gib for r in records.values() if r.memory_budget_gib}):
        ax.axvline(budget, color="tab:red", linestyle="--", label=f"budget {budget:g} GiB")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right")
    fig.savefig(path, dpi=100)


def plot_history(records: Records, history: list[RunRecord], path: Path) -> None:
    """Median latency of each recipe over the dates of the stored runs, this run last."""
    series: dict[str, list[tuple[datetime, float]]] = {}
    for record in [*history, *records.values()]:
        median = record.latency.median
        if median is not None:
            series.setdefault(record.name, []).append((datetime.fromisoformat(record.date), median))
    fig = Figure(figsize=(9, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for recipe, points in sorted(series.items()):
        dates, medians = zip(*sorted(points), strict=True)
        ax.plot(dates, medians, marker="o", label=recipe)
    ax.set_ylabel("median seconds per generation")
    ax.set_title("Latency across stored runs")
    ax.legend(fontsize="small")
    fig.autofmt_xdate()
    fig.savefig(path, dpi=100)


README_HEADER = ("recipe", "median (s)", "vs baseline row", "attention kernel", "peak reserved (GiB)", "recompiles",
                 "commit", "date")


def readme_table(records: Records) -> str:
    """The README's results table: one line a completed recipe, from the stored records alone."""
    rows = [
        (recipe, _value(record.latency.median), _value(speedup(records, recipe), ".2f", "x"),
         kernel(record).split(" (fastest")[0], _value(peak_memory_gib(record), ".1f"),
         _text(record.recompiles_after_warmup), _text(record.commit), record.date[:10])
        for recipe, record in records.items() if record.completed
    ]
    return markdown_table(README_HEADER, rows)


SERVING_HEADER = ("recipe", "scenario", "request", "first (s)", "graphs compiled first", "steady (s)",
                  "recompiles once warm", "images/min", "peak (GiB)", "swap check, worst", "record")


def newest_serving(records: Iterable[RunRecord]) -> dict[tuple[str, str], tuple[RunRecord, ServingResult]]:
    """Each recipe's serving scenarios, each from the newest record holding it: on a GPU a run records the
    scenarios it finished before its time limit, and a later run the others; keyed (recipe, scenario), recipes in
    name order, scenarios in the order the runs served them."""
    newest: dict[tuple[str, str], tuple[RunRecord, ServingResult]] = {}
    for record in sorted(records, key=lambda r: r.date):
        for name, result in record.serving.items():
            newest[(record.name, name)] = (record, result)
    return {key: newest[key] for key in sorted(newest, key=lambda key: key[0])}


def serving_table(records: Iterable[RunRecord], profile: str) -> str:
    """The README's serving table of ``profile``: one line a request kind of each serving scenario of each recipe
    (``newest_serving``: the newest record holding it, named in the last column), then the findings (what the
    libraries could not serve without compiling or failing), from the stored records alone; where they hold
    none, a line that says so and how to record them. Seconds are a generation's, or a switch's for the resident
    adapters' rows (a named adapter's row says what its first step took: the switch's compile happens there)."""
    rows, findings = [], []
    for (recipe, name), (record, result) in newest_serving(records).items():
        worst = result.worst_error
        check = "-" if worst is None else f"{worst:.4f} (tolerance {result.tolerance:.4f})"
        source = f"{record.date[:10]} {_text(record.commit)}"
        if result.failure:
            rows.append((recipe, name, f"failed: {result.failure[:80]}", *["-"] * 7, source))
        for i, request in enumerate(result.requests):
            rows.append((recipe, name, _label(result, i), f"{request.first_seconds:.3f}",
                         _graphs(request), f"{request.steady_seconds:.3f}",
                         str(request.steady_recompiles), _value(request.images_per_minute, ".1f"),
                         _value(request.peak_gib, ".1f"), check if i == 0 else "", source if i == 0 else ""))
        if result.finding:
            findings.append(f"- {recipe}: {result.finding}")
        fit = result.batches.largest_batch_that_fits if result.batches else None
        if fit is not None:
            findings.append(f"- {recipe}: batches: {_batch_fit(fit, result.batches.budget_gib)}")
    if not rows:
        return (f"No {profile} record holds the serving scenarios yet, so there are no figures to show: they come from "
                f"`pytest -m {profile} --update-baselines` on that GPU (without `--no-serving`), then this command.")
    return "\n".join([markdown_table(SERVING_HEADER, rows), *(["", *findings] if findings else [])])


def _batch_fit(fit: BatchFit, budget_gib: float) -> str:
    """The batch search on a consumer card's profile (made only where the profile has a memory budget): the largest
    batch within the budget and each peak tried."""
    peaks = ", ".join(f"{batch}: {peak if isinstance(peak, str) else f'{peak:.2f} GiB'}"
                      for batch, peak in fit.peaks_gib.items())
    largest = f"the largest batch within {budget_gib:g} GiB is {fit.batch}" if fit.batch else "no batch fits"
    return f"{largest} (peaks {peaks})"


def _label(result: ServingResult, i: int) -> str:
    """Request ``i``'s label; for a switch to a named adapter, with the first step after it (compiling included),
    which a switch's own seconds leave out."""
    label, named = result.requests[i].label, result.named
    if named is None or i >= len(named.switched) or named.switched[i] not in named.first_step_seconds:
        return label
    return f"{label}, first step {named.first_step_seconds[named.switched[i]]:.1f} s"


def _graphs(request: Request) -> str:
    """A first request's graphs, the compiled VAE decoder's named where it compiled any."""
    decoder = request.first_decoder_graphs
    return f"{request.first_recompiles} ({decoder} VAE)" if decoder else str(request.first_recompiles)


def replace_block(text: str, name: str, content: str) -> str:
    """``text`` with what lies between ``<!-- name:start -->`` and ``<!-- name:end -->`` replaced by ``content``."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if start not in text or end not in text:
        raise ValueError(f"no {start} ... {end} block")
    head, rest = text.split(start, 1)
    return f"{head}{start}\n{content}\n{end}{rest.split(end, 1)[1]}"


def record_sources(records: Records) -> list[tuple[str, ...]]:
    """Where each record came from: the run's date, commit, device and command."""
    return [(recipe, r.date, _text(r.commit), f"{r.device}{' (emulated)' if r.emulated else ''}", r.command[-120:])
            for recipe, r in records.items()]


def write_report(records: Records, out_dir: Path, verdicts: Sequence[Verdict] | None = None,
                 history: list[RunRecord] | None = None) -> Path:
    """Write ``report.md`` and its plots into ``out_dir``; returns the report's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    profiles = ", ".join(sorted({r.profile for r in records.values()}))
    sections = [f"# flux-lora-perf: {profiles}", markdown_table(RUN_HEADER, run_rows(records))]
    beside_seed = seed_rows(records)
    if beside_seed:
        sections += ["## Beside the seed's table", markdown_table(SEED_HEADER, beside_seed)]
    sections += ["## Records", markdown_table(("recipe", "date", "commit", "device", "command"),
                                              record_sources(records))]
    if verdicts is not None:
        status = "**Regression found.**" if any_regression(verdicts) else "No regression."
        sections += ["## Verdict against the baselines", status, markdown_table(HEADER, verdict_rows(verdicts))]
    plot_latency(records, out / "latency.png")
    plot_memory(records, out / "memory.png")
    plots = ["latency", "memory"]
    if baseline_recipe(records):
        plot_speedup(records, out / "speedup.png")
        plots.append("speedup")
    if history:
        plot_history(records, history, out / "history.png")
        plots.append("history")
    tables = "\n\n".join(sections) + "\n"
    images = "\n\n".join(f"![{name}]({name}.png)" for name in plots)
    path = out / "report.md"
    atomic_write_bytes(path, f"{tables}\n## Plots\n\n{images}\n".encode())
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a") as f:
            f.write(tables + "\n")
    return path


DEFAULT_OUT = Path(".results") / "report"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m perf.report",
        description="Write report.md and PNG plots for one run's records (and the job summary on GitHub "
        "Actions, when GITHUB_STEP_SUMMARY is set).",
    )
    parser.add_argument("records_dir", type=Path, metavar="RECORDS_DIR",
                        help="one profile's records of a run, e.g. .results/h100 (<recipe>.json files)")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help=f"folder for report.md and the plots (default: {DEFAULT_OUT}/<RECORDS_DIR's name>, "
                        "beside the run's results and never inside a baselines folder)")
    parser.add_argument("--baselines", type=Path, default=None, metavar="DIR",
                        help="baselines root (e.g. baselines): add the verdict table against "
                        "DIR/<profile>/, the profile being RECORDS_DIR's folder name")
    parser.add_argument("--readme", type=Path, default=None, metavar="FILE",
                        help="instead of a report, rewrite FILE's block <!-- results:<profile>:start/end --> with "
                        "the results table of RECORDS_DIR (e.g. baselines/h100 into README.md)")
    parser.add_argument("--serving-records", type=Path, action="append", default=[], metavar="DIR",
                        help="with --readme, repeatable: another folder of the profile's records (<recipe>.json) "
                        "whose serving scenarios the serving block shows beside RECORDS_DIR's, each recipe's "
                        "scenario from the newest record holding it (GPU runs record them in parts)")
    args = parser.parse_args(argv)
    inputs = [(args.records_dir, "RECORDS_DIR"), *([(args.baselines, "--baselines")] if args.baselines else []),
              *((folder, "--serving-records") for folder in args.serving_records)]
    problem = next(filter(None, (folder_problem(path, name) for path, name in inputs)), None)
    if args.readme and not args.readme.is_file():
        problem = problem or f"--readme {args.readme}: no such file"
    if args.serving_records and not args.readme:
        problem = problem or "--serving-records feeds the README's serving block: give --readme too"
    if problem:
        print(f"error: {problem}; nothing written", file=sys.stderr)
        return 2
    profile = args.records_dir.name
    verdicts = None
    if args.baselines:
        records, verdicts = compare_folders(args.baselines, args.records_dir.parent, profile)
        errors = [v.reason for v in verdicts if v.verdict == "error"]
    else:
        records, unreadable = read_records(args.records_dir.parent, profile)
        errors = [record.message for record in unreadable]
    serving = [*records.values()]
    for folder in args.serving_records:
        more, unreadable = read_records(folder.parent, folder.name)
        errors += [record.message for record in unreadable]
        mine = [record for record in more.values() if record.profile == profile]
        errors += [] if mine else [f"--serving-records {folder}: no {profile} record in it"]
        serving += mine
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    if not records:
        print(f"error: no records in {args.records_dir}", file=sys.stderr)
        return 2
    if args.readme:
        text = args.readme.read_text()
        tables = {f"results:{profile}": readme_table, f"serving:{profile}": lambda _: serving_table(serving, profile)}
        found = [name for name in tables if f"<!-- {name}:start -->" in text]
        if not found:
            print(f"error: {args.readme} has no <!-- results:{profile}:start --> or serving:{profile} block",
                  file=sys.stderr)
            return 2
        for name in found:
            text = replace_block(text, name, tables[name](records))
        atomic_write_bytes(args.readme, text.encode())
        print(f"{args.readme}: {', '.join(found)} rewritten from {args.records_dir}")
    else:
        print(write_report(records, args.out or DEFAULT_OUT / profile, verdicts))
    return 2 if errors else 0

