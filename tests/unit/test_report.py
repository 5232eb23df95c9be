"""The report, specified: one table row per recipe with the facts a reader needs, plots beside it, the
verdicts when given, and the same tables on the GitHub Actions job summary when that is set."""

from __future__ import annotations

from pathlib import Path

import pytest
from fake_records import example_record

from perf.judge.baseline_files import write_record
from perf.judge.compare import compare_records
from perf.judge.record import AttentionChoice, RunRecord
from perf.report.report import main, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def record(recipe: str, median: float, date: str = "2025-06-01T00:00:00+00:00", **changes) -> RunRecord:
    """A run record whose recipe is the table's, as ``perf.run.recording`` writes it (seed figures included)."""
    samples = [median * f for f in (0.998, 1.0, 1.003)]
    return example_record(recipe, samples, date=date, attention=AttentionChoice("_flash_3", "FlashAttention-3"),
                          **changes)


@pytest.fixture
def run() -> dict[str, RunRecord]:
    return {"baseline": record("baseline", 10.0), "optimized": record("optimized", 4.0, emulated=True)}


def table_row(report: str, recipe: str) -> list[str]:
    """The recipe's row of the run table (the first table; the seed table follows it)."""
    line = next(line for line in report.splitlines() if line.startswith(f"| {recipe} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == PNG_MAGIC


def test_report_has_a_row_per_recipe_with_speedup_memory_and_kernel(tmp_path, run, monkeypatch):
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    report = write_report(run, tmp_path).read_text()
    row = table_row(report, "optimized")
    assert row[:6] == ["optimized", "4.000", "2.50x", "30.0", "32.00 / 80 GiB (40%)", "0"]
    assert row[6:] == ["synthetic-full", "NVIDIA H100 80GB HBM3", "yes", "FlashAttention-3"]
    assert table_row(report, "baseline")[2] == "1.00x"
    assert "## Verdict" not in report


def test_plots_are_written_and_linked(tmp_path, run):
    report = write_report(run, tmp_path).read_text()
    for name in ("latency", "speedup", "memory"):
        assert is_png(tmp_path / f"{name}.png")
        assert f"({name}.png)" in report
    assert not (tmp_path / "history.png").exists()


def test_without_a_baseline_recipe_there_is_no_speedup(tmp_path, run):
    report = write_report({"optimized": run["optimized"]}, tmp_path).read_text()
    assert table_row(report, "optimized")[2] == "-"
    assert not (tmp_path / "speedup.png").exists()


def test_history_is_plotted_when_given(tmp_path, run):
    history = [record("optimized", 4.4, date="2025-05-01T00:00:00+00:00"),
               record("baseline", 10.1, date="2025-05-01T00:00:00+00:00")]
    report = write_report(run, tmp_path, history=history).read_text()
    assert is_png(tmp_path / "history.png")
    assert "(history.png)" in report


def test_verdicts_are_tabled_and_a_regression_is_called_out(tmp_path, run):
    stored = {**run, "optimized": record("optimized", 3.0, emulated=True)}
    report = write_report(run, tmp_path, verdicts=compare_records(stored, run)).read_text()
    assert "**Regression found.**" in report
    assert any("optimized" in line and "latency_median_s" in line and "regressed" in line
               for line in report.splitlines())


def test_tables_go_to_the_github_step_summary_when_set(tmp_path, run, monkeypatch):
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    write_report(run, tmp_path / "out")
    text = summary.read_text()
    assert text.startswith("earlier step\n")
    assert table_row(text, "optimized")[0] == "optimized"
    assert ".png)" not in text  # local images cannot show on the summary page


def test_cli_writes_the_report_with_verdicts(tmp_path, run, capsys):
    for rec in run.values():
        write_record(tmp_path / "results", rec)
        write_record(tmp_path / "baselines", rec)
    assert main([str(tmp_path / "results" / "h100"), "--out", str(tmp_path / "out"),
                 "--baselines", str(tmp_path / "baselines")]) == 0
    report = (tmp_path / "out" / "report.md").read_text()
    assert "No regression." in report
    assert capsys.readouterr().out.strip() == str(tmp_path / "out" / "report.md")


def test_cli_reports_a_corrupt_baseline_and_still_writes_the_others_verdicts(tmp_path, run, capsys):
    for rec in run.values():
        write_record(tmp_path / "results", rec)
        write_record(tmp_path / "baselines", rec)
    (tmp_path / "baselines" / "h100" / "optimized.json").write_text('{"schema": 1, "profile": "h1')
    assert main([str(tmp_path / "results" / "h100"), "--out", str(tmp_path / "out"),
                 "--baselines", str(tmp_path / "baselines")]) == 2
    report = (tmp_path / "out" / "report.md").read_text()
    assert table_row(report, "optimized")[0] == "optimized"
    assert any(line.startswith("| optimized | record | error |") and "optimized.json is corrupt" in line
               for line in report.splitlines())
    assert any(line.startswith("| baseline | latency_median_s | ok |") for line in report.splitlines())
    assert "optimized.json is corrupt" in capsys.readouterr().err


def test_seed_table_sets_our_speedups_beside_the_seeds(run, tmp_path):
    text = write_report(run, tmp_path).read_text()
    seed_table = text.split("## Beside the seed's table")[1]
    row = table_row(seed_table, "optimized")
    assert row[2] == "2.50x"  # ours: 10.0 / 4.0
    assert row[3] == "3.546" and row[4] == "2.23x"  # the seed's published H100 figures
