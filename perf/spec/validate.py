"""The run's input checked once, before any test runs: a mistake in the model, the LoRA pool or an option is
the same mistake for every test, so it must stop the run with one message instead of failing each test with it.

The pool is read as diffusers will load it (``perf.spec.loras.inspect_lora``) and matched against the model's Linear
shapes, built on the meta device from the model's ``config.json``: no weights are read, no pipeline is built.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from perf.errors import SuiteError
from perf.spec.loras import LoraPool, check_fits_model, check_pool, hotswap_target_rank, transformer_linear_shapes
from perf.spec.models import CONFIGS, ModelSource, hub_file

TRANSFORMER_CONFIG = "transformer/config.json"


def positive_int(text: str) -> int:
    """argparse ``type=`` for counts and ranks: 0 or a negative number is a usage error, not "use the default"."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not positive: give 1 or more, or leave the option out")
    return value


def transformer_config(source: ModelSource) -> dict:
    """The FLUX transformer's config of ``source``: the embedded one, the folder's or the local hub cache's."""
    if source.kind == "synthetic":
        return CONFIGS[source.size]["transformer"]
    folder = Path(source.location)
    path = folder / TRANSFORMER_CONFIG if folder.is_dir() else hub_file(source.location, TRANSFORMER_CONFIG)
    if path is None or not path.is_file():
        raise SuiteError(f"--model {source.location}: no {TRANSFORMER_CONFIG}; download or copy the model again")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SuiteError(f"--model {source.location}: {path} is not valid JSON ({exc}); copy the model again") from None


def validate_run(source: ModelSource, pool: LoraPool, max_rank: int | None, hotswap: bool) -> None:
    """Raise ``SuiteError`` for the first adapter that does not fit the model and, when a hot-swap recipe will
    run, for the first that cannot be hot-swapped (text-encoder weights, rank above ``--max-rank``, targets the
    first adapter lacks)."""
    shapes = transformer_linear_shapes(transformer_config(source))
    for adapter in pool.adapters:
        check_fits_model(adapter, shapes, source.label)
    if hotswap:
        check_pool(pool, hotswap_target_rank(pool, max_rank))
