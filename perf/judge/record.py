"""The typed record of one recipe's run: what the run stage measured, what baselines store, what the verdict, the
calibration and the report read (by attribute). Torch-free: judging a record needs no torch.

A record is frozen data. The run stage builds it from what its case measured (``perf.run.recording``);
``perf.judge.baseline_files`` writes it with ``to_json`` and reads it with ``from_json``, which validates every field
against this schema (types and ranges, not only keys: pydantic, strict) and names the field that fails. A file of
schema 1 (before this module) is upgraded as it is read (``upgrade_v1``); any other version is refused with the fix.

Adding a section is one frozen dataclass and one optional field of ``RunRecord`` (default None: records without it
still read). A new way for a run to end is one more word in ``Outcome``.
"""

from __future__ import annotations

import json
from dataclasses import field
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, TypeAdapter, ValidationError

from perf.errors import BaselineError
from perf.judge.schema import Count, Fraction, GiB, NonNegative, Seconds
from perf.judge.schema import frozen_section as _frozen
from perf.judge.serving_record import ServingResult
from perf.spec.recipes import Recipe
from perf.spec.settings import GenerationSettings

SCHEMA_VERSION = 2
"""2: typed and validated; ``checks`` maps a test to its outcome. 1: the dict record (upgraded as it is read)."""

Outcome = Literal["completed", "out_of_memory", "over_compile_budget"]
COMPLETED: Outcome = "completed"
OUT_OF_MEMORY: Outcome = "out_of_memory"
OVER_COMPILE_BUDGET: Outcome = "over_compile_budget"

# what pytest's report said of a test of the recipe's case; xfailed: an expected failure naming a recorded finding
CheckOutcome = Literal["passed", "failed", "skipped", "xfailed"]

PSNR = Annotated[float, Field(ge=0, le=100)]  # dB, capped at perf.run.quality.PSNR_CEILING
SSIM = Annotated[float, Field(ge=-1, le=1)]
ClipScore = Annotated[float, Field(ge=0, le=100)]  # torchmetrics' CLIPScore scale


def _iso_date(value: str) -> str:
    from datetime import datetime

    datetime.fromisoformat(value)  # ValueError: not a date
    return value


IsoDate = Annotated[str, AfterValidator(_iso_date)]


# --- identity ------------------------------------------------------------------------------------------------


@_frozen
class PoolAdapter:
    """One adapter of the run's LoRA pool: what it is, and which file (its content hash), so a run with another
    pool is never judged against this one (``perf.judge.baseline_files.comparable``)."""

    name: str
    rank: Annotated[int, Field(gt=0)]
    modules: Count
    synthetic: bool
    file: str | None = None  # older records lack file and hash: compared by name, rank and modules
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None


HOTSWAP_SCALING = "peft's hot-swap of an adapter with per-module ranks or alphas (rank_pattern, alpha_pattern)"
"""The subject of the finding ``perf.run.hotswap_scaling`` measures: judging reads it to tell a check that fired
for this known library defect from a false alarm."""


@_frozen
class LoraFinding:
    """What the installed libraries cannot do, or do wrong, with LoRA adapters, as this run measured it (a key
    format diffusers cannot convert at the model's widths, a hot-swap that ignores per-module ranks): recorded with
    the versions it was measured on, so it is never hidden and its absence shows when a release fixes it."""

    subject: str  # what was tried, e.g. "kohya keys for single.attn.to_q, single.proj_mlp"
    problem: str  # what the libraries did instead
    versions: dict[str, str]  # library -> version it was measured on


# --- what the build chose and what the run measured ---------------------------------------------------------


@_frozen
class AttentionChoice:
    """The attention backend set on the transformer and the kernel that ran (``perf.build.attention`` chooses it)."""

    backend: str  # the diffusers attention backend set on the transformer
    kernel: str  # what ran, in words, for the record
    timings_ms: dict[str, NonNegative] = field(default_factory=dict)
    rel_errors: dict[str, float] = field(default_factory=dict)  # vs float32; NaN: failed its check (not a candidate)


@_frozen
class Applied:
    """What ``build_pipeline`` applied, in words, and the process-wide compile settings the run ran under."""

    staged_on_cpu: bool = False
    t5: str | None = None
    fp8: str | None = None
    compile: str | None = None
    vae: str | None = None
    lora: str | None = None  # where the adapter acts, when not through peft's LoRA layers (merged into the weights)
    fused_fp8: str | None = None  # the FP8 linears whose GELU input is quantized in one pass (Recipe.fused_fp8_gelu)
    compile_settings: dict[str, bool | int | float | str] = field(default_factory=dict)


@_frozen
class PeakMemory:
    """Peak memory of the scenario (or of a failed build): GPU allocator peaks, or the process's peak RSS on CPU."""

    allocated_gib: GiB | None  # GPU: max_memory_allocated; CPU: None
    reserved_gib: GiB  # GPU: max_memory_reserved; CPU: process peak RSS (VmHWM)
    kind: Literal["cuda", "cpu-rss"]


@_frozen
class CudaGraphs:
    recorded_in_warmup: Count
    recorded_after_warmup: Count  # 0 once warm: a swap replays the graphs it recorded
    skipped: Count  # compiled graphs run without the CUDA graphs their mode asked for


@_frozen
class Compile:
    scope: Literal["none", "full", "regional"]
    mode: str
    warmup_seconds: Seconds  # first generation on adapter A, compile included
    warmup_graphs: Count  # graphs Dynamo compiled during warm-up
    warmup_cache: dict[str, Count] | None = None  # compile-cache hits and misses of warm-up (older records lack)
    cudagraphs: CudaGraphs | None = None  # older records lack


@_frozen
class SwapStep:
    """One swap of the scenario and the generation after it."""

    adapter: str
    rank: Annotated[int, Field(gt=0)]
    load_seconds: Seconds  # hot-swap (or unload + load) time
    generate_seconds: Seconds  # first generation after the swap
    recompiles: Count  # graphs compiled during the load and that generation
    cudagraphs_recorded: Count = 0  # CUDA graphs recorded during the load and that generation (0 once warm)


@_frozen
class Latency:
    """Timed generations after warm-up: every raw sample (the verdict judges samples, never one number)."""

    samples_s: tuple[Seconds, ...]
    rounds: Count
    median_s: Seconds | None
    mean_s: Seconds | None
    min_s: Seconds | None
    timer: Literal["pytest-benchmark", "suite"] | None = None  # None: not timed
    # the process's CPU seconds of the same calls (perf.run.measure.cpu_timed): reported beside the wall time
    cpu_samples_s: tuple[Seconds, ...] = ()
    # per round: the adapter it served (hot-swap rows rotate through the pool), and the GPU's SM clock and power
    # read right after it, untimed (empty off CUDA or where nvidia-smi cannot be read). On the H200 these rows run
    # at the power cap, where the adapter's data sets the clock: a sample's seconds follow its clock
    adapters: tuple[str, ...] = ()
    sm_clock_mhz: tuple[float, ...] = ()
    power_w: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.rounds != len(self.samples_s):
            raise ValueError(f"rounds is {self.rounds} but there are {len(self.samples_s)} samples")
        for name in ("adapters", "sm_clock_mhz", "power_w"):
            if len(getattr(self, name)) not in (0, self.rounds):
                raise ValueError(f"{name} has {len(getattr(self, name))} entries for {self.rounds} rounds")

    @classmethod
    def of(cls, samples: list[float], timer: Literal["pytest-benchmark", "suite"] | None = None,
           cpu_samples: list[float] = (), adapters: list[str] = (), gpu: list[dict[str, float]] = ()) -> Latency:
        """``gpu``: ``perf.run.measure.gpu_state`` after each round; kept only when every round has one."""
        import statistics

        def per_round(key: str) -> tuple[float, ...]:
            readings = [state.get(key) for state in gpu]
            return tuple(readings) if len(readings) == len(samples) and None not in readings else ()

        return cls(tuple(round(s, 6) for s in samples), len(samples),
                   statistics.median(samples) if samples else None, statistics.fmean(samples) if samples else None,
                   min(samples) if samples else None, timer, tuple(round(s, 6) for s in cpu_samples),
                   tuple(adapters), per_round("sm_clock_mhz"), per_round("power_w"))

    @property
    def median(self) -> float | None:
        """The median of the samples (what the verdict and the report compare), None when not timed."""
        import statistics

        return float(statistics.median(self.samples_s)) if self.samples_s else None


@_frozen
class SwapControls:
    """The swap check under defects written into the real candidate after its swap (each must fail the check)."""

    correct: Fraction  # the real swap, no defect
    eager_error: Fraction  # the same swap against the fresh pipeline's eager step (a figure: other numerics)
    scale: dict[str, Fraction]  # strength error ("0.1": 10% off) -> measured error
    partial: Fraction  # the new adapter reached only some layers; the old one stayed elsewhere
    not_swapped: Fraction  # the old adapter stayed everywhere
    recompiles: Count  # graphs compiled while measuring (must be 0: every write is in place)


@_frozen
class SwapCheck:
    """The one-step swap checks' figures (``perf.run.swap_probe``), in units of the adapter's effect."""

    unit: str
    tolerance: Fraction
    reference: str  # the adapter the probe is measured on
    effect_norm: NonNegative
    swap: Fraction
    swap_back: Fraction
    probe_recompiles: Count
    controls: SwapControls
    image_vs_fresh_eager: NonNegative | None = None  # mean abs difference, a figure for people (older records lack)


@_frozen
class ChurnStep:
    adapter: str
    rank: Annotated[int, Field(gt=0)]
    load_seconds: Seconds
    generate_seconds: Seconds
    recompiles: Count


@_frozen
class ChurnSummary:
    """Twenty hot-swaps in a row over a mixed pool (``perf.run.churn``)."""

    swaps: Count
    adapters: Count
    ranks: tuple[int, ...]
    recompiles: Count
    swap_median_s: Seconds
    swap_p95_s: Seconds
    generate_median_s: Seconds
    images_per_minute: NonNegative
    revisit_drift: NonNegative  # largest mean abs difference of an adapter's image from its first in the churn
    steps: tuple[ChurnStep, ...]
    last_error: Fraction | None = None  # the last adapter's swap-check error; None without a fresh reference


@_frozen
class StartRun:
    """One start in a new process (``perf.run.cold_start``): wall times and what the compile cache did."""

    process_to_first_image_s: Seconds  # process start (interpreter included) -> first image done
    imports_s: Seconds  # process start -> torch and the suite imported
    setup_s: Seconds  # profile resolved, model source and LoRA pool ready
    build_s: Seconds  # pipeline built with the recipe applied
    first_image_s: Seconds  # the first generation: compilation (or loading compiled code) + one image
    graphs: Count  # graphs dynamo compiled during the first generation
    cache: dict[str, Count]  # compile-cache hits and misses during the first generation

    @property
    def compiled_anew(self) -> int:
        return self.cache.get("fxgraph_cache_miss", 0)

    @property
    def loaded_from_cache(self) -> int:
        return self.cache.get("fxgraph_cache_hit", 0)


@_frozen
class RecordedStart(StartRun):
    compile_s: float  # first image less a steady generation of the scenario (may dip below 0 by noise)


@_frozen
class ColdStartSummary:
    """The cold start (empty compile cache) and the warm start (the cache the cold one filled)."""

    cold: RecordedStart
    warm: RecordedStart
    steady_generation_s: Seconds
    warm_saving_s: float  # cold less warm process-to-first-image


@_frozen
class AdapterQuality:
    """One adapter's image against its prompt (CLIP) and the stored thumbnails (PSNR/SSIM)."""

    clip: str  # which CLIP: "synthetic" or the model id (scores of different CLIPs do not compare)
    clip_score: ClipScore
    psnr_vs_reference: PSNR | None = None
    ssim_vs_reference: SSIM | None = None
    psnr_vs_baseline_row: PSNR | None = None


@_frozen
class Quality:
    """The mean CLIP score and the worst fidelity over adapters, and each adapter's figures."""

    clip: str
    clip_score: ClipScore
    psnr_vs_reference: PSNR | None = None
    ssim_vs_reference: SSIM | None = None
    psnr_vs_baseline_row: PSNR | None = None
    per_adapter: dict[str, AdapterQuality] = field(default_factory=dict)


# --- the record ----------------------------------------------------------------------------------------------


@_frozen
class RunRecord:
    """One recipe's run on one profile. The first block says what the record is of (two records compare only when
    device, model source, settings, emulation and LoRA pool agree) and where it came from; then how the run ended
    and what it measured. A run that did not complete (``outcome``) has its identity, ``error`` and peak memory."""

    schema: Literal[2]
    profile: str
    emulated: bool
    device: str
    memory_budget_gib: GiB | None
    model_source: str
    recipe: Recipe
    settings: GenerationSettings
    lora_pool: tuple[PoolAdapter, ...]
    versions: dict[str, str | None]  # library -> version (None: not installed)
    python: str
    date: IsoDate  # ISO 8601, UTC
    commit: str | None
    command: str
    latency: Latency
    session: str | None = None  # the pytest session (all xdist workers of one run share it; older records lack)
    worker: str | None = None  # the pytest-xdist worker that ran it
    cuda_visible_devices: str | None = None
    lora_findings: tuple[LoraFinding, ...] = ()  # what the libraries cannot do with the pool (older records lack)
    serving: dict[str, ServingResult] = field(default_factory=dict)  # scenario -> its figures (perf.run.serving)
    outcome: Outcome = COMPLETED
    error: str | None = None  # why the run did not complete
    checks: dict[str, CheckOutcome] = field(default_factory=dict)  # test name -> what pytest reported
    attention: AttentionChoice | None = None
    applied: Applied | None = None
    target_rank: Annotated[int, Field(gt=0)] | None = None  # hot-swap recipes: the rank adapters are padded to
    build_seconds: Seconds | None = None
    compile: Compile | None = None
    recompiles_after_warmup: Count | None = None
    swaps: tuple[SwapStep, ...] = ()
    peak_memory: PeakMemory | None = None
    memory_at_start_gib: GiB | None = None  # GPU memory in use before the build (the leak check's level)
    swap_check: SwapCheck | None = None
    churn: ChurnSummary | None = None
    cold_start: ColdStartSummary | None = None
    quality: Quality | None = None
    images: dict[str, str] = field(default_factory=dict)  # adapter (or "warmup") -> its thumbnail's file name

    @property
    def name(self) -> str:
        """The recipe's name: what the record file is named after."""
        return self.recipe.name

    @property
    def completed(self) -> bool:
        return self.outcome == COMPLETED


IDENTITY_FIELDS = ("schema", "profile", "emulated", "device", "memory_budget_gib", "model_source", "recipe", "settings",
                   "lora_pool", "versions", "python", "date", "commit", "command", "session", "worker",
                   "cuda_visible_devices")
"""What a record is of and where it came from: the part other JSON outputs (profiles) share with every record."""

_ADAPTER = TypeAdapter(RunRecord)


class RecordError(BaselineError):
    """A record that is not valid data of this schema; the message names the field (or the version) and the fix."""


def _where(location: tuple) -> str:
    """A pydantic error location as a path a reader can follow: ``latency.samples_s[2]``."""
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path or "the record"


def field_errors(error: ValidationError, shown: int = 3) -> str:
    """The first ``shown`` field errors of ``error``, each naming its field, the value found and what it should be."""
    parts = []
    for detail in error.errors()[:shown]:
        found = "" if detail["type"] == "missing" else f" (found {detail['input']!r})"[:120]
        parts.append(f"{_where(detail['loc'])}: {detail['msg']}{found}")
    more = error.error_count() - shown
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def upgrade_v1(data: dict[str, Any]) -> dict[str, Any]:
    """A schema-1 record as schema 2, the same figures: a check's outcome was a dict with ``passed`` (its other
    figures are in the record's sections or were dropped from the suite) and is now what pytest reported."""
    checks = {name: value if isinstance(value, str) else "passed" if value.get("passed") else "failed"
              for name, value in (data.get("checks") or {}).items()}
    return {**data, "schema": SCHEMA_VERSION, "checks": checks}


UPGRADES = {1: upgrade_v1}
"""Schema version -> the function that turns such a record into the next version's, each run once in order."""


def from_data(data: Any) -> RunRecord:
    """A validated record from parsed JSON; ``RecordError`` naming the version or the fields that fail."""
    if not isinstance(data, dict):
        raise RecordError(f"is not a JSON object but {type(data).__name__}")
    version = data.get("schema")
    if version != SCHEMA_VERSION and version not in UPGRADES:
        raise RecordError(
            f"has schema version {version!r}; this suite reads version {SCHEMA_VERSION} (and upgrades "
            f"{', '.join(map(str, UPGRADES))} as it reads): re-record it with --update-baselines"
        )
    while data.get("schema") in UPGRADES:
        data = UPGRADES[data["schema"]](data)
    try:
        return _ADAPTER.validate_json(json.dumps(data))  # JSON mode: arrays are tuples, as the file has them
    except ValidationError as exc:
        raise RecordError(f"has invalid fields: {field_errors(exc)}; re-record it with --update-baselines") from None


def from_json(text: str | bytes) -> RunRecord:
    """A validated record from a record file's text; ``RecordError`` when it is not one."""
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RecordError(f"is corrupt ({exc}); restore it from git or re-record it") from exc
    return from_data(data)


def to_data(record: RunRecord) -> dict[str, Any]:
    return _ADAPTER.dump_python(record, mode="json")


def to_json(record: RunRecord) -> str:
    """The record file's text (sorted keys, one space indents). It is read back and validated first, so a record
    that could not be read is never written."""
    text = json.dumps(to_data(record), indent=1, sort_keys=True) + "\n"
    from_json(text)
    return text
