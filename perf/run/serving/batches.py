"""Batches of images per prompt: images per minute and peak memory, and on a consumer card's profile the largest
batch that fits its budget."""

from __future__ import annotations

import torch

from perf.build.builder import BuiltPipeline
from perf.judge.serving_record import (
    BatchFigures,
    BatchFit,
    ServingResult,
)
from perf.run.measure import free_memory, read_peak, reset_peak
from perf.run.serving.requests import (
    leaves_pipeline_as_built,
    scenario_result,
    serve_all,
)

BATCHES = (1, 2, 4)
FIT_BATCHES = (1, 2, 4, 8, 16)  # tried in turn on a GPU profile with a memory budget, up to the first that fails


def run_batches(built: BuiltPipeline, **_) -> ServingResult:
    """Batches of 1, 2 and 4 images per prompt: images per minute and peak memory (within the profile's budget,
    checked by the test); on a consumer card's profile (``batch_fit``: the RTX 4090, emulated under its memory cap
    or not), the largest batch that fits its budget. Not on the H100/H200 profiles: there the search would serve
    up to 31 images at 1024² (about 90 s at the H200's 2.9 s an image) for a figure that sizes no consumer card."""
    profile = built.spec.active.profile
    with leaves_pipeline_as_built(built):
        requests = serve_all(built, {f"batch {b}": {"num_images_per_prompt": b} for b in BATCHES})
        fits = (largest_batch(built, profile.memory_budget_gib)
                if built.device_type == "cuda" and profile.batch_fit and profile.memory_budget_gib is not None
                else None)
    return scenario_result(built, "batches", requests, batches=BatchFigures(profile.memory_budget_gib, fits))


def largest_batch(built: BuiltPipeline, budget_gib: float) -> BatchFit:
    """The largest of ``FIT_BATCHES`` served within ``budget_gib`` (an out-of-memory, or a peak over it, ends
    the search), with the peak of each batch tried."""
    device, peaks, fits = built.device_type, {}, None
    for batch in FIT_BATCHES:
        reset_peak(device)
        try:
            built.serve(num_images_per_prompt=batch)
        except torch.OutOfMemoryError:
            peaks[str(batch)] = "out of memory"
            break
        finally:
            free_memory(device)
        peak = read_peak(device)
        peaks[str(batch)] = max(peak.allocated_gib or 0.0, peak.reserved_gib)
        if peaks[str(batch)] > budget_gib:
            break
        fits = batch
    return BatchFit(fits, peaks)
