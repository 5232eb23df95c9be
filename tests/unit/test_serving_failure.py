"""A serving scenario the libraries cannot run ends as a recorded failure naming the error and the versions, with
the traceback's end on the terminal once: the scenario is not run again by each test that asks (on a GPU it
compiles for minutes), and an interrupt still stops the run."""

from types import SimpleNamespace

import pytest

from perf.run import serving


def test_a_library_error_becomes_the_scenarios_failed_result(monkeypatch):
    def broken(built, **_):
        raise RuntimeError("FakeTensor has no attribute 'tensor_impl'\nsecond line")

    monkeypatch.setitem(serving.SCENARIOS, "two", broken)
    lines = []
    result = serving.serve_scenario("two", SimpleNamespace(device_type="cpu"), lines.append)
    assert result.failure == "RuntimeError: FakeTensor has no attribute 'tensor_impl'"
    assert result.requests == () and result.finding.startswith("two: failed with RuntimeError: FakeTensor")
    assert "torch " in result.finding and "diffusers " in result.finding
    assert "Traceback" in lines[0] or "RuntimeError" in lines[0]


def test_an_interrupt_still_stops_the_run(monkeypatch):
    def interrupted(built, **_):
        raise KeyboardInterrupt

    monkeypatch.setitem(serving.SCENARIOS, "scale", interrupted)
    with pytest.raises(KeyboardInterrupt):
        serving.serve_scenario("scale", SimpleNamespace(device_type="cpu"), print)
