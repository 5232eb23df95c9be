"""Checks on one recipe's run that need no reference of their own: image differences (warm vs cold start, an
adapter met again in the churn, and the record's ``image_vs_fresh_eager`` figure), the memory budget, CUDA graphs
recorded once. Tolerances between results of the same recipe are in ``perf.judge.tolerances``."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from perf.judge.record import PeakMemory


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
