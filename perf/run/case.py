"""One recipe's run on one profile, from build to record: what every perf test of that recipe reads.

The expensive part (build, compile, swaps, the swap checks' controls) runs once per recipe; tests assert on the
result. Fresh eager pipelines with the adapters the checks need are run *before* the recipe's pipeline is built,
so two full-size pipelines are never in GPU memory at once: each leaves its image and its first denoising step
(``perf.run.swap_probe.StepReference``) behind.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from perf.build import compile_settings
from perf.build.builder import BuiltPipeline, build_pipeline
from perf.errors import CompileBudgetExceeded, SuiteError
from perf.judge.baseline_files import OUT_OF_MEMORY, OVER_COMPILE_BUDGET, write_record
from perf.judge.tolerances import EFFECT_TOLERANCE
from perf.run.checks import image_diff
from perf.run.churn import ChurnResult, run_churn
from perf.run.cold_start import ColdStart
from perf.run.measure import free_memory, in_use_gib, read_peak, reset_peak
from perf.run.recording import failure_record, latency_summary, make_record
from perf.run.scenario import ScenarioResult, run_scenario
from perf.run.swap_probe import ControlResult, StepReference, capture_first_step, reference_step, run_controls
from perf.spec.loras import LoraAdapter
from perf.spec.recipes import Recipe
from perf.spec.run_spec import RunSpec


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
    references: dict[str, StepReference] = field(default_factory=dict)  # adapter -> fresh eager pipeline's step
    controls: ControlResult | None = None  # the swap check under injected defects (hot-swap recipes)
    churn_result: ChurnResult | None = None
    cold_start: ColdStart | str | None = None  # measured cold/warm start, why it failed, or None: not measured
    settings_before: compile_settings.CompileSettings | None = None  # restored on release

    @property
    def recipe(self) -> Recipe:
        return self.built.recipe

    @property
    def swap_reference(self) -> StepReference:
        """The scenario's first swap target's fresh eager step: the probe every swap check is measured on."""
        return self.references[self.built.spec.pool.adapters[1].name]

    @property
    def effect_tolerance(self) -> float:
        return EFFECT_TOLERANCE

    @property
    def swap_error(self) -> float:
        """The scenario's first swap, in units of the adapter's effect (0: as if loaded into a fresh pipeline)."""
        return self.controls.reference.error(self.scenario.steps_out[self.swap_reference.adapter])

    @property
    def swap_back_error(self) -> float:
        """Adapter A after the swaps vs A before them, on the same probe, in units of the probe adapter's effect."""
        after = self.scenario.steps_out[self.built.first.name]
        return float((after - self.scenario.warmup_step).norm()) / self.controls.reference.effect

    def swap_check_summary(self) -> dict:
        """The swap checks' figures for the record: errors, tolerance, and the controls they must catch."""
        return {
            "unit": "fraction of the adapter's effect on one denoising step (perf.run.swap_probe)",
            "tolerance": self.effect_tolerance,
            "reference": self.swap_reference.adapter,
            "effect_norm": self.controls.reference.effect,
            "swap": self.swap_error,
            "swap_back": self.swap_back_error,
            "image_vs_fresh_eager": image_diff(self.scenario.images[self.swap_reference.adapter],
                                               self.fresh_images[self.swap_reference.adapter]).mean_abs,
            "probe_recompiles": self.scenario.probe_recompiles,
            "controls": self.controls.to_dict(),
        }

    def churn(self, sequence: list[LoraAdapter], progress: Callable[[str], None] = print) -> ChurnResult:
        """The churn over ``sequence`` (once per case), its summary kept in the record."""
        if self.churn_result is None:
            self.churn_result = run_churn(self.built, sequence, progress, self.references.get(sequence[-1].name))
            self.record["churn"] = self.churn_result.summary()
        return self.churn_result

    def add_latency(self, samples: list[float], timer: str, cpu_samples: list[float]) -> None:
        """Wall-clock samples (what users feel; gated on GPUs) and the CPU seconds of the same calls (reported
        beside them; on the ``cpu`` profile neither is gated: ``perf.judge.compare.WALL_TIME_NOT_GATED``)."""
        self.record["latency"] = {**latency_summary(samples), "timer": timer,
                                  "cpu_samples_s": [round(s, 6) for s in cpu_samples]}

    def add_cold_start(self, cold_start: ColdStart | str | None) -> None:
        """The cold/warm start measured before this case was built (or why it failed), and its summary in the
        record: each start's compile part is its first generation less a steady one of the scenario."""
        self.cold_start = cold_start
        if isinstance(cold_start, ColdStart):
            steady = statistics.median(step.generate_seconds for step in self.scenario.steps)
            self.record["cold_start"] = cold_start.summary(steady)

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


def _fresh_reference(spec: RunSpec, recipe: Recipe, adapter: LoraAdapter) -> tuple[np.ndarray, StepReference]:
    """A fresh eager pipeline with ``adapter`` loaded directly: its image, and its first step with and without
    the adapter (the swap checks' reference)."""
    reference = build_pipeline(spec, recipe.eager_reference(), first=adapter)
    with capture_first_step(reference.pipe.transformer) as captured:
        image = reference.generate()
    step = reference_step(reference.pipe, captured[0], adapter.name)
    del reference
    free_memory(spec.device_type)
    return image, step


def open_case(
    spec: RunSpec,
    recipe: Recipe,
    progress: Callable[[str], None] = print,
    references: Sequence[LoraAdapter] | None = None,
) -> Case:
    """Build ``recipe`` for ``spec``, run the scenario and return its case; an out-of-memory becomes
    ``CaseFailed`` with the peak figures, after the memory is freed, so the next recipe still runs.
    ``references``: adapters to make a fresh eager pipeline with first (default: the scenario's second adapter,
    for hot-swap recipes)."""
    active, pool = spec.active, spec.pool
    device = active.device.type
    start_gib = in_use_gib(device)
    reset_peak(device)  # an out-of-memory while building reports this recipe's peak, not an earlier one's
    if references is None:
        references = (pool.adapters[1],) if recipe.hotswap else ()
    built = None
    settings_before = compile_settings.snapshot()
    try:
        fresh, steps = {}, {}
        for adapter in references:
            progress(f"[{recipe.name}] fresh eager pipeline with {adapter.name}, to check swaps against")
            fresh[adapter.name], steps[adapter.name] = _fresh_reference(spec, recipe, adapter)
        progress(f"[{recipe.name}] building ({active.describe()}, {spec.source.label}; LoRAs {pool.describe()})")
        built = build_pipeline(spec, recipe)
        swapped_to = pool.adapters[1]
        probe = steps[swapped_to.name].inputs if swapped_to.name in steps else None
        scenario = run_scenario(built, progress, probe)
        controls = run_controls(built, steps[swapped_to.name], swapped_to) if probe is not None else None
        record = make_record(built, scenario)
        record["memory_at_start_gib"] = start_gib
        case = Case(built, scenario, record, fresh, steps, controls, settings_before=settings_before)
        if controls is not None:
            record["swap_check"] = case.swap_check_summary()
        return case
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
    raise CaseFailed(message, failure_record(recipe, spec, outcome, message, peak))
