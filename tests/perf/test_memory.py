"""A recipe must keep fitting its hardware: the peak GPU memory of a whole hot-swapped generation (text
encoding, denoising and VAE decode, swaps included) stays within the profile's budget, and the plain bf16
pipeline is shown not to fit it (else the budget check proves nothing)."""

import pytest

from perf.judge.baseline_files import OUT_OF_MEMORY
from perf.plugin import case_params
from perf.run.case import CaseFailed
from perf.run.checks import over_budget


def test_peak_memory_within_budget(case):
    profile = case.built.spec.active.profile
    peak = case.scenario.peak
    if profile.memory_budget_gib is None or peak.kind != "cuda":
        pytest.skip(f"profile {profile.name} has no GPU memory budget (CPU peak RSS is recorded, not gated)")
    problem = over_budget(peak, profile.memory_budget_gib, profile.name)
    assert problem is None, problem


@pytest.mark.parametrize("control", case_params(memory_controls=True))
def test_bf16_pipeline_without_offload_breaks_the_budget(control, suite):
    """Negative control: the recipe that should not fit (bf16, no offload, no quantization) runs out of memory
    under the budget, or its measured peak exceeds it. Its record says which."""
    try:
        case = suite.open_case(control)
    except CaseFailed as failed:
        assert failed.record["outcome"] == OUT_OF_MEMORY
        return
    try:
        budget = case.built.spec.active.profile.memory_budget_gib
        problem = over_budget(case.scenario.peak, budget, case.built.spec.active.name)
        assert problem is not None, (
            f"{case.recipe.name} fit within {budget} GiB (peak {case.scenario.peak}): the memory budget check's "
            "negative control did not fire"
        )
    finally:
        suite.close_case(case)
