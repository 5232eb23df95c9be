"""A pytest plugin for a child run (``-p killed_run``, ``tests/unit`` on PYTHONPATH) that SIGKILLs itself at the
moment ``KILL_AT`` names, as a job killed from outside (a time limit, the out-of-memory killer) stops:

- ``before-timing-save``: the first recipe's record is written and its pytest-benchmark timing is not
  (``PerfSession.save_timings`` is where the timing would be written next);
- ``session-end``: every recipe's record and timing is written, pytest-benchmark's own save at the end is not
  (its ``pytest_sessionfinish`` wrapper saves before it yields; this one wraps it from outside).
"""

from __future__ import annotations

import os
import signal

import pytest

from perf.session import PerfSession

KILL_AT = "FLUX_LORA_PERF_TEST_KILL_AT"


def killed(*args) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


if os.environ.get(KILL_AT) == "before-timing-save":
    PerfSession.save_timings = killed


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int):
    if os.environ.get(KILL_AT) == "session-end":
        killed()
    return (yield)
