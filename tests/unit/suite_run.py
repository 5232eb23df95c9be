"""Run the perf suite in a child pytest, as a user would, with its own cache folder (never the user's)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_pytest(*args: str, cache: Path, timeout: float = 120, env: dict[str, str] | None = None
               ) -> subprocess.CompletedProcess:
    """``pytest tests/perf ARGS`` in a child process; ``env``: variables set for it on top of this one's."""
    env = {**os.environ, "FLUX_LORA_PERF_CACHE": str(cache), **(env or {})}
    env.pop("FLUX_LORA_PERF_SESSION", None)  # the child is a run of its own, not part of this one
    return subprocess.run(
        [sys.executable, "-m", "pytest", "tests/perf", *args, "-q", "-p", "no:cacheprovider"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )


def disk_state(*folders: Path) -> dict[Path, tuple[int, int]]:
    """Every path under ``folders`` (and whether each exists), with its size and modification time: equal before
    and after a refused run means nothing was created, changed or removed."""
    state = {}
    for folder in folders:
        paths = [folder, *folder.rglob("*")] if folder.exists() else []
        state[folder] = (folder.exists(), 0)
        state.update({path: (path.stat().st_size, path.stat().st_mtime_ns) for path in paths if path.is_file()})
    return state
