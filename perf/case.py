"""One recipe's run on one profile, from build to record: what every perf test of that recipe reads.

The expensive part (build, compile, swaps) runs once per recipe; tests assert on the result. A fresh eager
pipeline with the second adapter is generated *before* the recipe's pipeline is built, so two full-size
pipelines are never in GPU memory at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from perf import compile_settings
from perf.baselines import OUT_OF_MEMORY, OVER_COMPILE_BUDGET, write_record
from perf.builder import BuiltPipeline, build_pipeline
from perf.coldstart import ColdStart
from perf.errors import CompileBudgetExceeded, SuiteError
from perf.loras import LoraAdapter, LoraPool
from perf.measure import free_memory, in_use_gib, read_peak, reset_peak
from perf.models import ModelSource
from perf.profiles import ActiveProfile
from perf.recipes import Recipe
from perf.record import failure_record, latency_summary, make_record
from perf.scenario import ScenarioResult, run_scenario
from perf.settings import GenerationSettings


class CaseFailed(SuiteError):
    """A recipe's run failed in a way its tests should report (out of memory, over its compile budget), with
    the figures and the record to keep (its ``outcome`` says which)."""

    def __init__(self, message: str, record: dict):
        super().__init__(message)
        self.record = record


@dataclass
class Case:
    built: BuiltPipeline
    scenario: ScenarioResult
    record: dict
    fresh_images: dict[str, np.ndarray] = field(default_factory=dict)  # adapter -> fresh eager pipeline image
    cold_start: ColdStart | str | None = None  # measured cold/warm start, why it failed, or None: not measured
    settings_before: compile_settings.CompileSettings | None = None  # restored on release

    @property
    def recipe(self) -> Recipe:
        return self.built.recipe

    def add_latency(self, samples: list[float], timer: str) -> None:
        self.record["latency"] = {**latency_summary(samples), "timer": timer}

    def add_check(self, name: str, passed: bool, **figures) -> None:
        self.record["checks"][name] = {"passed": passed, **figures}

    def save(self, results_dir: Path, baselines_dir: Path | None, overwrite_foreign: bool) -> None:
        """Kept as ``keep_record`` keeps any record. Each adapter's image is its last one (the first adapter's
        warm-up image when the scenario never swapped back to it)."""
        warmup = self.scenario.warmup_image
        images = {self.built.first.name: warmup, **self.scenario.images, "warmup": warmup}
        keep_record(self.record, images, results_dir, baselines_dir, overwrite_foreign)

    def release(self) -> None:
        """Drop the pipeline and compiled graphs, and undo the process-wide compile settings its build changed,
        so the next recipe starts from the same memory level and the same settings."""
        self.built = None
        torch.compiler.reset()
        if self.settings_before is not None:
            compile_settings.restore(self.settings_before)
        free_memory("cuda" if torch.cuda.is_available() else "cpu")


def keep_record(record: dict, images: dict[str, np.ndarray], results_dir: Path, baselines_dir: Path | None,
                overwrite_foreign: bool) -> None:
    """A record goes to the run's results always, and to the baselines when asked."""
    write_record(results_dir, record, images, overwrite_foreign=True)
    if baselines_dir is not None:
        write_record(baselines_dir, record, images, overwrite_foreign=overwrite_foreign)


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
    references: Sequence[LoraAdapter] | None = None,
) -> Case:
    """Build ``recipe``, run the scenario and return its case; an out-of-memory becomes ``CaseFailed`` with
    the peak figures, after the memory is freed, so the next recipe still runs. ``references``: adapters to make
    a fresh eager image of first (default: the scenario's second adapter, for hot-swap recipes)."""
    device = active.device.type
    start_gib = in_use_gib(device)
    reset_peak(device)  # an out-of-memory while building reports this recipe's peak, not an earlier one's
    if references is None:
        references = (pool.adapters[1],) if recipe.hotswap else ()
    built = None
    settings_before = compile_settings.snapshot()
    try:
        fresh = {}
        for adapter in references:
            progress(f"[{recipe.name}] fresh eager pipeline with {adapter.name}, to check swaps against")
            fresh[adapter.name] = _fresh_image(source, recipe, active, pool, settings, cache, adapter)
        progress(f"[{recipe.name}] building ({active.describe()}, {source.label}; LoRAs {pool.describe()})")
        built = build_pipeline(source, recipe, active, pool, settings, cache, target_rank=target_rank)
        scenario = run_scenario(built, progress)
        record = make_record(built, scenario)
        record["memory_at_start_gib"] = start_gib
        return Case(built, scenario, record, fresh, settings_before=settings_before)
    except torch.OutOfMemoryError as exc:
        outcome, peak = OUT_OF_MEMORY, read_peak(device)
        allocated = "n/a" if peak.allocated_gib is None else f"{peak.allocated_gib:.2f} GiB"  # None off CUDA
        message = (
            f"{recipe.name}: out of memory on {active.describe()} (peak allocated {allocated}, "
            f"reserved {peak.reserved_gib:.2f} GiB, budget {active.profile.memory_budget_gib} GiB): "
            f"{str(exc).splitlines()[0]}"
        )
    except CompileBudgetExceeded as exc:
        outcome, peak, message = OVER_COMPILE_BUDGET, read_peak(device), str(exc)
    except BaseException:
        compile_settings.restore(settings_before)
        raise
    built = None  # drop the pipeline before freeing
    torch.compiler.reset()
    compile_settings.restore(settings_before)
    free_memory(device)
    raise CaseFailed(message, failure_record(recipe, active, source, pool, settings, outcome, message, peak))
