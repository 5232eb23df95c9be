"""Tolerances of the checks that compare two results of the same recipe, each from measured noise (no torch here:
judging and calibrating records needs none)."""

SAME_NUMERICS_IMAGE_TOLERANCE = 0.012
"""Images of one compiled recipe that should be the same (warm start vs cold start, an adapter met again in the
churn): same graphs, same kernels, yet not bitwise repeatable from call to call. Measured on the H100
(optimized_fullgraph_defaults, 1024², 28 steps): 0.0035 mean abs for a swap away and back, 0.0036 against a fresh
compiled pipeline, 0.0039 churn revisit drift; the tolerance is 3x the largest. On CPU float32 they are equal."""

EFFECT_TOLERANCE = {
    "float32": 0.005,
    "gpu": 0.05,
}
"""Largest error of the one-step swap check (``perf.probe``: the wrong part of the adapter's effect) that passes.
float32 (CPU): compiled and eager agree to rounding (1.5e-5 compiled, 8.5e-7 eager, tiny model), while a 1% strength
error reads 0.0092, so 0.5% of the effect is already a defect. GPU (bf16/FP8): provisional until the H100 A/A figures
are in ``baselines/h100/calibration/``."""
