"""The consumer card's batch fit (``largest_batch``, run on GPU profiles with ``batch_fit``): the search itself, on a
stand-in pipeline whose peak memory grows with the batch, so its rules are specified where CI runs."""

from types import SimpleNamespace

import pytest
import torch

from perf.judge.record import PeakMemory
from perf.run.serving import batches

GIB_PER_IMAGE = 5.0


class StandIn(SimpleNamespace):
    """A pipeline that peaks at ``GIB_PER_IMAGE`` a requested image, and runs out of memory from a batch on."""

    def __init__(self, out_of_memory_from: int | None = None):
        super().__init__(device_type="cpu", served=[], out_of_memory_from=out_of_memory_from)

    def serve(self, num_images_per_prompt: int) -> None:
        self.served.append(num_images_per_prompt)
        if self.out_of_memory_from is not None and num_images_per_prompt >= self.out_of_memory_from:
            raise torch.OutOfMemoryError("CUDA out of memory (stand-in)")

    def peak(self) -> PeakMemory:
        return PeakMemory(None, GIB_PER_IMAGE * self.served[-1], "cpu-rss")


@pytest.fixture
def pipeline(monkeypatch):
    def make(out_of_memory_from: int | None = None) -> StandIn:
        built = StandIn(out_of_memory_from)
        monkeypatch.setattr(batches, "read_peak", lambda device: built.peak())
        return built

    return make


def test_the_largest_batch_within_the_budget_is_found_and_the_search_stops_past_it(pipeline):
    built = pipeline()
    fit = batches.largest_batch(built, budget_gib=24.0)
    assert fit.batch == 4
    assert fit.peaks_gib == {"1": 5.0, "2": 10.0, "4": 20.0, "8": 40.0}
    assert built.served == [1, 2, 4, 8]


def test_an_out_of_memory_ends_the_search_and_is_recorded_as_such(pipeline):
    built = pipeline(out_of_memory_from=4)
    fit = batches.largest_batch(built, budget_gib=100.0)
    assert fit.batch == 2
    assert fit.peaks_gib == {"1": 5.0, "2": 10.0, "4": "out of memory"}
    assert built.served == [1, 2, 4]


def test_no_batch_fits_when_one_image_is_over_the_budget(pipeline):
    built = pipeline()
    fit = batches.largest_batch(built, budget_gib=4.0)
    assert fit.batch is None
    assert fit.peaks_gib == {"1": 5.0}
