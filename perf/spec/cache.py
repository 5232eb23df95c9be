"""The one folder for everything the suite generates outside the source tree (synthetic models and LoRAs,
compile caches). Configurable with ``--perf-cache`` or ``FLUX_LORA_PERF_CACHE``; ``--clear-perf-cache`` empties it."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

ENV_VAR = "FLUX_LORA_PERF_CACHE"


def cache_root(override: str | os.PathLike | None = None) -> Path:
    """The cache root, not created: ``override``, else ``$FLUX_LORA_PERF_CACHE``, else ``~/.cache/flux-lora-perf``
    (``perf.spec.validate`` checks it before anything is written there)."""
    root = override or os.environ.get(ENV_VAR) or Path.home() / ".cache" / "flux-lora-perf"
    return Path(root).expanduser().resolve()


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """``cache_root``, created if it is missing."""
    path = cache_root(override)
    path.mkdir(parents=True, exist_ok=True)
    return path


def clear_cache(override: str | os.PathLike | None = None) -> Path:
    """Delete the cache folder and everything in it; returns the path removed."""
    path = cache_dir(override)
    shutil.rmtree(path)
    return path


def build_once(folder: Path, marker: str, build: Callable[[Path], None]) -> Path:
    """``folder`` made by ``build(staging)`` unless ``folder/marker`` exists: built in a staging folder beside
    it and renamed into place, so a killed process never leaves a half-written one. Builders take turns under a
    file lock (pytest-xdist workers share the cache): without it a second builder could remove a folder the first
    had just put in place while a third process read from it."""
    if (folder / marker).is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder.parent / f".{folder.name}.lock")):
        if (folder / marker).is_file():  # built by whoever held the lock before
            return folder
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=folder.parent))
        try:
            build(staging)
            shutil.rmtree(folder, ignore_errors=True)  # a half-written folder of a killed builder
            staging.rename(folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return folder
