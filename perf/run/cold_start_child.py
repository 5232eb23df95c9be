"""One process, one recipe, one image: the cold start a restarted server pays. Run by ``perf.run.cold_start`` in a
child process; prints one JSON line with the time from process start to the first image and its parts.

    python -m perf.run.cold_start_child --recipe no_fa3_fp8 --image first.npy
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()  # before the heavy imports: they are part of a cold start

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402

from perf.spec.run_spec import add_run_options  # noqa: E402
from perf.spec.validate import positive_seconds  # noqa: E402


def _process_age_s() -> float:
    """Seconds since this process started (Linux: from /proc, so the interpreter's own start counts too)."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.perf_counter() - STARTED


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m perf.run.cold_start_child",
        description="Build one recipe's pipeline in a fresh process and generate one image; print the timings "
        "(process start -> first image, imports, build, first generation with its compile) and the compile-cache "
        "hits and misses as one JSON line. The compile cache is torch's: TORCHINDUCTOR_CACHE_DIR.",
    )
    parser.add_argument("--recipe", required=True, help="recipe name (perf/spec/recipes.py)")
    parser.add_argument("--profile", default=None, help="hardware profile (default: detected; smaller = emulated)")
    add_run_options(parser.add_argument)
    parser.add_argument("--compile-budget", type=positive_seconds, default=None,
                        help="seconds the first generation may take (default: the profile's)")
    parser.add_argument("--image", type=Path, required=True, help="where to save the image (.npy)")
    args = parser.parse_args(argv)

    import numpy as np

    from perf.build.builder import build_pipeline
    from perf.errors import SuiteError
    from perf.run.compile_timeout import compile_budget
    from perf.run.measure import timed
    from perf.run.watchers import RecompileWatcher
    from perf.spec.profiles import apply_memory_cap, resolve_profile
    from perf.spec.recipes import get_recipe
    from perf.spec.run_spec import resolve_run

    imported = _process_age_s()
    try:
        active = resolve_profile(args.profile)
        if active is None:
            raise SuiteError("no profile for this device; pass --profile")
        apply_memory_cap(active)
        budget = args.compile_budget or active.profile.compile_budget_s
        recipe = get_recipe(args.recipe)
        spec = resolve_run(active, args.model, args.lora, args.max_rank, args.perf_cache)
        ready = _process_age_s()
        built = build_pipeline(spec, recipe)
        with RecompileWatcher() as watcher, compile_budget(budget, f"{recipe.name}: first generation"):
            first_image_s, image = timed(built.generate, active.device.type)
    except SuiteError as exc:  # bad input or a compile past its budget: one line, not a stack trace
        print(f"error: {exc}", file=sys.stderr)
        return 2
    np.save(args.image, image)
    print(json.dumps({
        "process_to_first_image_s": round(_process_age_s(), 3),
        "imports_s": round(imported, 3),
        "setup_s": round(ready - imported, 3),
        "build_s": round(built.build_seconds, 3),
        "first_image_s": round(first_image_s, 3),
        "graphs": watcher.count,
        "cache": watcher.cache,
        "recipe": recipe.name,
        "profile": active.describe(),
        "compile_cache_dir": os.environ.get("TORCHINDUCTOR_CACHE_DIR"),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
