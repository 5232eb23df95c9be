"""The serving scenario every recipe runs: warm up on adapter A (compile happens here), then swap to the other
adapters and generate after each swap, counting compiled graphs and keeping each adapter's image. With a probe
(``perf.run.swap_probe``), one transformer step on fixed inputs is also taken after warm-up and after each swap,
outside the timed and watched regions, so the swap checks compare like with like."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from perf.build.builder import BuiltPipeline
from perf.judge.record import PeakMemory, SwapStep
from perf.run.compile_timeout import compile_budget
from perf.run.measure import read_peak, reset_peak, timed
from perf.run.swap_probe import StepInputs, step_output
from perf.run.watchers import RecompileWatcher
from perf.spec.loras import LoraAdapter


@dataclass
class ScenarioResult:
    warmup_seconds: float  # first generation on adapter A, compile included
    warmup_graphs: int  # graphs compiled during warm-up (0 for eager recipes)
    warmup_cache: dict[str, int]  # compile-cache hits and misses during warm-up: was the compile cold or warm?
    warmup_cudagraphs: int  # CUDA graphs recorded during warm-up (recipes compiled with CUDA graphs)
    cudagraphs_skipped: int  # compiled graphs run without the CUDA graphs their mode asked for, warm-up included
    steps: list[SwapStep]
    warmup_image: np.ndarray = field(repr=False)  # adapter A's image before any swap
    images: dict[str, np.ndarray] = field(repr=False)  # adapter name -> its image after the last swap to it
    peak: PeakMemory | None = None
    warmup_step: torch.Tensor | None = field(default=None, repr=False)  # the probe's step on adapter A, before swaps
    steps_out: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)  # adapter -> probe step after its
    probe_recompiles: int = 0  # graphs compiled while probing (must be 0: the probe makes the pipeline's own call)

    @property
    def recompiles_after_warmup(self) -> int:
        return sum(step.recompiles for step in self.steps)

    @property
    def cudagraphs_recorded_after_warmup(self) -> int:
        return sum(step.cudagraphs_recorded for step in self.steps)


def swap_sequence(built: BuiltPipeline) -> list[LoraAdapter]:
    """B, C, ... then back to A: at least three swaps across different ranks. A recipe that recompiles on
    every new adapter needs only one swap to show it (each costs a full compile on a GPU)."""
    first, *others = built.spec.pool.adapters
    return others[:1] if built.recipe.expects_recompiles else [*others, first]


def run_scenario(built: BuiltPipeline, progress=print, probe: StepInputs | None = None) -> ScenarioResult:
    device = built.device_type
    reset_peak(device)
    first = built.current
    progress(f"[{built.recipe.name}] warm-up on {first.name} (r{first.rank}); compile happens here")
    budget = built.spec.active.profile.compile_budget_s if built.recipe.compiled else None
    with RecompileWatcher() as warm, compile_budget(budget, f"{built.recipe.name}: first generation"):
        warmup_seconds, warmup_image = timed(built.generate, device)
    probe_recompiles = 0

    def probed() -> torch.Tensor | None:
        nonlocal probe_recompiles
        if probe is None:
            return None
        with RecompileWatcher() as watcher:
            out = step_output(built.pipe, probe)
        probe_recompiles += watcher.count
        return out

    warmup_step, steps_out = probed(), {}
    images = {}
    steps = []
    skipped = warm.cudagraphs_skipped
    for adapter in swap_sequence(built):
        with RecompileWatcher() as watcher:
            load_seconds, _ = timed(lambda a=adapter: built.load_adapter(a), device)
            generate_seconds, image = timed(built.generate, device)
        images[adapter.name] = image
        steps_out[adapter.name] = probed()
        steps.append(SwapStep(adapter.name, adapter.rank, load_seconds, generate_seconds, watcher.count,
                              watcher.cudagraphs_recorded))
        skipped += watcher.cudagraphs_skipped
        graphs = f", CUDA graphs recorded {watcher.cudagraphs_recorded}" if built.recipe.cudagraphs else ""
        progress(
            f"[{built.recipe.name}] swap to {adapter.name} (r{adapter.rank}): load {load_seconds:.2f}s, "
            f"generate {generate_seconds:.2f}s, recompiles {watcher.count}{graphs}"
        )
    return ScenarioResult(warmup_seconds, warm.count, warm.cache, warm.cudagraphs_recorded, skipped, steps,
                          warmup_image, images, read_peak(device), warmup_step, steps_out, probe_recompiles)
