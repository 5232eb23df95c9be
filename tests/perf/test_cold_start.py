"""A restarted server's wait: the cold start (empty compile cache) and the warm start (the cache the cold one
filled) of every compiled hot-swap recipe, each in a new process. The warm start must load its compiled code
instead of compiling it again, and make the same image; the cold start must really compile (the control that
shows the cache counters can tell the two apart). Times go into the record and the verdict table."""

import pytest

from perf.judge.tolerances import SAME_NUMERICS_IMAGE_TOLERANCE


def test_warm_start_loads_compiled_code_from_the_cache(case):
    start = case.cold_start
    if start is None:
        pytest.skip(f"{case.recipe.name}: cold start not measured (compiled hot-swap recipes only; --no-cold-start)")
    assert not isinstance(start, str), f"the cold/warm start measurement failed: {start}"
    assert start.cold.compiled_anew > 0 and start.cold.loaded_from_cache == 0, (
        f"the cold start found compiled code in a cache that should be empty: {start.cold.cache}"
    )
    assert start.warm.compiled_anew == 0 and start.warm.loaded_from_cache > 0, (
        f"the warm start compiled again instead of loading from the cache: {start.warm.cache}"
    )
    assert start.warm_vs_cold <= SAME_NUMERICS_IMAGE_TOLERANCE, (
        f"the warm start's image differs from the cold one's by {start.warm_vs_cold:.2e} (mean abs)"
    )
