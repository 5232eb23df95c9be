"""LoRA churn: what a server does all day. Many hot-swaps in a row over a mixed pool (ranks up to the hot-swap
rank, different alphas and target subsets), each followed by a generation: the 20th swap must be as cheap and
as recompile-free as the first, and the last image must be the one a fresh pipeline with that adapter makes."""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from perf.build.builder import BuiltPipeline
from perf.judge.record import ChurnStep, ChurnSummary
from perf.run.checks import image_diff
from perf.run.measure import timed
from perf.run.swap_probe import StepReference, same_numerics_reference, step_output
from perf.run.watchers import RecompileWatcher
from perf.spec.loras import LORA_VERSION, LoraAdapter, LoraPool, SyntheticLoraSpec, pool_of_specs, scaled_ranks

CHURN_SWAPS = 20


def churn_specs(size: str) -> tuple[SyntheticLoraSpec, ...]:
    """Six adapters in the formats people download (ComfyUI, kohya, XLabs, ai-toolkit, PEFT, a file in reverse
    tensor order), ranks at most the main pool's max (the hot-swap rank), each a subset of the main pool's first
    adapter's targets (every Linear). The first, in the one format the main pool lacks, is the churn's last."""
    subjects = ("a koi pond", "a mountain cabin", "a city at night", "a vintage car", "a sunflower field", "a robot")
    attention = ("double.attn.to_q", "double.attn.to_k", "double.attn.to_v", "double.attn.to_out.0")
    shapes = (  # format, ranks, alphas (None: alpha = rank), families (None: all the format has keys for)
        ("comfyui", (8,), (4.0, 16.0), None), ("kohya", (4,), (2.0, 8.0), (*attention, "double.ff.net.0.proj")),
        ("xlabs", (8,), None, None), ("ai_toolkit", (16, 4), (8.0,), (*attention, "single.norm.linear")),
        ("peft", (4, 16), (12.0,), ("x_embedder", "double.norm1_context.linear", "single.attn.to_v")),
        ("reordered", (8,), (8.0,), attention),
    )
    return tuple(
        SyntheticLoraSpec(f"churn_{i}_{fmt}", fmt, scaled_ranks(ranks, size), alphas, 100 + i,
                          f"{subject}, churn_{i}", families)
        for i, (subject, (fmt, ranks, alphas, families)) in enumerate(zip(subjects, shapes, strict=True))
    )


def churn_pool(size: str, cache: Path) -> LoraPool:
    return pool_of_specs(churn_specs(size), size, cache / "loras" / f"churn-{size}-v{LORA_VERSION}")


def churn_sequence(pool: LoraPool, swaps: int = CHURN_SWAPS) -> list[LoraAdapter]:
    """``swaps`` adapters cycling through the pool, never the same twice in a row, ending on the first."""
    adapters = pool.adapters
    return [adapters[(i + 1 - swaps) % len(adapters)] for i in range(swaps)]


@dataclass
class ChurnResult:
    steps: list[ChurnStep]
    last_image: np.ndarray = field(repr=False)
    revisit_drift: float = 0.0  # largest mean abs difference of an adapter's image from its first in the churn
    # the last adapter's one-step swap-check error (perf.run.swap_probe), with a reference
    last_error: float | None = None

    @property
    def last_adapter(self) -> str:
        return self.steps[-1].adapter

    @property
    def recompiles(self) -> int:
        return sum(step.recompiles for step in self.steps)

    def summary(self) -> ChurnSummary:
        loads = [s.load_seconds for s in self.steps]
        generations = [s.generate_seconds for s in self.steps]
        return ChurnSummary(
            swaps=len(self.steps),
            adapters=len({s.adapter for s in self.steps}),
            ranks=tuple(sorted({s.rank for s in self.steps})),
            recompiles=self.recompiles,
            swap_median_s=statistics.median(loads),
            swap_p95_s=float(np.percentile(loads, 95)),
            generate_median_s=statistics.median(generations),
            images_per_minute=60 * len(self.steps) / (sum(loads) + sum(generations)),
            revisit_drift=self.revisit_drift,
            steps=tuple(self.steps),
            last_error=self.last_error,
        )


def run_churn(built: BuiltPipeline, sequence: list[LoraAdapter], progress=print,
              reference: StepReference | None = None) -> ChurnResult:
    """Hot-swap to each adapter of ``sequence`` and generate, counting graphs compiled at every step; an adapter
    met again must make the image it made the first time (the 20th swap as good as the first). With the last
    adapter's fresh ``reference``, its swap-check error after the churn is measured too."""
    device = built.device_type
    steps, image, first_images, drift = [], None, {}, 0.0
    for i, adapter in enumerate(sequence, 1):
        with RecompileWatcher() as watcher:
            load_seconds, _ = timed(lambda a=adapter: built.load_adapter(a), device)
            generate_seconds, image = timed(built.generate, device)
        steps.append(ChurnStep(adapter.name, adapter.rank, load_seconds, generate_seconds, watcher.count))
        if adapter.name in first_images:
            drift = max(drift, image_diff(image, first_images[adapter.name]).mean_abs)
        first_images.setdefault(adapter.name, image)
        if i % 5 == 0 or i == len(sequence):
            progress(
                f"[{built.recipe.name}] churn {i}/{len(sequence)}: {adapter.name} (r{adapter.rank}) load "
                f"{load_seconds:.2f}s, generate {generate_seconds:.2f}s, recompiles so far "
                f"{sum(s.recompiles for s in steps)}"
            )
    last_error = None
    if reference is not None:
        with RecompileWatcher() as watcher:
            last_error = same_numerics_reference(built, reference).error(step_output(built.pipe, reference.inputs))
        steps[-1] = dataclasses.replace(steps[-1], recompiles=steps[-1].recompiles + watcher.count)
    return ChurnResult(steps, image, drift, last_error)
