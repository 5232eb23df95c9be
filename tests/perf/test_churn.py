"""Serving many adapters: twenty hot-swaps in a row over six adapters of mixed ranks, alphas and target sets,
each followed by a generation, must compile nothing; an adapter met again makes the image it made the first
time, and the last image is the one a fresh pipeline with that adapter makes. Swap latency (median, p95) and
images per minute go into the record."""

import pytest

from perf.checks import SEPARATION, image_diff, output_tolerance
from perf.churn import churn_sequence, run_churn


def test_lora_churn_never_recompiles_and_ends_on_the_right_adapter(case, suite):
    if not suite.runs_churn(case.recipe):
        pytest.skip(f"{case.recipe.name}: churn not run (compiled hot-swap recipes only, where it can recompile; "
                    "--no-churn)")
    result = run_churn(case.built, churn_sequence(suite.churn_pool), suite.progress)
    case.record["churn"] = result.summary()
    tolerance = output_tolerance(case.recipe, case.built.active.profile.dtype)
    last = image_diff(result.last_image, case.fresh_images[result.last_adapter])
    other_adapter = case.built.pool.adapters[1].name
    other = image_diff(result.last_image, case.fresh_images[other_adapter])
    passed = result.recompiles == 0 and last.mean_abs <= tolerance and result.revisit_drift <= tolerance
    case.add_check("churn", passed, swaps=len(result.steps), recompiles=result.recompiles,
                   last_vs_fresh=last.to_dict(), revisit_drift=result.revisit_drift, tolerance=tolerance)
    assert result.recompiles == 0, f"{result.recompiles} recompiles over {len(result.steps)} swaps: {result.steps}"
    assert result.revisit_drift <= tolerance, (
        f"an adapter met again during the churn made another image than the first time: {result.revisit_drift:.2e}"
    )
    assert other.mean_abs >= SEPARATION * tolerance, (
        f"{result.last_adapter}'s image is only {other.mean_abs:.2e} from {other_adapter}'s: the check is vacuous"
    )
    assert last.mean_abs <= tolerance, (
        f"after {len(result.steps)} swaps, {result.last_adapter}'s image differs from a fresh pipeline's by "
        f"{last.mean_abs:.2e} (mean abs; tolerance {tolerance:.1e})"
    )
