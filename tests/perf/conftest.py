"""One case per (profile, recipe): built and run once, shared by that recipe's tests, saved and released
before the next recipe is built (pytest groups tests by a session-scoped fixture's params)."""

import pytest

from perf.measure import assert_no_leak
from perf.plugin import case_params, open_case_for

LEAK_SLACK_GIB = 1.0  # allocator rounding and cuBLAS/cuDNN workspaces; a leaked pipeline is tens of GiB


@pytest.fixture(scope="session", params=case_params())
def case(request, suite):
    case = open_case_for(suite, request.param)
    yield case
    case.save(
        suite.results_dir,
        suite.baselines_dir if suite.option("--update-baselines") else None,
        suite.option("--overwrite-foreign-baselines"),
    )
    suite.finished[case.recipe.name] = case.record
    device = case.built.device_type
    case.release()
    assert_no_leak(case.record["memory_at_start_gib"], device, LEAK_SLACK_GIB)
