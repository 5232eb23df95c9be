"""Two adapters at once with weights: two hot-swap slots with the weights written in place, against diffusers'
``set_adapters(slots, weights)``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from perf.build.builder import HOTSWAP_ADAPTER, BuiltPipeline, CachedLora
from perf.judge.serving_record import (
    ServingResult,
    SetAdaptersFigures,
    TwoFigures,
    WeightChange,
)
from perf.judge.tolerances import serving_tolerance
from perf.run.serving.requests import (
    activate,
    adapter_named,
    leaves_pipeline_as_built,
    noise_floor,
    scenario_result,
    serve_all,
)
from perf.run.swap_probe import (
    StepInputs,
    StepReference,
    lora_modules,
    same_numerics_reference,
    step_output,
)
from perf.run.watchers import RecompileWatcher
from perf.spec.loras import LoraAdapter, check_hotswap

TWO_WEIGHTS = ((1.0, 1.0), (0.7, 0.3), (0.3, 0.9))  # two adapters' weights per request, written in place
SET_ADAPTERS_WEIGHTS = ((0.7, 0.3), (1.0, 1.0), (0.5, 0.5))  # weight changes through diffusers' set_adapters


@dataclass
class TwoSlots:
    """Two hot-swap slots active at once, each with its weight: a second slot loaded into the compiled
    transformer with hot-swap preparation armed again (diffusers arms it for the first load only), so it is padded
    to the target rank with tensor scalings like the first. A request's weights are written into the slots'
    scaling tensors in place (``weigh``), as a hot-swap writes them; a hot-swap writes the new adapter's own
    scaling, so the weights are written again after it."""

    built: BuiltPipeline
    cache: dict[str, CachedLora]
    base: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # slot -> its scalings

    SLOTS = (HOTSWAP_ADAPTER, "slot_1")

    def open(self, first: LoraAdapter) -> None:
        """The second slot, loaded with the first adapter (the union of the pool's modules: any other fits)."""
        pipe = self.built.pipe
        pipe.enable_lora_hotswap(target_rank=self.built.spec.target_rank, check_compiled="ignore")
        self.cache[first.name].load(pipe, adapter_name=self.SLOTS[1])
        activate(pipe.transformer, list(self.SLOTS))

    def swap(self, slot: int, adapter: LoraAdapter) -> None:
        check_hotswap(self.built.first, adapter, self.built.spec.target_rank)
        name = self.SLOTS[slot]
        self.cache[adapter.name].load(self.built.pipe, adapter_name=name, hotswap=True)
        self.base[name] = {n: m.scaling[name].clone() for n, m in lora_modules(self.built.pipe.transformer,
                                                                                name).items()}

    def weigh(self, weights: tuple[float, float]) -> None:
        for name, weight in zip(self.SLOTS, weights, strict=True):
            for module_name, module in lora_modules(self.built.pipe.transformer, name).items():
                module.scaling[name].copy_(self.base[name][module_name] * weight)

    def serve(self, adapters: tuple[LoraAdapter, LoraAdapter], weights: tuple[float, float]) -> None:
        """A request's state: each slot's adapter hot-swapped in, then the weights."""
        for slot, adapter in enumerate(adapters):
            self.swap(slot, adapter)
        self.weigh(weights)

    def close(self) -> None:
        """The second slot deleted, the first made the only active one, its scalings tensors again (diffusers'
        ``set_adapters`` writes floats) holding its adapter's as a hot-swap from file writes them."""
        pipe, transformer = self.built.pipe, self.built.pipe.transformer
        pipe.delete_adapters([self.SLOTS[1]])
        activate(transformer, HOTSWAP_ADAPTER)
        for module in lora_modules(transformer, HOTSWAP_ADAPTER).values():
            if not isinstance(module.scaling[HOTSWAP_ADAPTER], torch.Tensor):
                module.scaling[HOTSWAP_ADAPTER] = torch.tensor(module.scaling[HOTSWAP_ADAPTER],
                                                               device=module.lora_A[HOTSWAP_ADAPTER].weight.device)
        self.built.load_adapter(self.built.current)


def run_two(built: BuiltPipeline, reference: StepReference, **_) -> ServingResult:
    """Two adapters at once with weights (``TwoSlots``): requests that change the weights and hot-swap either slot;
    the swap check on each slot holding the reference's adapter beside the other (in units of its effect there),
    its controls a weight not applied and a swap not made. Then diffusers' way, ``set_adapters([a, b], weights)``:
    graphs compiled per weight change, and the swap check on its weights after a hot-swap."""
    pool = built.spec.pool.adapters
    a, b = built.first, adapter_named(built, reference.adapter)
    c = next((x for x in pool if x not in (a, b)), a)
    slots = TwoSlots(built, {x.name: CachedLora.read(x) for x in (a, b, c)})
    states = {f"{a.name} {wa} + {b.name} {wb}": ((a, b), (wa, wb)) for wa, wb in TWO_WEIGHTS}
    states[f"{b.name} 0.6 + {c.name} 0.8 (both slots swapped)"] = ((b, c), (0.6, 0.8))
    with leaves_pipeline_as_built(built):
        with RecompileWatcher() as flooring:
            floor = noise_floor(built, reference)
        try:
            slots.open(a)
            requests = serve_all(built, {label: {} for label in states},
                                 {label: lambda s=state: slots.serve(*s) for label, state in states.items()})
            errors, controls, checks = {}, {}, []
            with RecompileWatcher() as probing:
                for slot, adapters, weights_ in ((1, (a, b), (0.3, 0.9)), (0, (b, c), (0.6, 0.8))):
                    where = f"{b.name} in slot {slot} at {weights_[slot]} beside {adapters[1 - slot].name}"
                    slots.serve(adapters, weights_)
                    same = same_numerics_reference(built, reference, weights_[slot], TwoSlots.SLOTS[slot])
                    errors[where] = same.error(step_output(built.pipe, reference.inputs))
                    slots.weigh(tuple(1.0 if i == slot else w for i, w in enumerate(weights_)))
                    controls[f"{where}: its weight not applied"] = same.error(step_output(built.pipe, reference.inputs))
                    slots.serve(tuple(a if i == slot else x for i, x in enumerate(adapters)), weights_)
                    controls[f"{where}: the swap to {b.name} not made"] = same.error(
                        step_output(built.pipe, reference.inputs))
                    checks.append((adapters, weights_, same))
            diffusers = _set_adapters_weights(built, slots, checks[0], SET_ADAPTERS_WEIGHTS, reference.inputs)
        finally:
            slots.close()
    return scenario_result(built, "two", requests, errors, controls, probing.count + flooring.count,
                           noise_floor=floor, two=TwoFigures(TwoSlots.SLOTS, diffusers),
                           detail=_two_finding(diffusers, serving_tolerance(floor)))


def _set_adapters_weights(built: BuiltPipeline, slots: TwoSlots, check: tuple, weights: Sequence[tuple[float, float]],
                          probe: StepInputs) -> SetAdaptersFigures:
    """diffusers' ``set_adapters(slots, weights)`` for each of ``weights`` after the slots were served ``check``'s
    adapters: graphs compiled by each (and its step), and its step against ``check``'s reference (the weights
    in place), with ``set_adapters`` given the same weights. ``slot_alpha_over_r_stale``: the second slot's layers
    keep another ``lora_alpha / r`` than the scaling its adapter was hot-swapped in with (what ``set_scale`` reads)."""
    adapters, checked_weights, same = check
    slots.serve(adapters, (1.0, 1.0))
    layers = lora_modules(built.pipe.transformer, TwoSlots.SLOTS[1]).items()
    stale = any(abs(m.lora_alpha[name] / m.r[name] - float(slots.base[name][n])) > 1e-6
                for name in TwoSlots.SLOTS[1:] for n, m in layers)
    per_change = []
    for pair in (checked_weights, *weights):
        with RecompileWatcher() as watcher:
            built.pipe.set_adapters(list(TwoSlots.SLOTS), list(pair))
            output = step_output(built.pipe, probe)
        per_change.append(WeightChange(pair, watcher.count))
        if pair == checked_weights:
            error = same.error(output)
    return SetAdaptersFigures(tuple(per_change), error, checked_weights, stale)


def _two_finding(diffusers: SetAdaptersFigures, tolerance: float) -> str | None:
    """What diffusers' ``set_adapters`` with weights does to the compiled hot-swap pipeline, from the figures."""
    counts = [change.recompiles for change in diffusers.per_weight_change]
    parts = []
    if any(counts):
        parts.append(f"set_adapters(slots, weights) compiled {counts} graph(s) for the weights "
                     f"{[list(c.weights) for c in diffusers.per_weight_change]} (peft's set_scale writes each "
                     f"scaling as a float in place of the tensor the graph was compiled with)")
    if diffusers.error > tolerance:
        parts.append(f"after a hot-swap, set_adapters with weights {list(diffusers.checked_weights)} serves the slot "
                     f"off by {diffusers.error:.3f} of its adapter's effect (tolerance {tolerance:.4f}): set_scale "
                     f"computes weight * lora_alpha / r from the adapter first loaded into the slot, which a hot-swap "
                     f"does not update; the weights written into the scaling tensors in place read 0")
    return "; ".join(parts) or None
