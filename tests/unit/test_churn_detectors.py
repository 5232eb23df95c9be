"""The churn's detectors, with their negative controls: recompiles are counted at every step, and an adapter met
again must make the image it made the first time (state left behind by earlier swaps shows as drift)."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import pytest

from perf.run.churn import CHURN_SWAPS, churn_pool, churn_sequence, run_churn


class FakeServer:
    """Stands in for a built pipeline: each adapter has its image; ``leak`` adds a trace of every earlier swap."""

    def __init__(self, leak: float = 0.0):
        self.recipe, self.device_type = SimpleNamespace(name="fake"), "cpu"
        self.current, self.swaps, self.leak = None, 0, leak

    def load_adapter(self, adapter) -> None:
        self.current, self.swaps = adapter, self.swaps + 1

    def generate(self) -> np.ndarray:
        return np.full((4, 4, 3), int(self.current.name.split("_")[1]) / 10) + self.leak * self.swaps


@pytest.fixture(scope="module")
def sequence(tmp_path_factory):
    return churn_sequence(churn_pool("tiny", tmp_path_factory.mktemp("cache")))


def test_the_churn_spans_six_adapters_of_mixed_ranks_and_ends_on_the_first(sequence):
    assert len(sequence) == CHURN_SWAPS
    assert len({a.name for a in sequence}) == 6 and len({a.rank for a in sequence}) == 3
    assert all(a.name != b.name for a, b in itertools.pairwise(sequence))
    assert sequence[-1].name.startswith("churn_0_")


def test_a_server_without_state_shows_no_revisit_drift(sequence):
    result = run_churn(FakeServer(), sequence, progress=lambda message: None)
    assert result.revisit_drift == 0.0 and result.recompiles == 0


def test_state_left_behind_by_earlier_swaps_shows_as_revisit_drift(sequence):
    """Negative control: each swap leaving 0.001 behind; an adapter's first and last visits are 18 swaps apart."""
    result = run_churn(FakeServer(leak=0.001), sequence, progress=lambda message: None)
    assert result.revisit_drift == pytest.approx(0.018)
