"""Cold and warm start: how long a restarted server waits for its first image, and what torch's compile cache
saves. Two fresh processes build the same recipe and generate once (``perf.run.cold_start_child``): the first with an
empty compile cache (cold), the second with the cache the first one filled (warm). Their cache counters say
whether each start really was cold or warm, so a broken cache shows up as a failed check, not a slow number."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from perf.errors import SuiteError
from perf.judge.record import ColdStartSummary, RecordedStart, StartRun

ROOT = Path(__file__).resolve().parents[1]
STARTS = ("cold", "warm")


@dataclass
class ColdStart:
    cold: StartRun
    warm: StartRun
    images: dict[str, np.ndarray] = field(repr=False)

    @property
    def warm_vs_cold(self) -> float:
        """Mean abs difference of the two starts' images: the warm start must run the code the cold one compiled."""
        from perf.run.checks import image_diff

        return image_diff(self.images["warm"], self.images["cold"]).mean_abs

    def summary(self, steady_generation_s: float) -> ColdStartSummary:
        """Both starts with their compile part (first generation minus a steady one) and the warm saving."""

        def recorded(run: StartRun) -> RecordedStart:
            return RecordedStart(**asdict(run), compile_s=run.first_image_s - steady_generation_s)

        return ColdStartSummary(recorded(self.cold), recorded(self.warm), steady_generation_s,
                                self.cold.process_to_first_image_s - self.warm.process_to_first_image_s)


def _command(recipe: str, profile: str, options: dict, image: Path) -> list[str]:
    command = [sys.executable, "-m", "perf.run.cold_start_child", "--recipe", recipe, "--profile", profile,
               "--image", str(image)]
    for flag, value in options.items():
        for item in value if isinstance(value, list) else [value]:
            if item is not None:
                command += [flag, str(item)]
    return command


def _last_json_line(text: str) -> dict | None:
    for line in reversed(text.strip().splitlines()):
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            continue
    return None


COMPILE_CACHES = ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")


def _copy_new(source: str, target: str) -> None:
    """Copy a cache file that the target lacks; never rewrite one in place. A file already there may be a
    compiled kernel this process has loaded (rewriting a mapped shared object crashes the process), and other
    workers may read the folder: a new file appears whole, through a rename."""
    if os.path.exists(target):
        return
    staging = f"{target}.{os.getpid()}.tmp"
    shutil.copy2(source, staging)
    os.replace(staging, target)


def keep_compiled(folder: Path) -> None:
    """Merge the children's compile caches into this process's (``COMPILE_CACHES``, where set), so the suite's
    own build of the recipe starts warm instead of compiling a third time."""
    for variable in COMPILE_CACHES:
        source, target = folder / variable, os.environ.get(variable)
        if target and source.is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True, copy_function=_copy_new)


def measure_cold_start(
    recipe: str, profile: str, cache: Path, options: dict, timeout_s: float, progress: Callable[[str], None] = print
) -> ColdStart:
    """Run the cold then the warm start of ``recipe`` in child processes sharing a compile cache that starts
    empty (a temporary folder under ``cache``, merged into this process's compile cache and removed after).
    ``options``: ``perf.run.cold_start_child`` flags (``--model``, ``--lora`` list, ``--max-rank``, ``--perf-cache``,
    ``--compile-budget``)."""
    folder = Path(tempfile.mkdtemp(prefix="coldstart-", dir=cache))
    env = {**os.environ, **{variable: str(folder / variable) for variable in COMPILE_CACHES}}
    runs, images = {}, {}
    try:
        for start in STARTS:
            state = "empty" if start == "cold" else "filled by the cold start"
            progress(f"[{recipe}] {start} start in a new process (compile cache {state})")
            image = folder / f"{start}.npy"
            try:
                done = subprocess.run(_command(recipe, profile, options, image), cwd=ROOT, env=env, text=True,
                                      capture_output=True, timeout=timeout_s)
            except subprocess.TimeoutExpired:
                raise SuiteError(f"{recipe}: the {start} start gave no image within {timeout_s:.0f} s") from None
            result = _last_json_line(done.stdout)
            if done.returncode != 0 or result is None:
                tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
                raise SuiteError(f"{recipe}: the {start} start failed (exit {done.returncode}):\n{tail}")
            runs[start] = StartRun(**{k: result[k] for k in StartRun.__dataclass_fields__})
            images[start] = np.load(image)
            progress(f"[{recipe}] {start} start: first image {runs[start].process_to_first_image_s:.1f}s after "
                     f"process start (compile cache {runs[start].cache})")
        keep_compiled(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return ColdStart(runs["cold"], runs["warm"], images)
