"""Output equality checks with stated tolerances: is the hot-swapped image the one a fresh pipeline makes?

Tolerances are mean absolute differences of images in [0, 1]; the fresh pipeline is eager. Measured on the
H100 at 1024², 28 steps (synthetic-full): a hot-swapped eager bf16 pipeline differs from a fresh one by
0.0031 (rank padding changes the accumulation order), eager FP8 by 0.0035, a compiled bf16 pipeline by 0.020
(compile reorders reductions; the drift grows over 28 steps), while the other adapter's image is 0.098 away.
float32 on CPU differs by rounding only (~1e-6). Each tolerance is about 1.5-3x the drift measured for its
kind; ``SEPARATION`` asserts that the wrong adapter would still fail the check.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from perf.measure import PeakMemory
from perf.recipes import Recipe

SEPARATION = 2.0  # the other adapter's image must be this many tolerances away, or the check is vacuous



def output_tolerance(recipe: Recipe, dtype: torch.dtype) -> float:
    if dtype == torch.float32:
        return 1e-4
    if recipe.compiled:
        return 0.04 if recipe.fp8 else 0.03
    return 0.015 if recipe.fp8 else 0.01


@dataclass(frozen=True)
class ImageDiff:
    mean_abs: float
    max_abs: float

    def to_dict(self) -> dict:
        return {"mean_abs": self.mean_abs, "max_abs": self.max_abs}


def image_diff(a: np.ndarray, b: np.ndarray) -> ImageDiff:
    delta = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return ImageDiff(float(delta.mean()), float(delta.max()))


def over_budget(peak: PeakMemory, budget_gib: float | None, profile: str) -> str | None:
    """Why a generation's peak GPU memory breaks the profile's budget, or None. Reserved memory counts: the
    caching allocator's reservation is what another process (or a 24 GB card) cannot have."""
    if budget_gib is None or peak.kind != "cuda":
        return None
    worst = max(peak.allocated_gib or 0.0, peak.reserved_gib)
    if worst <= budget_gib:
        return None
    return (
        f"peak GPU memory {worst:.2f} GiB (allocated {peak.allocated_gib:.2f}, reserved {peak.reserved_gib:.2f}) "
        f"exceeds the {profile} budget of {budget_gib:g} GiB"
    )


def cudagraph_problem(recorded_in_warmup: int, recorded_after_warmup: int, skipped: int) -> str | None:
    """Why a recipe compiled with CUDA graphs did not run as one, or None. Its graphs must all be recorded during
    warm-up and replayed from then on: a skipped graph ran as ordinary launches (the row would be timing
    something other than its name), and a recording after warm-up means a static input (a weight) moved
    between calls, so a swap replaced a tensor that the graphs had captured instead of copying into it."""
    if skipped:
        return f"{skipped} compiled graph(s) ran without CUDA graphs (torch logs why: 'skipping cudagraphs due to')"
    if not recorded_in_warmup:
        return "no CUDA graph was recorded during warm-up"
    if recorded_after_warmup:
        return (
            f"{recorded_after_warmup} CUDA graph(s) recorded again after warm-up: a swap moved a captured tensor "
            "(re-recording costs time and memory each swap)"
        )
    return None
