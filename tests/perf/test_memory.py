"""A recipe must keep fitting its hardware: the peak GPU memory of a whole hot-swapped generation (text
encoding, denoising and VAE decode, swaps included) stays within the profile's budget."""

import pytest

from perf.checks import over_budget


def test_peak_memory_within_budget(case):
    profile = case.built.active.profile
    peak = case.scenario.peak
    if profile.memory_budget_gib is None or peak.kind != "cuda":
        pytest.skip(f"profile {profile.name} has no GPU memory budget (CPU peak RSS is recorded, not gated)")
    problem = over_budget(peak, profile.memory_budget_gib, profile.name)
    case.add_check("within_memory_budget", problem is None, budget_gib=profile.memory_budget_gib)
    assert problem is None, problem
