"""Session fixtures for the unit tests that build pipelines: the tiny synthetic model and LoRA pool are written
once per session into a temporary cache, never into the developer's cache or the source tree."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest

from perf.spec.cache import cache_dir
from perf.spec.loras import LoraPool, synthetic_pool
from perf.spec.models import ModelSource, resolve_source
from perf.spec.profiles import ActiveProfile, DeviceInfo, resolve_profile
from perf.spec.run_spec import RunSpec


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cache_dir(tmp_path_factory.mktemp("perf-cache"))


@pytest.fixture(scope="session")
def cpu_profile() -> ActiveProfile:
    """The CPU profile on this machine's CPU, even where a GPU is present: these tests specify CPU behaviour."""
    return resolve_profile(None, DeviceInfo(platform.machine() or "cpu", "cpu", None, None))


@pytest.fixture(scope="session")
def tiny_source(cpu_profile: ActiveProfile) -> ModelSource:
    return resolve_source(None, cpu_profile.profile.model_size)


@pytest.fixture(scope="session")
def tiny_pool(tiny_cache: Path) -> LoraPool:
    """peft_all (every Linear, lora_B bias), kohya, xlabs, ai_toolkit_reordered (``perf.spec.loras``)."""
    return synthetic_pool("tiny", tiny_cache)


@pytest.fixture(scope="session")
def tiny_spec(cpu_profile: ActiveProfile, tiny_source: ModelSource, tiny_pool: LoraPool, tiny_cache: Path) -> RunSpec:
    """The CPU run of the suite: tiny model, synthetic pool, the session's temporary cache."""
    return RunSpec(cpu_profile, tiny_source, tiny_pool, tiny_cache)
