"""The run's input checked once, before any test runs: a mistake in the model, the LoRA pool or an option is
the same mistake for every test, so it must stop the run with one message instead of failing each test with it.

Paths are checked without changing anything: a folder that does not exist yet is judged by its nearest existing
parent, and whether it can be written is asked of the file system with a nameless temporary file, so a refused
run leaves the disk as it found it.

The pool is read as diffusers will load it (``perf.spec.loras.inspect_lora``) and matched against the model's Linear
shapes, built on the meta device from the model's ``config.json``: no weights are read, no pipeline is built.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
from pathlib import Path

from perf.errors import SuiteError
from perf.spec.cache import ENV_VAR, cache_root
from perf.spec.loras import LoraPool, check_fits_model, check_pool, hotswap_target_rank, transformer_linear_shapes
from perf.spec.models import CONFIGS, ModelSource, hub_file
from perf.spec.recipes import get_recipe

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


def positive_seconds(text: str) -> float:
    """argparse ``type=`` for time limits: 0, a negative or an infinite number is a usage error (0 once silently
    meant "no limit", and a negative one failed every compiled recipe in ``setitimer``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of seconds: give more than 0, or leave "
                                         "the option out for the profile's budget")
    return value


def recipe_names(text: str | None) -> tuple[str, ...] | None:
    """``--recipes``: None when it is not given (every recipe), else its names, each a known recipe. A list that
    names nothing (``''``, ``','``) is a mistake, never "every recipe"."""
    if text is None:
        return None
    names = tuple(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    if not names:
        raise SuiteError(f"--recipes {text!r} names no recipe: give comma-separated recipe names, or leave the "
                         "option out to run every recipe of the profile")
    for name in names:
        get_recipe(name)
    return names


def serving_scenarios(text: str | None, known: tuple[str, ...], no_serving: bool = False) -> tuple[str, ...] | None:
    """``--serving``: None when it is not given (every scenario), else its names, each one of ``known`` (the
    serving scenarios). A list that names nothing, or one given beside ``--no-serving``, is a mistake."""
    if text is None:
        return None
    names = tuple(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    if no_serving:
        raise SuiteError(f"--serving {text} and --no-serving contradict each other: give one of them")
    if not names:
        raise SuiteError(f"--serving {text!r} names no scenario: give comma-separated scenario names "
                         f"({', '.join(known)}), or leave the option out to serve every one")
    unknown = [name for name in names if name not in known]
    if unknown:
        raise SuiteError(f"--serving: unknown scenario {unknown[0]!r}; known scenarios: {', '.join(known)}")
    return names


def _nearest_existing(path: Path) -> Path:
    return next(folder for folder in (path, *path.parents) if folder.exists())


def check_writable_folder(path: Path, option: str) -> None:
    """``path`` is a folder this process can write into, or one it can create; ``SuiteError`` naming the option,
    the path and the fix otherwise. Nothing is created: the probe is a temporary file with no name (O_TMPFILE)
    or one removed at once, in the nearest folder that exists."""
    path = Path(path).expanduser().absolute()
    existing = _nearest_existing(path)
    if not existing.is_dir():
        where = "is a file" if existing == path else f"cannot be a folder: {existing} is a file"
        raise SuiteError(f"{option} {path}: {where}; give a folder (it is created if missing)")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise SuiteError(f"{option} {path}: cannot create a file in {existing} ({exc.strerror or exc}); give a "
                         "folder this user can write") from None


def check_baselines_folder(path: Path, updating: bool) -> None:
    """The baselines root: written by ``--update-baselines`` (a first recording may create it), else only read,
    so it must exist: a missing one would compare nothing and pass."""
    path = Path(path).expanduser()
    if updating:
        check_writable_folder(path, "--baselines-dir")
    elif not path.is_dir():
        what = "is not a folder" if path.exists() else "no such folder"
        raise SuiteError(f"--baselines-dir {path}: {what}; give the stored baselines' root (the repository's "
                         "baselines/), or record a first set into it with --update-baselines")


def check_cache_folder(override: str | None, source_root: Path) -> None:
    """The cache folder (``--perf-cache``, ``$FLUX_LORA_PERF_CACHE`` or the default) is writable and outside the
    source tree: gigabytes of models and compile caches do not belong in a checkout, and ``--clear-perf-cache``
    removes the whole folder."""
    folder = cache_root(override)
    option = ("--perf-cache" if override else f"${ENV_VAR}" if os.environ.get(ENV_VAR) else "the cache folder")
    root = Path(source_root).resolve()
    if folder == root or root in folder.parents:
        raise SuiteError(f"{option} {folder}: inside the source tree {root}; give a folder outside it "
                         "(default ~/.cache/flux-lora-perf)")
    check_writable_folder(folder, option)


def names_a_folder(spec: str) -> bool:
    """Whether ``--clip-model`` names a local folder (a path) rather than a hub id."""
    return spec.startswith((".", "/", "~")) or Path(spec).expanduser().exists()


def check_clip_model(spec: str | None) -> None:
    """``--clip-model`` is a folder with a model config, or a hub id in the local Hugging Face cache: checked
    from its ``config.json`` alone, so a wrong name stops the run before any pipeline is built."""
    if spec is None:
        return
    if names_a_folder(spec):
        folder = Path(spec).expanduser()
        if not (folder / "config.json").is_file():
            what = "no config.json in it" if folder.is_dir() else "no such folder"
            raise SuiteError(f"--clip-model {spec}: {what}; give a folder holding a CLIP model and processor "
                             "(saved with save_pretrained), or leave the option out (embedded synthetic CLIP)")
    elif hub_file(spec, "config.json") is None:
        raise SuiteError(f"--clip-model {spec}: not in the local Hugging Face cache, and the suite never downloads: "
                         f"fetch it with `hf download {spec}` where there is network, or give a local folder")


def validate_paths(results_dir: Path, baselines_dir: Path, updating: bool, cache: str | None,
                   clip_model: str | None, source_root: Path) -> None:
    """Every path option, before anything is written: results, baselines, cache and CLIP model."""
    check_writable_folder(results_dir, "--results-dir")
    check_baselines_folder(baselines_dir, updating)
    check_cache_folder(cache, source_root)
    check_clip_model(clip_model)


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
