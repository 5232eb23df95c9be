"""Adapters a server keeps in RAM and hot-swaps from memory, against from their files, and the bare state dicts a
server might cache instead."""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Callable, Sequence

from perf.build.builder import HOTSWAP_ADAPTER, BuiltPipeline, CachedLora
from perf.judge.serving_record import (
    BareStateDict,
    Request,
    ResidentFigures,
    ServingResult,
)
from perf.judge.tolerances import serving_tolerance
from perf.run.serving.requests import (
    adapter_named,
    error_line,
    leaves_pipeline_as_built,
    lora_bytes,
    noise_floor,
    run_switches,
    scenario_result,
)
from perf.run.swap_probe import (
    StepInputs,
    StepReference,
    same_numerics_reference,
    step_output,
)
from perf.run.watchers import RecompileWatcher
from perf.spec.loras import LoraAdapter

RESIDENT = 8


def _swap_cycles(built: BuiltPipeline, adapters: Sequence[LoraAdapter], swap: Callable[[LoraAdapter], None],
                 label: str, probe: StepInputs) -> Request:
    """Every adapter swapped in twice over: the first cycle's first swap and the second cycle's median swap time,
    and the graphs compiled over each cycle."""
    switches = [(a.name, lambda a=a: swap(a)) for a in adapters]
    first, steady = (run_switches(built, switches, probe) for _ in range(2))
    return Request(label, first[0][0], sum(c for *_, c in first), statistics.median(s for s, *_ in steady),
                   sum(c for *_, c in steady), images=0)


def _refusal(load: Callable[[], None]) -> str | None:
    """Why diffusers or peft refused a load (the ``ValueError`` they raise: "Configs are incompatible", no adapter by
    that name), or None where it loaded."""
    try:
        load()
    except ValueError as exc:
        return error_line(exc, 300)
    return None


def reopen_slot(built: BuiltPipeline, first: CachedLora | None = None) -> bool:
    """The hot-swap slot loaded again with the first adapter (``first``, or read from its file only when needed)
    where a refused load took it out of the transformer (diffusers deletes the adapter it failed to load: the live
    slot, for a hot-swap), prepared for hot-swap again; True where it had to. The compiled graph recompiles at its
    next call."""
    pipe = built.pipe
    if HOTSWAP_ADAPTER in getattr(pipe.transformer, "peft_config", {}):
        return False
    pipe.enable_lora_hotswap(target_rank=built.spec.target_rank, check_compiled="ignore")
    (first or CachedLora.read(built.first)).load(pipe, adapter_name=HOTSWAP_ADAPTER)
    built.current = built.first
    return True


def resident_set(candidates: Sequence[LoraAdapter]) -> list[LoraAdapter]:
    """``RESIDENT`` adapters of ``candidates`` (unique, in order), repeated in turn where there are fewer."""
    return list(itertools.islice(itertools.cycle(dict.fromkeys(candidates)), RESIDENT))


def pick_resident(built: BuiltPipeline, candidates: Sequence[LoraAdapter], cache: dict[str, CachedLora]
                  ) -> tuple[list[LoraAdapter], dict[str, str]]:
    """The resident set: ``candidates`` peft hot-swaps from memory into the first adapter's slot, each tried once
    (untimed), and those it refuses with its reason (the slot loaded again after each: a refusal deletes it).
    Measured, not assumed: peft refuses a config whose ``alpha_pattern`` (or dropout, rslora, DoRA) differs from the
    slot's, which a user's pool may hold."""
    accepted, refused = [], {}
    for adapter in dict.fromkeys(candidates):
        why = _refusal(lambda a=adapter: built.load_adapter(a, cache[a.name]))
        if why is None:
            accepted.append(adapter)
        else:
            refused[adapter.name] = why
            reopen_slot(built, cache[built.first.name])
    return resident_set(accepted or [built.first]), refused


def run_resident(built: BuiltPipeline, reference: StepReference, resident: Sequence[LoraAdapter] = (),
                 **_) -> ServingResult:
    """Eight adapters kept in RAM (``CachedLora``: state dict, alphas and metadata, as a server caches them) of those
    peft hot-swaps (``pick_resident``), hot-swapped from memory against from their files; then A->B->A->B from
    memory and the swap check on B (control: the last swap to B not made). Then A->B->A->B with the bare state
    dicts through ``load_lora_weights(dict)``, the way that takes no metadata and no alphas: refused, or its error,
    is a figure and a finding (the slot is loaded again where the refusal deleted it, and gets B from memory)."""
    first, target = built.first, adapter_named(built, reference.adapter)
    cache = {a.name: CachedLora.read(a) for a in (*resident, first, target)}

    def from_memory(adapter: LoraAdapter) -> None:
        built.load_adapter(adapter, cache[adapter.name])

    def bare_state_dict(adapter: LoraAdapter) -> None:
        built.pipe.load_lora_weights(dict(cache[adapter.name].state_dict), adapter_name=HOTSWAP_ADAPTER, hotswap=True)

    with leaves_pipeline_as_built(built):
        with RecompileWatcher() as flooring:
            floor = noise_floor(built, reference)
        chosen, refused = pick_resident(built, resident, cache)
        requests = (_swap_cycles(built, chosen, built.load_adapter, "hot-swap from file", reference.inputs),
                    _swap_cycles(built, chosen, from_memory, "hot-swap from memory", reference.inputs))
        errors, controls = {}, {}
        with RecompileWatcher() as probing:
            for adapter in (first, target, first):
                from_memory(adapter)
            same = same_numerics_reference(built, reference)
            controls["A->B->A from memory, last swap to B not made"] = same.error(
                step_output(built.pipe, reference.inputs))
            from_memory(target)
            errors["A->B->A->B from memory"] = same.error(step_output(built.pipe, reference.inputs))
        bare_refused = next((f"{a.name}: {why}" for a in (first, target, first, target)
                             if (why := _refusal(lambda a=a: bare_state_dict(a)))), None)
        bare_error = None if bare_refused else same.error(step_output(built.pipe, reference.inputs))
        slot_deleted = reopen_slot(built, cache[first.name])
        from_memory(target)
        errors["B from memory after the bare state dicts"] = same.error(step_output(built.pipe, reference.inputs))
    alphas = cache[target.name]
    bare = BareStateDict(bare_error, bare_refused, slot_deleted,
                         bool(alphas.network_alphas) or "lora_alpha" in str(alphas.metadata or ""))
    figures = ResidentFigures(
        tuple(a.name for a in chosen), refused, statistics.fmean(cache[a.name].nbytes for a in chosen) / 2**20,
        lora_bytes(built.pipe.transformer, HOTSWAP_ADAPTER) / 2**20, bare)
    detail = _resident_finding(figures, errors["A->B->A->B from memory"], serving_tolerance(floor))
    return scenario_result(built, "resident", requests, errors, controls, probing.count + flooring.count,
                           noise_floor=floor, resident=figures, detail=detail)


def _resident_finding(figures: ResidentFigures, from_memory: float, tolerance: float) -> str | None:
    """What the libraries cannot do with adapters kept in RAM, from the figures (None: nothing)."""
    bare, parts = figures.bare_state_dict, []
    if figures.refused:
        refused = "; ".join(f"{name} ({why})" for name, why in figures.refused.items())
        parts.append(f"peft refused to hot-swap from memory {refused}, left out of the resident set")
    way = ("an adapter cached as the state dict lora_state_dict returns and hot-swapped with load_lora_weights(dict), "
           "which takes no adapter metadata and no network alphas for a dict")
    kept = (f"kept with its metadata and alphas and loaded through the transformer's load_lora_adapter (CachedLora) "
            f"every resident adapter hot-swaps, and A->B->A->B from memory reads {from_memory:.4f}")
    if bare.refused:
        deleted = (", and diffusers then deleted the live hot-swap slot from the compiled transformer (every later "
                   "hot-swap fails until it is loaded again, which recompiles)") if bare.slot_deleted else ""
        parts.append(f"{way}: peft refused {bare.refused} (for a dict without alphas diffusers derives lora_alpha = "
                     f"rank per module, an alpha_pattern the slot's config lacks wherever ranks are mixed){deleted}; "
                     f"{kept}")
    elif bare.error is not None and bare.error > tolerance:
        parts.append(f"{way}: served without the alphas its file holds, after A->B->A->B its step is off by "
                     f"{bare.error:.3f} of the adapter's effect (tolerance {tolerance:.4f}); {kept}")
    return "; ".join(parts) or None
