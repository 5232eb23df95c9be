"""The run stage's side of the record: a ``perf.judge.record.RunRecord`` built from what a recipe's run measured
(its identity, the build, the scenario), which pytest, baselines, the verdict and the report all read."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import sys
from pathlib import Path

from perf.build import compat
from perf.build.builder import BuiltPipeline
from perf.judge.baseline_files import git_commit, library_versions, now_iso
from perf.judge.record import (
    SCHEMA_VERSION,
    Applied,
    Compile,
    CudaGraphs,
    Latency,
    LoraFinding,
    Outcome,
    PeakMemory,
    PoolAdapter,
    RunRecord,
    SwapCheck,
)
from perf.run.hotswap_scaling import hotswap_scaling_finding
from perf.run.scenario import ScenarioResult
from perf.spec.loras import LoraPool
from perf.spec.recipes import Recipe
from perf.spec.run_spec import RunSpec
from perf.workers import SESSION_ENV

HASH_CHUNK = 1 << 20  # 1 MiB reads: a real LoRA is hundreds of MB and is never held in memory whole


@functools.cache
def _sha256(path: Path, mtime_ns: int, size: int) -> str:  # mtime and size key the cache: a rewritten file is new
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """The file's sha256, read once per process for each version of the file: every record of a session names
    the same pool, and hashing hundreds of MB per recipe would cost seconds each time."""
    resolved = Path(path).resolve()
    stat = resolved.stat()
    return _sha256(resolved, stat.st_mtime_ns, stat.st_size)


def pool_entries(pool: LoraPool) -> tuple[PoolAdapter, ...]:
    """Each adapter as a record names it: what it is (name, rank, modules, synthetic) and which file (name and
    content hash), so a run with another pool is never judged against this one
    (``perf.judge.baseline_files.comparable``)."""
    return tuple(PoolAdapter(a.name, a.rank, len(a.modules), a.synthetic, a.path.name, file_sha256(a.path))
                 for a in pool.adapters)


def lora_findings(pool: LoraPool) -> tuple[LoraFinding, ...]:
    """What the libraries cannot do with LoRA adapters, as this session measured it: the pool's formats diffusers
    could not load (``perf.spec.loras.format_findings``) and peft's hot-swap ignoring per-module ranks and alphas
    (``perf.run.hotswap_scaling``, probed once per process), and the bugs ``perf.build.compat`` works around."""
    scaling = hotswap_scaling_finding()
    formats = tuple(LoraFinding(f.subject, f.problem, f.versions) for f in pool.findings)
    return formats + ((scaling,) if scaling else ()) + worked_around_findings()


WORKED_AROUND = (
    (compat.hotswap_needs_lora_b_last, "diffusers",
     "diffusers' hot-swap of an adapter whose state dict ends on a lora_A key",
     "load_lora_weights(..., hotswap=True) fails with 'unexpected keys found: ...lora_B.weight': the keys are renamed "
     "for peft with a stale loop variable (the state dict's last key), so no lora_B key is renamed unless the last "
     "key is one (ai-toolkit's reordered files fail); the suite moves a lora_B key last before the swap"),
    (compat.eager_hotswap_swaps_in_smaller_rank, "peft",
     "peft's hot-swap of a smaller-rank adapter into layers padded by enable_lora_hotswap, not compiled",
     "the smaller tensors are swapped in (torch.utils.swap_tensors) instead of copied into the padded ones, so a layer "
     "whose lora_B the adapter lacks keeps a padded lora_B beside the smaller lora_A and generation fails ('mat1 and "
     "mat2 shapes cannot be multiplied'); the suite makes peft copy them into the padded tensors, as compiled models "
     "and peft 0.20+ do"),
)
"""Library bugs ``perf.build.compat`` works around so the checks still run: (probe, library, subject, problem).
Each is probed once per process, and where found every record names it, so a user of that release knows what
loading the same files directly would do."""


def worked_around_findings() -> tuple[LoraFinding, ...]:
    from importlib.metadata import version

    return tuple(LoraFinding(subject, f"{problem} (perf.build.compat)", {library: version(library)})
                 for found, library, subject, problem in WORKED_AROUND if found())


def identity(recipe: Recipe, spec: RunSpec) -> RunRecord:
    """A record of ``recipe`` on ``spec`` with nothing measured yet: what it is of (recipe, profile, device, model
    source, settings, pool) and where it came from (software, source commit, command, session, date)."""
    active = spec.active
    return RunRecord(
        schema=SCHEMA_VERSION,
        profile=active.name,
        emulated=active.emulated,
        device=active.device.name,
        memory_budget_gib=active.profile.memory_budget_gib,
        model_source=spec.source.label,
        recipe=recipe,
        settings=spec.settings,
        lora_pool=pool_entries(spec.pool),
        lora_findings=lora_findings(spec.pool),
        versions=library_versions(),
        python=sys.version.split()[0],
        date=now_iso(),
        commit=git_commit(),
        command=" ".join(sys.argv),
        session=os.environ.get(SESSION_ENV),
        worker=os.environ.get("PYTEST_XDIST_WORKER"),
        cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
        latency=Latency.of([]),
    )


def failure_record(recipe: Recipe, spec: RunSpec, outcome: Outcome, error: str, peak: PeakMemory) -> RunRecord:
    """The record of a recipe that did not complete (out of memory, over its compile budget): kept like any
    other, so the failure is data, not a lost row."""
    return dataclasses.replace(identity(recipe, spec), outcome=outcome, error=error, peak_memory=peak)


def make_record(built: BuiltPipeline, scenario: ScenarioResult, memory_at_start_gib: float,
                swap_check: SwapCheck | None) -> RunRecord:
    """Everything known about a recipe's run once its scenario (and the swap checks' controls) have run; the case
    adds what its tests measure later (latency, quality, churn, cold start) and their outcomes."""
    recipe = built.recipe
    return dataclasses.replace(
        identity(recipe, built.spec),
        attention=built.attention,
        applied=Applied(**built.facts),
        target_rank=built.spec.target_rank if recipe.hotswap else None,
        build_seconds=built.build_seconds,
        compile=Compile(
            scope=recipe.compile,
            mode=recipe.compile_mode or "default",
            warmup_seconds=scenario.warmup_seconds,
            warmup_graphs=scenario.warmup_graphs,
            warmup_cache=scenario.warmup_cache,
            cudagraphs=CudaGraphs(scenario.warmup_cudagraphs, scenario.cudagraphs_recorded_after_warmup,
                                  scenario.cudagraphs_skipped),
        ),
        recompiles_after_warmup=scenario.recompiles_after_warmup,
        swaps=tuple(scenario.steps),
        peak_memory=scenario.peak,
        memory_at_start_gib=memory_at_start_gib,
        swap_check=swap_check,
    )
