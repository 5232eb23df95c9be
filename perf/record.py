"""The one record a recipe's run produces; pytest, baselines, the verdict and the report all read it."""

from __future__ import annotations

import dataclasses
import statistics
import sys
from typing import Any

from perf.baselines import SCHEMA_VERSION, git_commit, library_versions, now_iso
from perf.builder import BuiltPipeline
from perf.scenario import ScenarioResult


def latency_summary(samples: list[float]) -> dict[str, Any]:
    return {
        "samples_s": [round(s, 6) for s in samples],
        "rounds": len(samples),
        "median_s": statistics.median(samples) if samples else None,
        "mean_s": statistics.fmean(samples) if samples else None,
        "min_s": min(samples) if samples else None,
    }


def make_record(built: BuiltPipeline, scenario: ScenarioResult) -> dict[str, Any]:
    """Everything known about a recipe's run once its scenario has run; tests add latency and checks."""
    active = built.active
    return {
        "schema": SCHEMA_VERSION,
        "profile": active.name,
        "emulated": active.emulated,
        "device": active.device.name,
        "memory_budget_gib": active.profile.memory_budget_gib,
        "model_source": built.source.label,
        "recipe": dataclasses.asdict(built.recipe),
        "attention": dataclasses.asdict(built.attention),
        "applied": built.facts,
        "settings": built.settings.to_dict(),
        "lora_pool": [
            {"name": a.name, "rank": a.rank, "modules": len(a.modules), "synthetic": a.synthetic}
            for a in built.pool.adapters
        ],
        "target_rank": built.target_rank if built.recipe.hotswap else None,
        "build_seconds": built.build_seconds,
        "compile": {
            "scope": built.recipe.compile,
            "mode": built.recipe.compile_mode or "default",
            "warmup_seconds": scenario.warmup_seconds,
            "warmup_graphs": scenario.warmup_graphs,
        },
        "recompiles_after_warmup": scenario.recompiles_after_warmup,
        "swaps": [dataclasses.asdict(step) for step in scenario.steps],
        "peak_memory": scenario.peak.to_dict() if scenario.peak else None,
        "latency": latency_summary([]),
        "checks": {},
        "versions": library_versions(),
        "python": sys.version.split()[0],
        "date": now_iso(),
        "commit": git_commit(),
        "command": " ".join(sys.argv),
    }
