"""Each timed round's adapter and the GPU's clock and power after it, in the record (issue 25: on the H200's power
cap the adapter's data sets the clock, so a sample's seconds are read beside its adapter and clock)."""

import itertools
from types import SimpleNamespace

import pytest

from perf.judge.record import Latency
from perf.run.case import open_case
from perf.spec.recipes import get_recipe


@pytest.fixture(scope="module")
def case(tiny_spec):
    case = open_case(tiny_spec, get_recipe("hotswap_eager"), progress=lambda _: None)
    yield case
    case.release()


def timed_rounds(case, rounds: int) -> Latency:
    case.time_generations(SimpleNamespace(disabled=True, extra_info={}), rounds)
    return case.latency


def test_each_round_names_the_adapter_it_served_in_the_pools_order(case, tiny_spec):
    pool = [adapter.name for adapter in tiny_spec.pool.adapters]
    latency = timed_rounds(case, len(pool) + 1)
    assert latency.adapters == (*pool, pool[0])
    assert latency.sm_clock_mhz == latency.power_w == ()  # no GPU: nothing read, nothing invented


def test_the_gpu_is_read_after_each_round_untimed(case, monkeypatch):
    readings = itertools.count(1)
    monkeypatch.setattr("perf.run.case.gpu_state",
                        lambda device: {"sm_clock_mhz": 1000.0 + next(readings), "power_w": 600.0})
    latency = timed_rounds(case, 3)
    assert latency.sm_clock_mhz == (1001.0, 1002.0, 1003.0)
    assert latency.power_w == (600.0,) * 3


def test_a_round_without_a_reading_keeps_none_rather_than_misaligned_ones():
    latency = Latency.of([1.0, 2.0], gpu=[{"sm_clock_mhz": 1900.0}, {}])
    assert latency.sm_clock_mhz == ()


def test_per_round_fields_must_have_one_entry_a_round():
    with pytest.raises(ValueError, match="adapters has 1 entries for 2 rounds"):
        Latency((1.0, 2.0), 2, 1.5, 1.5, 1.0, "suite", (), ("a",))
