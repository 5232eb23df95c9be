"""Is the hot-swapped adapter the one that acts? One denoising step, measured in units of the adapter's effect.

A 28-step image from a compiled pipeline drifts from an eager one's (H100, full-graph FP8: 0.044 mean abs) by more
than a 10% error in the adapter's strength moves it (0.017): an image check against an eager reference false-alarms
and is blind at once. So the swap checks look at one transformer call instead, on inputs captured from a fresh
eager pipeline that loaded the adapter directly (its first step: the seeded noise, its prompt's embeddings):

    error = ||candidate(x) - reference(x)|| / ||reference(x) - reference_without_lora(x)||

the part of the adapter's effect that is wrong. One step leaves compile drift no time to grow, and the unit makes
the figure mean the same on every model and adapter: a strength off by 10% reads about 0.10, a swap that did not
happen about 1 or more. Tolerances are in ``perf.checks``; the controls here (wrong strength, a swap that reached only
some modules, no swap at all) are applied to the real candidate in place, measured, and undone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from perf.watch import RecompileWatcher

SCALE_ERRORS = (0.01, 0.03, 0.1)  # the strength errors each run measures (the adapter's effect scaled by 1 - e)
PARTIAL_MODULE = "to_q"  # the partial-swap control: the new adapter reaches only these modules


@dataclass(frozen=True)
class StepInputs:
    """The keyword arguments of one transformer call inside the pipeline, on the CPU."""

    kwargs: dict = field(repr=False)

    def on(self, device: torch.device) -> dict:
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in self.kwargs.items()}


@dataclass(frozen=True)
class StepReference:
    """A fresh eager pipeline's first step with the adapter loaded directly, and the same step without LoRA."""

    adapter: str
    inputs: StepInputs
    output: torch.Tensor = field(repr=False)
    without_lora: torch.Tensor = field(repr=False)

    @property
    def effect(self) -> float:
        return float((self.output - self.without_lora).norm())

    def error(self, output: torch.Tensor) -> float:
        """The part of the adapter's effect that ``output`` gets wrong (0: exactly the reference)."""
        return float((output - self.output).norm()) / self.effect


def _cpu(value):
    return value.detach().to("cpu", copy=True) if isinstance(value, torch.Tensor) else value


@contextlib.contextmanager
def capture_first_step(transformer: torch.nn.Module) -> Iterator[list[StepInputs]]:
    """Records the keyword arguments of ``transformer``'s first call while open (later calls pass through)."""
    captured: list[StepInputs] = []

    def hook(module, args, kwargs):
        if not captured:
            captured.append(StepInputs({k: _cpu(v) for k, v in kwargs.items()}))

    handle = transformer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield captured
    finally:
        handle.remove()


@torch.no_grad()
def step_output(pipe, inputs: StepInputs) -> torch.Tensor:
    """One transformer call as the pipeline makes it (no grad, inside its cache context, on its execution device:
    the same guards, so a compiled transformer runs its compiled graph), as float32 on the CPU."""
    transformer = pipe.transformer
    context = transformer.cache_context("cond") if hasattr(transformer, "cache_context") else contextlib.nullcontext()
    with context:
        out = transformer(**inputs.on(pipe._execution_device))
    return (out[0] if isinstance(out, tuple) else out.sample).float().cpu()


def reference_step(pipe, inputs: StepInputs, adapter: str) -> StepReference:
    """``pipe``'s step on ``inputs`` with its LoRA and with LoRA disabled (the adapter's effect is the difference)."""
    output = step_output(pipe, inputs)
    pipe.transformer.disable_lora()
    try:
        without = step_output(pipe, inputs)
    finally:
        pipe.transformer.enable_lora()
    return StepReference(adapter, inputs, output, without)


# --- the candidate's LoRA state, for the controls ---------------------------------------------------------------


def lora_modules(transformer: torch.nn.Module, adapter: str) -> dict[str, torch.nn.Module]:
    """Every PEFT LoRA layer holding ``adapter``, by module name."""
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in transformer.named_modules() if isinstance(m, LoraLayer) and adapter in m.lora_A}


LoraState = dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor | float]]


def snapshot(modules: dict[str, torch.nn.Module], adapter: str) -> LoraState:
    """Copies of each layer's A, B and scaling: what a swap writes."""
    return {
        name: (m.lora_A[adapter].weight.detach().clone(), m.lora_B[adapter].weight.detach().clone(),
               _clone(m.scaling[adapter]))
        for name, m in modules.items()
    }


def _clone(value):
    return value.detach().clone() if isinstance(value, torch.Tensor) else value


def restore(modules: dict[str, torch.nn.Module], adapter: str, state: LoraState, only: set[str] | None = None) -> None:
    """Copy ``state`` back into the layers (in place, as a hot-swap does, so compiled graphs see it)."""
    for name, (a, b, scaling) in state.items():
        if only is not None and name not in only:
            continue
        module = modules[name]
        module.lora_A[adapter].weight.data.copy_(a)
        module.lora_B[adapter].weight.data.copy_(b)
        _set_scaling(module, adapter, scaling)


def _set_scaling(module, adapter: str, value) -> None:
    if isinstance(module.scaling[adapter], torch.Tensor):
        module.scaling[adapter].copy_(value if isinstance(value, torch.Tensor) else torch.tensor(value))
    else:
        module.scaling[adapter] = float(value)


def scale_all(modules: dict[str, torch.nn.Module], adapter: str, state: LoraState, factor: float) -> None:
    """Every layer's LoRA B scaled by ``factor``: the adapter's effect at the wrong strength (B rather than the
    scaling, which is a constant in a recipe compiled without hot-swap preparation)."""
    for name, (_, b, _) in state.items():
        modules[name].lora_B[adapter].weight.data.copy_(b * factor)


@dataclass(frozen=True)
class ControlResult:
    """The check's error under each defect, and graphs compiled while measuring them (must be 0)."""

    correct: float  # the real swap, no defect
    scale: dict[float, float]  # strength error -> measured error
    partial: float  # the new adapter reached only PARTIAL_MODULE layers; the old one stayed elsewhere
    not_swapped: float  # the old adapter stayed everywhere
    recompiles: int

    def to_dict(self) -> dict:
        return {"correct": self.correct, "scale": {str(k): v for k, v in self.scale.items()},
                "partial": self.partial, "not_swapped": self.not_swapped, "recompiles": self.recompiles}


def run_controls(built, reference: StepReference, target) -> ControlResult:
    """Hot-swap ``built`` from its current adapter to ``target`` (the reference's adapter) as it always does, then
    measure the check's error as it is and with each defect written in place, restoring the swap's state after
    each. Ends with ``target`` active, as a plain swap would."""
    from perf.builder import HOTSWAP_ADAPTER

    modules = lora_modules(built.pipe.transformer, HOTSWAP_ADAPTER)
    previous = snapshot(modules, HOTSWAP_ADAPTER)

    def measured() -> float:
        return reference.error(step_output(built.pipe, reference.inputs))

    with RecompileWatcher() as watcher:
        built.load_adapter(target)
        swapped = snapshot(modules, HOTSWAP_ADAPTER)
        correct = measured()
        scale = {}
        for error in SCALE_ERRORS:
            scale_all(modules, HOTSWAP_ADAPTER, swapped, 1 - error)
            scale[error] = measured()
        partial = {n for n in modules if n.endswith(PARTIAL_MODULE)}
        restore(modules, HOTSWAP_ADAPTER, previous, only=set(modules) - partial)
        restore(modules, HOTSWAP_ADAPTER, swapped, only=partial)
        partial_error = measured()
        restore(modules, HOTSWAP_ADAPTER, previous)
        not_swapped = measured()
        restore(modules, HOTSWAP_ADAPTER, swapped)
    return ControlResult(correct, scale, partial_error, not_swapped, watcher.count)
