"""A pytest plugin for a child run (``-p interrupted_run``, ``tests/unit`` on PYTHONPATH) that stops itself at the
moment ``STOP_AT`` names, as a job stopped from outside would be:

- ``kill-before-timing-save``: SIGKILL once the first recipe's record is written and before its pytest-benchmark
  timing is (``PerfSession.save_timings`` is where the timing would be written next);
- ``kill-at-session-end``: SIGKILL once every recipe's record and timing is written, before pytest-benchmark's
  own save at the end (its ``pytest_sessionfinish`` wrapper saves before it yields; this one wraps it);
- ``ctrl-c-while-timing``: SIGINT (Ctrl-C) in the second timed round of the first recipe, its first round timed.
"""

from __future__ import annotations

import itertools
import os
import signal

import pytest

from perf.run import case
from perf.session import PerfSession

STOP_AT = "FLUX_LORA_PERF_TEST_STOP_AT"
MOMENT = os.environ.get(STOP_AT)


def killed(*args) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def ctrl_c_in_the_second_round(cpu_timed):
    """``perf.run.case.cpu_timed`` whose timed call sends this process SIGINT on its second call."""

    def timed(fn):
        generate, seconds = cpu_timed(fn)
        calls = itertools.count(1)

        def call(*args, **kwargs):
            if next(calls) == 2:
                os.kill(os.getpid(), signal.SIGINT)
            return generate(*args, **kwargs)

        return call, seconds

    return timed


if MOMENT == "kill-before-timing-save":
    PerfSession.save_timings = killed
elif MOMENT == "ctrl-c-while-timing":
    case.cpu_timed = ctrl_c_in_the_second_round(case.cpu_timed)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int):
    if MOMENT == "kill-at-session-end":
        killed()
    return (yield)
