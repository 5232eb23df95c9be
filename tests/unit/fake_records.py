"""The one example record the verdict, calibration, report and baseline-file tests build on: a complete, valid
H100 ``RunRecord`` of a recipe, changed field by field with ``dataclasses.replace``'s keywords."""

from __future__ import annotations

import dataclasses

from perf.judge.record import (
    SCHEMA_VERSION,
    AttentionChoice,
    Compile,
    Latency,
    LoraFinding,
    PeakMemory,
    PoolAdapter,
    RunRecord,
)
from perf.spec.recipes import RECIPES, Recipe
from perf.spec.settings import SEED_SETTINGS

H100 = "NVIDIA H100 80GB HBM3"
SYNTHETIC_POOL = (PoolAdapter("style_a", 16, 7, True, "pytorch_lora_weights.safetensors", "a" * 64),
                  PoolAdapter("style_b", 32, 6, True, "pytorch_lora_weights.safetensors", "b" * 64))
FINDINGS = (LoraFinding("bfl keys for double.attn.to_q", "diffusers converts them to keys load_lora_weights ignores",
                        {"diffusers": "0.42.1", "peft": "0.21.2"}),)


def example_record(recipe: str = "optimized", samples: list[float] = (1.0, 1.004, 0.997), **changes) -> RunRecord:
    """A completed run of ``recipe`` (its ``RECIPES`` entry, or a plain one of that name) on an H100 with the
    synthetic full-size model, timed ``samples``; ``changes`` replace fields."""
    made = RunRecord(
        schema=SCHEMA_VERSION, profile="h100", emulated=False, device=H100, memory_budget_gib=80.0,
        model_source="synthetic-full", recipe=RECIPES.get(recipe) or Recipe(recipe, ("h100",)),
        settings=SEED_SETTINGS, lora_pool=SYNTHETIC_POOL, lora_findings=FINDINGS,
        versions={"torch": "2.11.0", "diffusers": "0.42.1"},
        python="3.11.7", date="2026-11-24T07:00:00+00:00", commit="0997180", command="pytest -m h100",
        latency=Latency.of(list(samples), "pytest-benchmark"),
        attention=AttentionChoice("native", "native SDPA"), build_seconds=12.0,
        compile=Compile("full", "default", warmup_seconds=30.0, warmup_graphs=1),
        recompiles_after_warmup=0, peak_memory=PeakMemory(30.0, 32.0, "cuda"), memory_at_start_gib=0.0,
    )
    return dataclasses.replace(made, **changes)
