"""One recipe's run on one profile, from build to record: what every perf test of that recipe reads.

The expensive part (build, compile, swaps, the swap checks' controls) runs once per recipe; the rest (timed
generations, image quality, churn) is measured here on demand; tests assert on the results. Fresh eager pipelines
with the adapters the checks need are run *before* the recipe's pipeline is built,
so two full-size pipelines are never in GPU memory at once: each leaves its image and its first denoising step
(``perf.run.swap_probe.StepReference``) behind.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from perf.build import compile_settings
from perf.build.builder import BuiltPipeline, build_pipeline
from perf.errors import CompileBudgetExceeded, SuiteError
from perf.judge.baseline_files import write_record
from perf.judge.record import (
    HOTSWAP_SCALING,
    OUT_OF_MEMORY,
    OVER_COMPILE_BUDGET,
    CheckOutcome,
    Latency,
    Quality,
    RunRecord,
    SwapCheck,
)
from perf.judge.serving_record import ServingResult
from perf.judge.tolerances import EFFECT_TOLERANCE
from perf.run.checks import image_diff
from perf.run.churn import ChurnResult, run_churn
from perf.run.cold_start import ColdStart
from perf.run.measure import (
    cpu_timed,
    free_memory,
    gpu_state,
    in_use_gib,
    read_peak,
    reset_peak,
    synchronize,
    time_rounds,
)
from perf.run.quality import ClipScorer, QualityResult, assess_images, check_quality, summarize, tolerance_for
from perf.run.recording import failure_record, make_record
from perf.run.scenario import ScenarioResult, run_scenario
from perf.run.serving import AsBuilt, not_run, recover, serve_scenario
from perf.run.swap_probe import ControlResult, StepReference, capture_first_step, reference_step, run_controls
from perf.run.watchers import RecompileWatcher
from perf.spec.loras import LoraAdapter
from perf.spec.recipes import Recipe
from perf.spec.run_spec import RunSpec


class CaseFailed(SuiteError):
    """A recipe's run failed in a way its tests should report (out of memory, over its compile budget), with
    the figures and the record to keep (its ``outcome`` says which)."""

    def __init__(self, message: str, record: RunRecord):
        super().__init__(message)
        self.record = record


@dataclass(frozen=True)
class WrongAdapterCheck:
    """The quality gate's negative control: the image of ``wrong`` judged as ``right`` (it must fail)."""

    right: str
    wrong: str
    reference: Path  # the stored thumbnail of ``right``
    result: QualityResult


@dataclass
class Case:
    """One recipe's built pipeline and everything measured on it. The measurements that need a test's fixture
    (pytest-benchmark's timer) or run on demand (quality, churn) are methods here, so tests only assert; the
    record is assembled from them whenever it is read (``record``)."""

    built: BuiltPipeline
    scenario: ScenarioResult
    measured: RunRecord  # identity, build, scenario and swap checks: what ``open_case`` measured
    fresh_images: dict[str, np.ndarray] = field(default_factory=dict)  # adapter -> fresh eager pipeline image
    references: dict[str, StepReference] = field(default_factory=dict)  # adapter -> fresh eager pipeline's step
    controls: ControlResult | None = None  # the swap check under injected defects (hot-swap recipes)
    churn_result: ChurnResult | None = None
    # the cold/warm start measured before this case was built, why it failed, or None: not measured; its summary in
    # the record gives each start's compile part: its first generation less a steady one of the scenario
    cold_start: ColdStart | str | None = None
    serving_results: dict[str, ServingResult] = field(default_factory=dict)  # scenario -> its result, once run
    serving_unusable: str | None = None  # why no further scenario can run on this case's pipeline
    settings_before: compile_settings.CompileSettings | None = None  # restored on release
    latency: Latency = field(default_factory=lambda: Latency.of([]))
    quality: Quality | None = None
    checks: dict[str, CheckOutcome] = field(default_factory=dict)  # test name -> pytest's outcome

    @property
    def recipe(self) -> Recipe:
        return self.built.recipe

    @property
    def record(self) -> RunRecord:
        """The record of everything measured so far, with the checks' outcomes (a new frozen record each time)."""
        cold_start = self.cold_start if isinstance(self.cold_start, ColdStart) else None
        steady = statistics.median(step.generate_seconds for step in self.scenario.steps) if cold_start else 0.0
        return dataclasses.replace(
            self.measured, latency=self.latency, quality=self.quality, checks=dict(self.checks),
            churn=self.churn_result.summary() if self.churn_result else None,
            cold_start=cold_start.summary(steady) if cold_start else None, serving=dict(self.serving_results),
        )

    @property
    def swap_reference(self) -> StepReference:
        """The scenario's first swap target's fresh eager step: the probe every swap check is measured on."""
        return self.references[self.swap_target.name]

    @property
    def effect_tolerance(self) -> float:
        return EFFECT_TOLERANCE

    @property
    def swap_error(self) -> float:
        """The scenario's first swap, in units of the adapter's effect (0: as if loaded into a fresh pipeline)."""
        return self.controls.reference.error(self.scenario.steps_out[self.swap_reference.adapter])

    @property
    def swap_target(self) -> LoraAdapter:
        """The scenario's first swap target: the adapter the swap check measures."""
        return self.built.spec.pool.adapters[1]

    def known_cause(self, error: float, adapter: LoraAdapter, what: str) -> str | None:
        """Why ``error`` (``what`` measured on ``adapter``) over tolerance is expected on this stack, as an expected
        failure's reason with the measured figure; None where it must gate. The one known cause is peft's hot-swap
        ignoring per-module ranks and alphas, when this session's probe found it (``perf.run.hotswap_scaling``,
        a finding of the record) and ``adapter`` has per-module ranks (its file gives peft a rank_pattern). An
        adapter of one rank and several alphas is not recognised: its error fails the check, it is never hidden."""
        if error <= self.effect_tolerance or not self.hit_by_hotswap_scaling([adapter]):
            return None
        return (f"{what}: {error:.2%} of the adapter's effect is wrong (tolerance {self.effect_tolerance:.2%}), "
                f"{adapter.name} having per-module ranks; {self.hotswap_scaling_finding()}")

    def known_quality_cause(self, failing: dict[str, list[str]]) -> str | None:
        """Why the quality failures of ``failing`` (adapter -> messages) are expected on this stack, or None where
        they must gate: every failing image is a hot-swapped adapter with per-module ranks and the session's probe
        found peft's hot-swap ignoring them (as ``known_cause``); one failure of another adapter gates them all."""
        adapters = {adapter.name: adapter for adapter in self.built.spec.pool.adapters}
        if not failing or not self.recipe.hotswap or not set(failing) <= adapters.keys():
            return None
        if not self.hit_by_hotswap_scaling([adapters[name] for name in failing]):
            return None
        shown = "; ".join(f"{name}: {' '.join(messages)}" for name, messages in failing.items())
        return f"{shown}; each having per-module ranks; {self.hotswap_scaling_finding()}"

    def hit_by_hotswap_scaling(self, adapters: Sequence[LoraAdapter]) -> bool:
        """This session's probe found peft's hot-swap ignoring per-module ranks, and each of ``adapters`` has them."""
        return self.hotswap_scaling_finding() is not None and all(
            len({layer.rank for layer in adapter.layers}) > 1 for adapter in adapters)

    def hotswap_scaling_finding(self) -> str | None:
        """The probe's finding (``perf.run.hotswap_scaling``) in the record, as a reason's tail, or None."""
        finding = next((f for f in self.measured.lora_findings if f.subject == HOTSWAP_SCALING), None)
        if finding is None:
            return None
        versions = ", ".join(f"{name} {version}" for name, version in finding.versions.items())
        return f"known finding: {finding.subject}: {finding.problem} ({versions})"

    @property
    def swap_back_error(self) -> float:
        """Adapter A after the swaps vs A before them, on the same probe, in units of the probe adapter's effect."""
        after = self.scenario.steps_out[self.built.first.name]
        return float((after - self.scenario.warmup_step).norm()) / self.controls.reference.effect

    def swap_check_summary(self) -> SwapCheck:
        """The swap checks' figures for the record: errors, tolerance, and the controls they must catch."""
        return SwapCheck(
            unit="fraction of the adapter's effect on one denoising step (perf.run.swap_probe)",
            tolerance=self.effect_tolerance,
            reference=self.swap_reference.adapter,
            effect_norm=self.controls.reference.effect,
            swap=self.swap_error,
            swap_back=self.swap_back_error,
            image_vs_fresh_eager=image_diff(self.scenario.images[self.swap_reference.adapter],
                                            self.fresh_images[self.swap_reference.adapter]).mean_abs,
            probe_recompiles=self.scenario.probe_recompiles,
            controls=self.controls.summary(),
        )

    @property
    def images(self) -> dict[str, np.ndarray]:
        """Each adapter's last image (the first adapter's warm-up image when the scenario never swapped back)."""
        return {self.built.first.name: self.scenario.warmup_image, **self.scenario.images}

    def churn(self, sequence: list[LoraAdapter], progress: Callable[[str], None] = print) -> ChurnResult:
        """The churn over ``sequence`` (once per case)."""
        if self.churn_result is None:
            self.churn_result = run_churn(self.built, sequence, progress, self.references.get(sequence[-1].name))
        return self.churn_result

    def serving(self, scenario: str, resident: list[LoraAdapter], progress: Callable[[str], None] = print
                ) -> ServingResult:
        """The serving scenario ``scenario`` of ``perf.run.serving`` (once per case), kept in the record's
        ``serving``; ``resident``: the adapters the resident scenario keeps in RAM."""
        if scenario not in self.serving_results and self.serving_unusable:
            self.serving_results[scenario] = not_run(scenario, self.serving_unusable)
        if scenario not in self.serving_results:
            progress(f"[{self.recipe.name}] serving: {scenario}")
            wall, cpu = time.perf_counter(), sum(os.times()[:4])  # CPU: this process's and its compile workers'
            before = AsBuilt.take(self.built)
            result = serve_scenario(scenario, self.built, progress, reference=self.swap_reference,
                                    resident=resident)
            self.serving_results[scenario] = result
            decoder = f" ({result.decoder_recompiles} the VAE decoder's)" if result.decoder_recompiles else ""
            outcome = (f"failed: {result.failure}" if result.failure else f"{result.warmup_recompiles} graph(s)"
                       f"{decoder} compiled by the first requests, {result.steady_recompiles} after")
            progress(f"[{self.recipe.name}] serving: {scenario}: {outcome}; {time.perf_counter() - wall:.0f} s "
                     f"({sum(os.times()[:4]) - cpu:.0f} s of CPU)")
            if result.failure:
                why = recover(self.built, before)
                progress(f"[{self.recipe.name}] serving: the pipeline put back after {scenario}'s failure"
                         if why is None else f"[{self.recipe.name}] serving: the pipeline could not be put back: {why}")
                if why is not None:
                    self.serving_unusable = f"the pipeline could not be put back after {scenario} failed: {why}"
        return self.serving_results[scenario]

    def time_generations(self, benchmark, rounds: int) -> RecompileWatcher:
        """Time ``rounds`` full pipeline calls after warm-up with pytest-benchmark's fixture as the timer
        (``benchmark.pedantic``), or, where it is off (it turns itself off under pytest-xdist), the suite's own
        timer over the same rounds. Hot-swap recipes swap to the next adapter before every timed round
        (untimed), so the timing also proves a swap costs no recompile; others keep their adapter. The record
        keeps each round's adapter and the GPU's clock and power after it (``Latency``). Returns what compiled
        (and which CUDA graphs were recorded) while timing."""
        built = self.built
        device = built.device_type
        rotation = itertools.cycle(built.spec.pool.adapters)
        served: list[str] = []
        gpu: list[dict[str, float]] = []  # the GPU's clock and power after each round, read untimed

        def before_round() -> None:
            if served:
                gpu.append(gpu_state(device))
            if self.recipe.hotswap:
                built.load_adapter(next(rotation))
                synchronize(device)
            served.append(built.current.name)

        active, measured = built.spec.active, self.measured
        benchmark.extra_info.update(
            recipe=self.recipe.name, profile=active.name, emulated=active.emulated, device=active.device.name,
            model_source=built.spec.source.label, attention=built.attention.kernel,
            compile_warmup_s=self.scenario.warmup_seconds, versions=measured.versions,
            peak_memory=dataclasses.asdict(measured.peak_memory),
        )
        generate, cpu_seconds = cpu_timed(built.generate)  # CPU seconds beside the wall time (cpu profile)
        with RecompileWatcher() as watcher:
            if benchmark.disabled:
                samples, timer = time_rounds(generate, before_round, rounds, device), "suite"
            else:
                benchmark.pedantic(generate, setup=before_round, rounds=rounds, iterations=1, warmup_rounds=0)
                samples, timer = list(benchmark.stats.stats.data), "pytest-benchmark"
        gpu.append(gpu_state(device))
        self.latency = Latency.of(samples, timer, cpu_seconds, served, gpu)
        return watcher

    def assess_quality(self, scorer: ClipScorer, stored: RunRecord | None, stored_dir: Path,
                       baseline_row_dir: Path | None) -> dict[str, QualityResult]:
        """Each adapter's image against the stored record's thumbnails and CLIP scores and this run's baseline
        row (``perf.run.quality.assess_images``); the summary goes into the record."""
        prompts = {a.name: a.prompt for a in self.built.spec.pool.adapters}
        results = assess_images(self.images, prompts, self.recipe, scorer, stored, stored_dir, baseline_row_dir)
        self.quality = summarize(results)
        return results

    def wrong_adapter_quality(self, scorer: ClipScorer, stored: RunRecord,
                              stored_dir: Path) -> WrongAdapterCheck | None:
        """An image made with the wrong adapter (what a broken hot-swap produces) judged against the stored
        reference of the adapter that should have been active; None when fewer than two references are stored."""
        images = self.images
        names = [name for name in images if name in stored.images]
        if len(names) < 2:
            return None
        right, wrong = names[0], names[1]
        reference = stored_dir / stored.images[right]
        prompt = next(a.prompt for a in self.built.spec.pool.adapters if a.name == right)
        result = check_quality(images[wrong], prompt, reference, None, None, scorer, tolerance_for(self.recipe))
        return WrongAdapterCheck(right, wrong, reference, result)

    def save(self, results_dir: Path, baselines_dir: Path | None, overwrite_foreign: bool) -> None:
        """Kept as ``keep_record`` keeps any record, with each adapter's image and the warm-up image."""
        keep_record(self.record, {**self.images, "warmup": self.scenario.warmup_image}, results_dir, baselines_dir,
                    overwrite_foreign)

    def release(self) -> None:
        """Drop the pipeline and compiled graphs, and undo the process-wide compile settings its build changed,
        so the next recipe starts from the same memory level and the same settings."""
        self.built = None
        torch.compiler.reset()
        if self.settings_before is not None:
            compile_settings.restore(self.settings_before)
        free_memory("cuda" if torch.cuda.is_available() else "cpu")


def keep_record(record: RunRecord, images: dict[str, np.ndarray], results_dir: Path, baselines_dir: Path | None,
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
        case = Case(built, scenario, make_record(built, scenario, start_gib, None), fresh, steps, controls,
                    settings_before=settings_before)
        if controls is not None:
            case.measured = dataclasses.replace(case.measured, swap_check=case.swap_check_summary())
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
