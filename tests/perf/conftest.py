"""One case per (profile, recipe): built and run once, shared by that recipe's tests, saved and released
before the next recipe is built (pytest groups tests by a session-scoped fixture's params)."""

import pytest

from perf.plugin import case_params


@pytest.fixture(scope="session", params=case_params())
def case(request, suite):
    case = suite.open_case(request.param)
    yield case
    suite.close_case(case)
