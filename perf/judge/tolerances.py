"""Tolerances of the checks that compare two results of the same recipe, each from measured noise (no torch here:
judging and calibrating records needs none)."""

SAME_NUMERICS_IMAGE_TOLERANCE = 0.012
"""Images of one compiled recipe that should be the same (warm start vs cold start, an adapter met again in the
churn): same graphs, same kernels, yet not bitwise repeatable from call to call. Measured on the H100
(optimized_fullgraph_defaults, 1024², 28 steps): 0.0035 mean abs for a swap away and back, 0.0036 against a fresh
compiled pipeline, 0.0039 churn revisit drift; the tolerance is 3x the largest. On CPU float32 they are equal."""

EFFECT_TOLERANCE = 0.005
"""Largest error of the one-step swap check (``perf.run.swap_probe``: the part of the adapter's effect that is wrong,
against the candidate's own graph fed the LoRA state of a fresh pipeline) that passes. Compiled steps repeat bit for
bit, so
a correct swap reads 0.0 (tiny model on CPU, compiled and eager; H100 figures in ``baselines/h100/calibration/``)
while a 1% strength error reads 0.0099: half of that is the tolerance, so a 1% error is caught with a 2x margin."""
