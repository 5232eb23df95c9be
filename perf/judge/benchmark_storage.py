"""pytest-benchmark's storage as the suite's stored baselines: ``baselines/<profile>/benchmarks/``.

``--update-baselines`` saves the run's timings there in pytest-benchmark's own format and naming
(``<machine id>/NNNN_baseline.json``), each file the union of every stored one and this run (newer rows win), so
the newest file always holds the latest timing of every recipe. A bare ``--benchmark-compare`` is pointed at
that newest file, whatever Python or machine id saved it: a fresh clone compares against what the repository ships.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SAVE_NAME = "baseline"  # pytest-benchmark's --benchmark-save name for the stored baselines: NNNN_baseline.json


def benchmarks_folder(baselines_dir: Path, profile: str) -> Path:
    return Path(baselines_dir) / profile / "benchmarks"


def stored_baselines(folder: Path) -> list[Path]:
    """Every ``NNNN_baseline.json`` under any machine id folder of ``folder``, oldest first."""
    return sorted(Path(folder).glob(f"*/[0-9][0-9][0-9][0-9]_{SAVE_NAME}.json"), key=lambda p: p.name)


def latest_baseline(folder: Path) -> Path | None:
    files = stored_baselines(folder)
    return files[-1] if files else None


def merged_with_stored(output_json: dict[str, Any], stored: list[dict[str, Any]]) -> dict[str, Any]:
    """``output_json`` with each recipe of the ``stored`` files (oldest first) that this run did not time, at its
    newest stored timing."""
    timed = {bench["fullname"] for bench in output_json["benchmarks"]}
    kept: dict[str, dict] = {}
    for previous in stored:
        kept.update((b["fullname"], b) for b in previous.get("benchmarks", []) if b["fullname"] not in timed)
    return {**output_json, "benchmarks": [*output_json["benchmarks"], *kept.values()]}
