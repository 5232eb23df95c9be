"""A slowdown the gate must catch, injected from outside the library: ``-p tests.gate_slowdown`` with
``FLUX_LORA_PERF_INJECT_DELAY_S=SECONDS`` makes every generation spin (busy, so CPU time sees it too) that long
after the image is made.
``FLUX_LORA_PERF_INJECT_IF=NAME==VERSION`` ties it to one package's version: only a run where that version is
installed is slowed, so an upgrade that moves several packages has one real culprit for the bisect to find.
The upgrade gate loads it with ``--inject-delay`` (and ``--inject-if``)."""

from __future__ import annotations

import os
import time
from importlib import metadata

import pytest

from perf.build.builder import BuiltPipeline

DELAY_ENV = "FLUX_LORA_PERF_INJECT_DELAY_S"
IF_ENV = "FLUX_LORA_PERF_INJECT_IF"


def injected_delay() -> float:
    """The delay to inject in this process: 0 unless set, and unless ``IF_ENV``'s version is the one installed."""
    delay = float(os.environ.get(DELAY_ENV, "0") or 0)
    condition = os.environ.get(IF_ENV)
    if delay and condition:
        name, version = condition.split("==", 1)
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = None
        return delay if installed == version else 0.0
    return delay


@pytest.fixture(autouse=True, scope="session")
def _slow_generations():
    delay = injected_delay()
    generate = BuiltPipeline.generate

    def slowed(self, adapter=None):
        image = generate(self, adapter)
        spent = time.process_time() + delay
        while time.process_time() < spent:  # busy: slower work costs CPU time too, which the record reports
            pass
        return image

    with pytest.MonkeyPatch.context() as patch:
        if delay:
            patch.setattr(BuiltPipeline, "generate", slowed)
        yield
