"""Output equality checks with stated tolerances: is the hot-swapped image the one a fresh pipeline makes?

Tolerances are mean absolute differences of images in [0, 1]. float32 eager vs compiled differs by rounding
only (~1e-6 seen on the tiny model). bf16 accumulates rounding over 28 denoising steps and compile reorders
reductions, so GPU tolerances are wider (bf16 eager on the H100: 0.0029 mean abs between a hot-swapped
pipeline and a fresh one, rank padding changing the accumulation order); FP8 (3-bit mantissa) wider still
(0.0034 measured eager). A check only means something if
the adapters' images differ by much more than the tolerance, so ``SEPARATION`` is asserted too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from perf.recipes import Recipe

SEPARATION = 3.0  # the other adapter's image must be this many tolerances away, or the check is vacuous


def output_tolerance(recipe: Recipe, dtype: torch.dtype) -> float:
    if dtype == torch.float32:
        return 1e-4
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
