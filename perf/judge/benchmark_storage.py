"""pytest-benchmark's storage as the suite's stored baselines: ``baselines/<profile>/benchmarks/``.

``--update-baselines`` saves the run's timings there in pytest-benchmark's own format and naming
(``<machine id>/NNNN_baseline.json``), each file the union of every stored one and this run (newer rows win), so
the newest file always holds the latest timing of every recipe. A bare ``--benchmark-compare`` is pointed at
that newest file, whatever Python or machine id saved it: a fresh clone compares against what the repository ships.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from perf.judge.baseline_files import atomic_write_bytes

SAVE_NAME = "baseline"  # pytest-benchmark's --benchmark-save name for the stored baselines: NNNN_baseline.json


def benchmarks_folder(baselines_dir: Path, profile: str) -> Path:
    return Path(baselines_dir) / profile / "benchmarks"


def stored_baselines(folder: Path) -> list[Path]:
    """Every ``NNNN_baseline.json`` under any machine id folder of ``folder``, oldest first."""
    return sorted(Path(folder).glob(f"*/[0-9][0-9][0-9][0-9]_{SAVE_NAME}.json"), key=lambda p: p.name)


def read_stored(folder: Path) -> tuple[list[dict[str, Any]], list[Path]]:
    """The stored files' contents, oldest first, and the files that cannot be read (cut short by a killed save
    of an older version, or by hand): those are named and left out, never a traceback."""
    contents, unreadable = [], []
    for path in stored_baselines(folder):
        try:
            contents.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            unreadable.append(path)
    return contents, unreadable


def latest_baseline(folder: Path) -> Path | None:
    """The newest stored file that can be read."""
    _, unreadable = read_stored(folder)
    files = [path for path in stored_baselines(folder) if path not in unreadable]
    return files[-1] if files else None


def save_atomically(storage) -> None:
    """Make pytest-benchmark's ``FileStorage.save`` write its file as the records are written (temporary file,
    fsync, rename): its own plain write, killed part-way, leaves a truncated ``NNNN_baseline.json`` that the next
    ``--update-baselines`` and ``--benchmark-compare`` would trip on. Other storages are left as they are."""
    from pytest_benchmark.storage.file import FileStorage
    from pytest_benchmark.utils import safe_dumps

    if not isinstance(storage, FileStorage):
        return

    def save(output_json: dict[str, Any], save: str) -> None:
        path = storage.get(f"{storage._next_num}_{save}.json")
        atomic_write_bytes(path, safe_dumps(output_json, ensure_ascii=True, indent=4).encode())
        storage.logger.info(f"Saved benchmark data in: {path}")

    storage.save = save


def merged_with_stored(output_json: dict[str, Any], stored: list[dict[str, Any]]) -> dict[str, Any]:
    """``output_json`` with each recipe of the ``stored`` files (oldest first) that this run did not time, at its
    newest stored timing."""
    timed = {bench["fullname"] for bench in output_json["benchmarks"]}
    kept: dict[str, dict] = {}
    for previous in stored:
        kept.update((b["fullname"], b) for b in previous.get("benchmarks", []) if b["fullname"] not in timed)
    return {**output_json, "benchmarks": [*output_json["benchmarks"], *kept.values()]}
