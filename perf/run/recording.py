"""The one record a recipe's run produces; pytest, baselines, the verdict and the report all read it."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import statistics
import sys
from pathlib import Path
from typing import Any

from perf.build.builder import BuiltPipeline
from perf.judge.baseline_files import COMPLETED, SCHEMA_VERSION, git_commit, library_versions, now_iso
from perf.run.measure import PeakMemory
from perf.run.scenario import ScenarioResult
from perf.spec.loras import LoraPool
from perf.spec.recipes import Recipe
from perf.spec.run_spec import RunSpec
from perf.workers import SESSION_ENV


def latency_summary(samples: list[float]) -> dict[str, Any]:
    return {
        "samples_s": [round(s, 6) for s in samples],
        "rounds": len(samples),
        "median_s": statistics.median(samples) if samples else None,
        "mean_s": statistics.fmean(samples) if samples else None,
        "min_s": min(samples) if samples else None,
    }


HASH_CHUNK = 1 << 20  # 1 MiB reads: a real LoRA is hundreds of MB and is never held in memory whole


@functools.cache
def _sha256(path: Path, mtime_ns: int, size: int) -> str:  # mtime and size key the cache: a rewritten file is new
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """The file's sha256, read once per process for each version of the file: every record of a session names
    the same pool, and hashing hundreds of MB per recipe would cost seconds each time."""
    resolved = Path(path).resolve()
    stat = resolved.stat()
    return _sha256(resolved, stat.st_mtime_ns, stat.st_size)


def pool_entries(pool: LoraPool) -> list[dict[str, Any]]:
    """Each adapter as a record names it: what it is (name, rank, modules, synthetic) and which file (name and
    content hash), so a run with another pool is never judged against this one
    (``perf.judge.baseline_files.comparable``)."""
    return [
        {"name": a.name, "rank": a.rank, "modules": len(a.modules), "synthetic": a.synthetic,
         "file": a.path.name, "sha256": file_sha256(a.path)}
        for a in pool.adapters
    ]


def identity(recipe: Recipe, spec: RunSpec) -> dict[str, Any]:
    """What a record is of: recipe, profile, device, model source, settings, pool, software, source commit."""
    active = spec.active
    return {
        "schema": SCHEMA_VERSION,
        "profile": active.name,
        "emulated": active.emulated,
        "device": active.device.name,
        "memory_budget_gib": active.profile.memory_budget_gib,
        "model_source": spec.source.label,
        "recipe": dataclasses.asdict(recipe),
        "settings": spec.settings.to_dict(),
        "lora_pool": pool_entries(spec.pool),
        "lora_findings": [finding.describe() for finding in spec.pool.findings],  # what diffusers could not load
        "versions": library_versions(),
        "python": sys.version.split()[0],
        "date": now_iso(),
        "commit": git_commit(),
        "command": " ".join(sys.argv),
        "session": os.environ.get(SESSION_ENV),
        "worker": os.environ.get("PYTEST_XDIST_WORKER"),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }


def failure_record(recipe: Recipe, spec: RunSpec, outcome: str, error: str, peak: PeakMemory) -> dict[str, Any]:
    """The record of a recipe that did not complete (out of memory, over its compile budget): kept like any
    other, so the failure is data, not a lost row."""
    return {
        **identity(recipe, spec),
        "outcome": outcome,
        "error": error,
        "peak_memory": peak.to_dict(),
        "latency": latency_summary([]),
        "checks": {},
    }


def make_record(built: BuiltPipeline, scenario: ScenarioResult) -> dict[str, Any]:
    """Everything known about a recipe's run once its scenario has run; tests add latency and checks."""
    return {
        **identity(built.recipe, built.spec),
        "outcome": COMPLETED,
        "attention": dataclasses.asdict(built.attention),
        "applied": built.facts,
        "target_rank": built.spec.target_rank if built.recipe.hotswap else None,
        "build_seconds": built.build_seconds,
        "compile": {
            "scope": built.recipe.compile,
            "mode": built.recipe.compile_mode or "default",
            "warmup_seconds": scenario.warmup_seconds,
            "warmup_graphs": scenario.warmup_graphs,
            "warmup_cache": scenario.warmup_cache,
            "cudagraphs": {
                "recorded_in_warmup": scenario.warmup_cudagraphs,
                "recorded_after_warmup": scenario.cudagraphs_recorded_after_warmup,
                "skipped": scenario.cudagraphs_skipped,
            },
        },
        "recompiles_after_warmup": scenario.recompiles_after_warmup,
        "swaps": [dataclasses.asdict(step) for step in scenario.steps],
        "peak_memory": scenario.peak.to_dict() if scenario.peak else None,
        "latency": latency_summary([]),
        "checks": {},
    }
