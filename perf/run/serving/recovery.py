"""After a scenario the libraries broke: the pipeline put back as the case built it, or every later scenario
recorded as not run."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from perf.build.builder import HOTSWAP_ADAPTER, BuiltPipeline
from perf.judge.serving_record import (
    ServingResult,
)
from perf.run.measure import free_memory
from perf.run.serving.requests import (
    activate,
    error_line,
)
from perf.run.serving.resident import reopen_slot
from perf.run.swap_probe import (
    LoraState,
    lora_modules,
    restore,
    snapshot,
)
from perf.spec.loras import LoraAdapter


def not_run(scenario: str, reason: str) -> ServingResult:
    """The result of a scenario not run because the pipeline is unusable (``reason``): a failure, never a pass."""
    return ServingResult(scenario, (), failure=f"not run: {reason}", finding=f"{scenario}: not run: {reason}")


@dataclass(frozen=True)
class AsBuilt:
    """The hot-swap slot's LoRA state (A, B, scalings, biases; on the CPU) and the adapter it holds, taken before a
    scenario: what ``recover`` writes back. Not a hot-swap of the adapter from its file: peft's hot-swap writes
    another scaling than the first load for per-module ranks (the case's ``hotswap_scaling`` finding)."""

    state: LoraState
    current: LoraAdapter

    @classmethod
    def take(cls, built: BuiltPipeline) -> AsBuilt:
        return cls(snapshot(lora_modules(built.pipe.transformer, HOTSWAP_ADAPTER), HOTSWAP_ADAPTER, "cpu"),
                   built.current)


def recover(built: BuiltPipeline, before: AsBuilt) -> str | None:
    """The pipeline put back as it was before a scenario that raised, so the next scenario measures its own
    requests, not the wreck of this one: graphs dropped, every adapter but the hot-swap slot deleted, the slot the
    active one with new scaling tensors (an error can leave the old ones unreadable: under CUDA graphs, outputs of a
    replay since overwritten, which peft's next hot-swap reads) and ``before``'s state written into it, then the
    default request served. None where it served; otherwise the error, and the case runs no further scenario."""
    torch.compiler.reset()
    free_memory(built.device_type)
    pipe = built.pipe
    try:
        others = [name for name in getattr(pipe.transformer, "peft_config", {}) if name != HOTSWAP_ADAPTER]
        if others:
            pipe.delete_adapters(others)
        reopen_slot(built)
        activate(pipe.transformer, HOTSWAP_ADAPTER)
        modules = lora_modules(pipe.transformer, HOTSWAP_ADAPTER)
        for module in modules.values():
            module.scaling[HOTSWAP_ADAPTER] = torch.zeros((), device=module.lora_A[HOTSWAP_ADAPTER].weight.device)
        restore(modules, HOTSWAP_ADAPTER, before.state)
        built.lora_written()
        built.current = before.current
        built.generate()
    except Exception as exc:  # the pipeline stays unusable: said once, in each later scenario's result
        free_memory(built.device_type)
        return error_line(exc, 300)
    return None
