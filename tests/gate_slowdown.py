"""A slowdown the gate must catch, injected from outside the library: ``-p tests.gate_slowdown`` with
``FLUX_LORA_PERF_INJECT_DELAY_S=SECONDS`` makes every generation spin (busy, so CPU time sees it too) that long
after the image is made. nox's upgrade gate loads it into the candidate suite only
(``GATE_INJECT_CANDIDATE_DELAY_S``)."""

from __future__ import annotations

import os
import time

import pytest

from perf.build.builder import BuiltPipeline

DELAY_ENV = "FLUX_LORA_PERF_INJECT_DELAY_S"


@pytest.fixture(autouse=True, scope="session")
def _slow_generations():
    delay = float(os.environ.get(DELAY_ENV, "0") or 0)
    generate = BuiltPipeline.generate

    def slowed(self, adapter=None):
        image = generate(self, adapter)
        spent = time.process_time() + delay
        while time.process_time() < spent:  # busy: slower work costs CPU time, which the cpu profile gates
            pass
        return image

    with pytest.MonkeyPatch.context() as patch:
        if delay:
            patch.setattr(BuiltPipeline, "generate", slowed)
        yield
