"""pytest-benchmark's storage as the suite's stored baselines: ``baselines/<profile>/benchmarks/``.

``--update-baselines`` saves the run's timings there in pytest-benchmark's own format and naming
(``<machine id>/NNNN_baseline.json``), each file the union of every stored one and this run (newer rows win), so
the newest file always holds the latest timing of every recipe. A bare ``--benchmark-compare`` is pointed at
that newest file, whatever Python or machine id saved it: a fresh clone compares against what the repository ships.

A recipe's record and its row in these files are written one after the other (no two files can be renamed as one
step), so a run killed between the two leaves them out of step. ``torn_pairs`` finds such a pair from the files
alone, by their content (the record's latency is pytest-benchmark's statistics of the same rounds), so it also
reads pairs written by older versions, which carry no marker.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from perf.judge.baseline_files import atomic_write_bytes, record_path
from perf.judge.record import Latency, RunRecord

SAVE_NAME = "baseline"  # pytest-benchmark's --benchmark-save name for the stored baselines: NNNN_baseline.json


def benchmarks_folder(baselines_dir: Path, profile: str) -> Path:
    return Path(baselines_dir) / profile / "benchmarks"


def stored_baselines(folder: Path) -> list[Path]:
    """Every ``NNNN_baseline.json`` under any machine id folder of ``folder``, oldest first."""
    return sorted(Path(folder).glob(f"*/[0-9][0-9][0-9][0-9]_{SAVE_NAME}.json"), key=lambda p: p.name)


def read_stored(folder: Path) -> tuple[dict[Path, dict[str, Any]], list[Path]]:
    """The stored files' contents by path, oldest first, and the files that cannot be read (cut short by a killed
    save of an older version, or by hand): those are named and left out, never a traceback."""
    contents, unreadable = {}, []
    for path in stored_baselines(folder):
        try:
            contents[path] = json.loads(path.read_text())
        except (OSError, ValueError):
            unreadable.append(path)
    return contents, unreadable


def latest_baseline(folder: Path) -> Path | None:
    """The newest stored file that can be read."""
    contents, _ = read_stored(folder)
    return next(reversed(contents), None)


def save_atomically(storage) -> None:
    """Make pytest-benchmark's ``FileStorage.save`` write its file as the records are written (temporary file,
    fsync, rename): its own plain write, killed part-way, leaves a truncated ``NNNN_baseline.json`` that the next
    ``--update-baselines`` and ``--benchmark-compare`` would trip on. Every save of the session goes to the one
    file named at its first save (the suite saves after each recipe's record, ``PerfSession.save_timings``, and
    pytest-benchmark once more at the end), each a whole file replacing the last. Other storages are left as
    they are."""
    from pytest_benchmark.storage.file import FileStorage
    from pytest_benchmark.utils import safe_dumps

    if not isinstance(storage, FileStorage):
        return
    named: dict[str, Path] = {}  # --benchmark-save name -> this session's file

    def save(output_json: dict[str, Any], save: str) -> None:
        if save not in named:
            named[save] = storage.get(f"{storage._next_num}_{save}.json")
        path = named[save]
        atomic_write_bytes(path, safe_dumps(output_json, ensure_ascii=True, indent=4).encode())
        storage.logger.info(f"Saved benchmark data in: {path}")

    storage.save = save


def merged_with_stored(output_json: dict[str, Any], stored: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """``output_json`` with each recipe of the ``stored`` files (oldest first) that this run did not time, at its
    newest stored timing."""
    timed = {bench["fullname"] for bench in output_json["benchmarks"]}
    kept: dict[str, dict] = {}
    for previous in stored:
        kept.update((b["fullname"], b) for b in previous.get("benchmarks", []) if b["fullname"] not in timed)
    return {**output_json, "benchmarks": [*output_json["benchmarks"], *kept.values()]}


LATENCY_TEST = "test_generation_latency"
"""The suite's test timed by pytest-benchmark (``tests/perf/test_hotswap.py``): its row of a recipe holds the
statistics of the rounds whose samples are that recipe's ``latency`` in its record."""


@dataclass(frozen=True)
class TornPair:
    """A stored record and its profile's stored timings that disagree on the recipe's latency: they were written
    by different runs (one killed between the record and pytest-benchmark's save, or timings saved without their
    records). The record is still a whole, valid measurement, so the verdict keeps judging it, with this beside
    it as a row naming the fix (not a failure): ``--benchmark-compare`` would compare against timings the record
    does not hold."""

    recipe: str
    message: str  # one line: both files, what each holds, the fix


def latency_rows(stored: Mapping[Path, dict[str, Any]], profile: str) -> dict[str, tuple[Path, dict[str, Any]]]:
    """Each recipe's newest ``LATENCY_TEST`` statistics in the ``stored`` files (oldest first), with the file that
    holds them: what the newest file holds, or for files of versions that kept only the recipes they timed, the
    last file that timed the recipe."""
    rows = {}
    for path, content in stored.items():
        for bench in content.get("benchmarks", []) if isinstance(content, dict) else []:
            info = bench.get("extra_info") or {}
            if (str(bench.get("name", "")).split("[")[0] == LATENCY_TEST and info.get("profile") == profile
                    and isinstance(bench.get("stats"), dict)):
                rows[info.get("recipe")] = (path, bench["stats"])
    return rows


def same_timing(latency: Latency, stats: Mapping[str, Any]) -> bool:
    """Whether pytest-benchmark's ``stats`` are the statistics of ``latency``'s rounds (both compute the median
    and minimum of the same raw seconds; only the last bit may differ)."""
    try:
        return (stats["rounds"] == latency.rounds and math.isclose(stats["median"], latency.median_s, rel_tol=1e-9)
                and math.isclose(stats["min"], latency.min_s, rel_tol=1e-9))
    except (KeyError, TypeError):
        return False


def _timing(rounds: Any, median: Any) -> str:
    return f"median {median:.6g} s over {rounds} rounds" if isinstance(median, float) else "no median"


def torn_pairs(baselines_dir: Path, profile: str, records: Mapping[str, RunRecord]) -> list[TornPair]:
    """The ``records`` (stored under ``baselines_dir/<profile>``, by recipe) whose latency, timed by
    pytest-benchmark, is not what the profile's stored timings hold for the recipe (other statistics, or no row),
    each as one line naming both files and the fix. A folder without stored timings holds records only and has
    nothing to be out of step with (a first recording cut off before its save is that: ``--benchmark-compare``
    then says there is nothing to compare against); a record timed by the suite's own timer (pytest-benchmark
    off, under pytest-xdist) or not timed at all never had a row."""
    folder = benchmarks_folder(baselines_dir, profile)
    stored, unreadable = read_stored(folder)
    if not stored and not unreadable:
        return []
    rows = latency_rows(stored, profile)
    cut_short = f" ({', '.join(map(str, unreadable))} cannot be read)" if unreadable else ""
    torn = []
    for recipe, record in sorted(records.items()):
        latency = record.latency
        if latency is None or latency.timer != "pytest-benchmark":
            continue
        timings, stats = rows.get(recipe, (None, None))
        if stats is not None and same_timing(latency, stats):
            continue
        held = (f"{timings} holds {_timing(stats.get('rounds'), stats.get('median'))}" if stats is not None
                else f"no stored timing of it under {folder}") + cut_short
        emulated = f" --profile {profile}" if record.emulated else ""
        torn.append(TornPair(recipe, (
            f"{record_path(baselines_dir, profile, recipe)} ({_timing(latency.rounds, latency.median_s)}) is out of "
            f"step with pytest-benchmark's stored timings: {held}; they were written by different runs (one stopped "
            f"between the two writes, or one copied without the other); re-record it: pytest tests/perf "
            f"-m {profile}{emulated} --recipes {recipe} --update-baselines")))
    return torn
