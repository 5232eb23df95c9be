"""Is the hot-swapped adapter the one that acts? One denoising step, against a reference with the same numerics.

A fresh *eager* pipeline is the wrong reference for a compiled one: on the H100 a compiled full-graph FP8 pipeline's
28-step image drifts 0.044 (mean abs) from an eager one's, more than a 10% error in the adapter's strength moves it
(0.017); one denoising step does not help, as FP8 activation quantization rounds differently from the first step
(compiled vs eager: 55% of the adapter's effect on the optimized_fast row). So the reference runs the candidate's
own compiled graph, fed with the LoRA state a fresh pipeline got by loading the adapter directly (no hot-swap):
that state is copied in place into the candidate (padded to its hot-swap rank, as PEFT pads), the step is taken,
and the swap's own state is put back. Compiled steps are repeatable bit for bit, so a correct swap reads 0 and
any difference is the swap's:

    error = ||step(swapped) - step(fresh state)|| / ||step(fresh state) - step(no LoRA)||

the part of the adapter's effect that is wrong: a strength off by 10% reads about 0.10, a swap that did not happen
about 1 or more. The inputs are the fresh pipeline's first step (its seeded noise, its prompt's embeddings); the
fresh pipeline's own eager step is kept as a figure for the record (``eager_error``). The controls (wrong strength,
a swap that reached only some modules, no swap at all) are written into the real candidate the same way and undone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from perf.build.merge import lora_modules
from perf.judge.record import SwapControls
from perf.run.watchers import RecompileWatcher

SCALE_ERRORS = (0.01, 0.03, 0.1)  # the strength errors each run measures (the adapter's effect scaled by 1 - e)
PARTIAL_MODULE = "to_q"  # the partial-swap control: the new adapter reaches only these modules


@dataclass(frozen=True)
class StepInputs:
    """The keyword arguments of one transformer call inside the pipeline, on the CPU."""

    kwargs: dict = field(repr=False)

    def on(self, device: torch.device) -> dict:
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in self.kwargs.items()}


# module -> (A, B, scaling, lora_B bias or None)
LoraState = dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor | float, torch.Tensor | None]]


@dataclass(frozen=True)
class StepReference:
    """What a fresh eager pipeline that loaded the adapter directly leaves behind: the inputs of its first step,
    its LoRA state (on the CPU, unpadded), and its own step with and without LoRA (eager numerics: a figure only)."""

    adapter: str
    inputs: StepInputs
    state: LoraState = field(repr=False)
    eager_output: torch.Tensor = field(repr=False)
    eager_without_lora: torch.Tensor = field(repr=False)

    def eager_error(self, output: torch.Tensor) -> float:
        """``output``'s distance from the eager step, in units of the adapter's eager effect."""
        return float((output - self.eager_output).norm() / (self.eager_output - self.eager_without_lora).norm())


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
    """``pipe``'s LoRA state, and its step on ``inputs`` with its LoRA and with LoRA disabled."""
    from perf.build.builder import HOTSWAP_ADAPTER

    state = snapshot(lora_modules(pipe.transformer, HOTSWAP_ADAPTER), HOTSWAP_ADAPTER, device="cpu")
    output = step_output(pipe, inputs)
    pipe.transformer.disable_lora()
    try:
        without = step_output(pipe, inputs)
    finally:
        pipe.transformer.enable_lora()
    return StepReference(adapter, inputs, state, output, without)


# --- the candidate's LoRA state, for the controls ---------------------------------------------------------------


def snapshot(modules: dict[str, torch.nn.Module], adapter: str, device: str | None = None) -> LoraState:
    """Copies of each layer's A, B, scaling and lora_B bias (peft's lora_bias): what a swap writes."""
    return {
        name: (m.lora_A[adapter].weight.detach().to(device, copy=True),
               m.lora_B[adapter].weight.detach().to(device, copy=True), _copy(m.scaling[adapter], device),
               _copy(m.lora_B[adapter].bias, device))
        for name, m in modules.items()
    }


def _copy(value, device: str | None):
    return value.detach().to(device, copy=True) if isinstance(value, torch.Tensor) else value


def _set_bias(module, adapter: str, bias: torch.Tensor | None) -> None:
    """The layer's lora_B bias set to ``bias`` (zero where the state has none, as PEFT zeroes a missing key)."""
    own = module.lora_B[adapter].bias
    if own is not None:
        own.data.zero_()
        if bias is not None:
            own.data.copy_(bias)


def restore(modules: dict[str, torch.nn.Module], adapter: str, state: LoraState, only: set[str] | None = None) -> None:
    """Write ``state`` into the layers in place, as a hot-swap does (compiled graphs read the same tensors): each
    A and B into the first rows/columns of the layer's (possibly rank-padded) weights, zeros elsewhere, and layers
    the state does not name set to no effect, as PEFT does for modules a swapped-in adapter lacks."""
    for name, module in modules.items():
        if only is not None and name not in only:
            continue
        a_out, b_out = module.lora_A[adapter].weight.data, module.lora_B[adapter].weight.data
        if name not in state:
            a_out.zero_()
            b_out.zero_()
            _set_bias(module, adapter, None)
            continue
        a, b, scaling, bias = state[name]
        rank = a.shape[0]
        a_out.zero_()
        b_out.zero_()
        a_out[:rank].copy_(a)
        b_out[:, :rank].copy_(b)
        _set_bias(module, adapter, bias)
        _set_scaling(module, adapter, scaling)


def _set_scaling(module, adapter: str, value) -> None:
    if isinstance(module.scaling[adapter], torch.Tensor):
        module.scaling[adapter].copy_(value if isinstance(value, torch.Tensor) else torch.tensor(value))
    else:
        module.scaling[adapter] = float(value)


def scale_all(modules: dict[str, torch.nn.Module], adapter: str, state: LoraState, factor: float) -> None:
    """Every layer's LoRA B scaled by ``factor``: the adapter's effect at the wrong strength (B rather than the
    scaling, which is a constant in a recipe compiled without hot-swap preparation)."""
    for name, (_, b, _, bias) in state.items():
        modules[name].lora_B[adapter].weight.data.copy_(b * factor)
        _set_bias(modules[name], adapter, None if bias is None else bias * factor)


def zero_effect(modules: dict[str, torch.nn.Module], adapter: str) -> None:
    for module in modules.values():
        module.lora_B[adapter].weight.data.zero_()
        _set_bias(module, adapter, None)


@dataclass(frozen=True)
class SameNumerics:
    """The candidate's step with the fresh pipeline's LoRA state, and with none: the check's reference and unit."""

    output: torch.Tensor = field(repr=False)
    without_lora: torch.Tensor = field(repr=False)

    @property
    def effect(self) -> float:
        return float((self.output - self.without_lora).norm())

    def error(self, output: torch.Tensor) -> float:
        """The part of the adapter's effect that ``output`` gets wrong (0: exactly the fresh pipeline's state)."""
        return float((output - self.output).norm()) / self.effect


def same_numerics_reference(built, reference: StepReference, scale: float = 1.0, adapter: str | None = None
                            ) -> SameNumerics:
    """Run the candidate's own graph with ``reference``'s state, then with no LoRA effect, and put its state back.
    ``scale``: the state's scaling multiplied by it, what a request's LoRA scale or an adapter's weight does to
    every layer (the same multiplication of the same tensors, so a request at that scale reads 0 against it).
    ``adapter``: the slot written (default: the hot-swap slot); other active slots keep their state, so the unit is
    this slot's effect beside them."""
    from perf.build.builder import HOTSWAP_ADAPTER

    adapter = adapter or HOTSWAP_ADAPTER
    modules = lora_modules(built.pipe.transformer, adapter)
    own = snapshot(modules, adapter)
    restore(modules, adapter, reference.state)
    if scale != 1.0:
        for module in modules.values():
            _set_scaling(module, adapter, module.scaling[adapter] * scale)
    built.lora_written()
    output = step_output(built.pipe, reference.inputs)
    zero_effect(modules, adapter)
    built.lora_written()
    without = step_output(built.pipe, reference.inputs)
    restore(modules, adapter, own)
    built.lora_written()
    return SameNumerics(output, without)


@dataclass(frozen=True)
class ControlResult:
    """The check on one real swap, and its error under each defect written into the candidate (each must fail)."""

    reference: SameNumerics = field(repr=False)
    correct: float  # the real swap, no defect
    eager_error: float  # the same swap against the fresh pipeline's eager step (a figure: other numerics)
    scale: dict[float, float]  # strength error -> measured error
    partial: float  # the new adapter reached only PARTIAL_MODULE layers; the old one stayed elsewhere
    not_swapped: float  # the old adapter stayed everywhere
    recompiles: int  # graphs compiled while measuring (must be 0: every write is in place)

    def defects(self) -> dict[str, float]:
        """The error each defect the check must catch reads."""
        return {"strength off by 10%": self.scale[0.1], f"swap reached only {PARTIAL_MODULE}": self.partial,
                "old adapter stayed": self.not_swapped}

    def summary(self) -> SwapControls:
        """The figures as the record keeps them."""
        return SwapControls(self.correct, self.eager_error, {str(k): v for k, v in self.scale.items()}, self.partial,
                            self.not_swapped, self.recompiles)


def run_controls(built, reference: StepReference, target) -> ControlResult:
    """Hot-swap ``built`` from its current adapter to ``target`` (the reference's adapter) as it always does, take
    the same-numerics reference, then measure the check's error as it is and with each defect written in place,
    restoring the swap's state after each. Ends with ``target`` active, as a plain swap would."""
    from perf.build.builder import HOTSWAP_ADAPTER

    modules = lora_modules(built.pipe.transformer, HOTSWAP_ADAPTER)
    previous = snapshot(modules, HOTSWAP_ADAPTER)
    with RecompileWatcher() as watcher:
        built.load_adapter(target)
        swapped = snapshot(modules, HOTSWAP_ADAPTER)
        same = same_numerics_reference(built, reference)

        def measured() -> float:
            built.lora_written()
            return same.error(step_output(built.pipe, reference.inputs))

        output = step_output(built.pipe, reference.inputs)
        correct, eager = same.error(output), reference.eager_error(output)
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
        built.lora_written()
    return ControlResult(same, correct, eager, scale, partial_error, not_swapped, watcher.count)
