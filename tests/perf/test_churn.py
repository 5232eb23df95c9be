"""Serving many adapters: twenty hot-swaps in a row over six adapters of mixed ranks, alphas and target sets,
each followed by a generation, must compile nothing; an adapter met again makes the image it made the first
time, and the last adapter acts as it does in a fresh pipeline (the one-step swap check of ``perf.run.swap_probe``).
Swap latency (median, p95) and images per minute go into the record."""

import pytest

from perf.judge.tolerances import SAME_NUMERICS_IMAGE_TOLERANCE


def test_lora_churn_never_recompiles_and_ends_on_the_right_adapter(case, suite):
    if not suite.runs_churn(case.recipe):
        pytest.skip(f"{case.recipe.name}: churn not run (compiled hot-swap recipes only, where it can recompile; "
                    "--no-churn)")
    result = suite.churn(case)
    assert result.recompiles == 0, f"{result.recompiles} recompiles over {len(result.steps)} swaps: {result.steps}"
    assert result.revisit_drift <= SAME_NUMERICS_IMAGE_TOLERANCE, (
        f"an adapter met again during the churn made another image than the first time: {result.revisit_drift:.2e}"
    )
    assert result.last_error <= case.effect_tolerance, (
        f"after {len(result.steps)} swaps, {result.last_error:.2%} of {result.last_adapter}'s effect is wrong "
        f"(tolerance {case.effect_tolerance:.2%})"
    )
