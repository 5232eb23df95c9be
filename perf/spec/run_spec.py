"""What a run is, apart from the recipe: one frozen ``RunSpec`` (hardware profile, model source, LoRA pool, cache
folder, hot-swap rank), built by ``resolve_run`` from the user's options. The pytest plugin, the cold-start child
(``perf.run.cold_start_child``) and ``perf.tools.profile_step`` all build their runs this way, so an option means the
same everywhere, and the builder, the case and the record take the one object instead of six values."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from perf.spec.cache import cache_dir
from perf.spec.loras import LoraPool, pool_for
from perf.spec.models import ModelSource, resolve_source
from perf.spec.profiles import ActiveProfile
from perf.spec.settings import SETTINGS_BY_SIZE, GenerationSettings
from perf.spec.validate import positive_int

RUN_OPTIONS = ("--model", "--lora", "--max-rank", "--perf-cache")  # resolve_run's arguments, in its order


def add_run_options(add: Callable[..., object]) -> None:
    """Declare ``RUN_OPTIONS`` with ``add``: pytest's ``group.addoption`` or argparse's ``add_argument`` (the
    cold-start child and ``perf.tools.profile_step`` take the same options as the suite)."""
    add("--model", default=None, metavar="ID_OR_PATH",
        help="FLUX.1-dev hub id (from the local Hugging Face cache) or diffusers folder; default: the profile's "
        "embedded synthetic model (synthetic-tiny on CPU, synthetic-full on GPUs). Also: synthetic-tiny, "
        "synthetic-full.")
    add("--lora", action="append", default=[], metavar="PATH_OR_ID",
        help="LoRA adapter file, folder or hub id; repeat for a pool (one that targets every module the others do is "
        "loaded first, for hot-swap). Default: the synthetic pool of four adapters in the kohya, XLabs, PEFT and "
        "ai-toolkit formats, covering every Linear of the transformer.")
    add("--max-rank", type=positive_int, default=None,
        help="hot-swap target rank passed to enable_lora_hotswap, at least the pool's max rank (default: the "
        "pool's max rank).")
    add("--perf-cache", default=None, metavar="DIR",
        help="folder for synthetic models, LoRAs and compile caches (default: $FLUX_LORA_PERF_CACHE or "
        "~/.cache/flux-lora-perf). Never inside the source tree.")


@dataclass(frozen=True)
class RunSpec:
    active: ActiveProfile
    source: ModelSource
    pool: LoraPool
    cache: Path  # synthetic models, adapters and compile caches
    max_rank: int | None = None  # --max-rank; None: the pool's max rank

    @property
    def settings(self) -> GenerationSettings:
        """The seed's settings at full size, a few-second version for the tiny model."""
        return SETTINGS_BY_SIZE[self.source.size]

    @property
    def target_rank(self) -> int:
        """The rank ``enable_lora_hotswap`` pads every adapter to (a rank below the pool's max is refused once,
        before any test, by ``perf.spec.validate``)."""
        return self.max_rank or self.pool.max_rank

    @property
    def device_type(self) -> str:
        return self.active.device.type


def resolve_run(active: ActiveProfile, model: str | None = None, loras: list[str] | None = None,
                max_rank: int | None = None, cache: str | Path | None = None) -> RunSpec:
    """The run the options ``--model``, ``--lora``, ``--max-rank`` and ``--perf-cache`` describe on ``active``: the
    profile's embedded synthetic model and pool where they are not given."""
    folder = cache_dir(cache)
    source = resolve_source(model, active.profile.model_size)
    return RunSpec(active, source, pool_for(list(loras or []), source.size, folder), folder, max_rank)
