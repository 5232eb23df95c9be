"""One recipe's run on one profile, from build to record: what every perf test of that recipe reads.

The expensive part (build, compile, swaps) runs once per recipe; tests assert on the result. A fresh eager
pipeline with the second adapter is generated *before* the recipe's pipeline is built, so two full-size
pipelines are never in GPU memory at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from perf.baselines import write_record
from perf.builder import BuiltPipeline, build_pipeline
from perf.errors import SuiteError
from perf.loras import LoraPool
from perf.measure import free_memory, in_use_gib, read_peak
from perf.models import ModelSource
from perf.profiles import ActiveProfile
from perf.recipes import Recipe
from perf.record import latency_summary, make_record
from perf.scenario import ScenarioResult, run_scenario
from perf.settings import GenerationSettings


class CaseFailed(SuiteError):
    """A recipe's run failed in a way its tests should report (e.g. out of memory), with the figures."""


@dataclass
class Case:
    built: BuiltPipeline
    scenario: ScenarioResult
    record: dict
    fresh_images: dict[str, np.ndarray] = field(default_factory=dict)  # adapter -> fresh eager pipeline image

    @property
    def recipe(self) -> Recipe:
        return self.built.recipe

    def add_latency(self, samples: list[float]) -> None:
        self.record["latency"] = latency_summary(samples)

    def add_check(self, name: str, passed: bool, **figures) -> None:
        self.record["checks"][name] = {"passed": passed, **figures}

    def save(self, results_dir: Path, baselines_dir: Path | None, overwrite_foreign: bool) -> None:
        """The record goes to the run's results always, and to the baselines when asked. Each adapter's image
        is its last one (the first adapter's warm-up image when the scenario never swapped back to it)."""
        warmup = self.scenario.warmup_image
        images = {self.built.first.name: warmup, **self.scenario.images, "warmup": warmup}
        write_record(results_dir, self.record, images, overwrite_foreign=True)
        if baselines_dir is not None:
            write_record(baselines_dir, self.record, images, overwrite_foreign=overwrite_foreign)

    def release(self) -> None:
        """Drop the pipeline and compiled graphs so the next recipe starts from the same memory level."""
        self.built = None
        torch.compiler.reset()
        free_memory("cuda" if torch.cuda.is_available() else "cpu")


def _fresh_image(source, recipe, active, pool, settings, cache, adapter) -> np.ndarray:
    reference = build_pipeline(source, recipe.eager_reference(), active, pool, settings, cache, first=adapter)
    image = reference.generate()
    del reference
    free_memory(active.device.type)
    return image


def open_case(
    source: ModelSource,
    recipe: Recipe,
    active: ActiveProfile,
    pool: LoraPool,
    settings: GenerationSettings,
    cache: Path,
    target_rank: int | None = None,
    progress: Callable[[str], None] = print,
) -> Case:
    """Build ``recipe``, run the scenario and return its case; an out-of-memory becomes ``CaseFailed`` with
    the peak figures, after the memory is freed, so the next recipe still runs."""
    device = active.device.type
    start_gib = in_use_gib(device)
    built = None
    try:
        fresh = {}
        if recipe.hotswap:
            adapter = pool.adapters[1]
            progress(f"[{recipe.name}] fresh eager pipeline with {adapter.name}, to check swaps against")
            fresh[adapter.name] = _fresh_image(source, recipe, active, pool, settings, cache, adapter)
        progress(f"[{recipe.name}] building ({active.describe()}, {source.label}; LoRAs {pool.describe()})")
        built = build_pipeline(source, recipe, active, pool, settings, cache, target_rank=target_rank)
        scenario = run_scenario(built, progress)
        record = make_record(built, scenario)
        record["memory_at_start_gib"] = start_gib
        return Case(built, scenario, record, fresh)
    except torch.OutOfMemoryError as exc:
        peak = read_peak(device)
        allocated = "n/a" if peak.allocated_gib is None else f"{peak.allocated_gib:.2f} GiB"  # None off CUDA
        message = (
            f"{recipe.name}: out of memory on {active.describe()} (peak allocated {allocated}, "
            f"reserved {peak.reserved_gib:.2f} GiB, budget {active.profile.memory_budget_gib} GiB): "
            f"{str(exc).splitlines()[0]}"
        )
    built = None  # drop the pipeline before freeing
    torch.compiler.reset()
    free_memory(device)
    raise CaseFailed(message)
