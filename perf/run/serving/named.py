"""Adapters loaded under their own names and switched with ``set_adapters``: what each switch compiles, and where
dynamo's recompile limit stops a compiled transformer."""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Iterator, Sequence

import torch

from perf.build.builder import HOTSWAP_ADAPTER, BuiltPipeline, CachedLora
from perf.judge.serving_record import (
    LimitHit,
    NamedFigures,
    Request,
    ServingResult,
)
from perf.run.measure import timed
from perf.run.serving.requests import (
    Switch,
    activate,
    adapter_named,
    error_line,
    leaves_pipeline_as_built,
    lora_bytes,
    noise_floor,
    run_switches,
    scenario_result,
)
from perf.run.serving.resident import resident_set
from perf.run.serving.scale import SCALE_DEFECT
from perf.run.swap_probe import (
    StepInputs,
    StepReference,
    lora_modules,
    restore,
    same_numerics_reference,
    scale_all,
    snapshot,
    step_output,
    zero_effect,
)
from perf.run.watchers import RecompileWatcher, graphs_by_forward
from perf.spec.loras import LoraAdapter

NAMED_SWITCHES = 2
"""Named adapters switched to for the first time: each switch compiles the whole transformer again (seconds for the
tiny model on the CPU; on the H200 a full-graph FP8 compile is minutes, and what a serving run does before its first
scenario took 5.5 min warm and over 8 min cold there), so the limit is shown by lowering it rather than compiling up
to it."""


def run_named(built: BuiltPipeline, reference: StepReference, resident: Sequence[LoraAdapter] = (),
              **_) -> ServingResult:
    """The eight resident adapters loaded under their own names and switched with ``set_adapters``: each switch's
    time and graphs compiled, then a switch back to each (steady), the swap check on the reference's adapter
    (``named_swap_check``: its controls, that adapter 5% strong and the first adapter left active instead). Where
    switching compiles, dynamo's ``recompile_limit`` (read at run time) bounds the adapters one compiled transformer
    can switch between; under ``fullgraph=True`` the switch past it fails. The first ``NAMED_SWITCHES`` are
    switched to on every device (each compiles, the count per switch is the figure), and the failure at the limit
    is shown by setting the limit to the graphs the transformer holds and switching once more."""
    pipe, transformer = built.pipe, built.pipe.transformer
    resident = resident_set(resident)
    names = [f"resident_{i}" for i in range(len(resident))]  # a user's small pool repeats adapters: one name each
    count = min(NAMED_SWITCHES, len(resident))
    target = adapter_named(built, reference.adapter)
    index = {a.name: i for i, a in reversed(list(enumerate(resident)))}
    switched = list(range(count)) if index[target.name] < count else [*range(count - 1), index[target.name]]

    def switch(i: int) -> Switch:  # the swap check needs the reference's adapter among those switched to
        return names[i], lambda: pipe.set_adapters(names[i])

    limit, limit_shown = torch._dynamo.config.recompile_limit, None
    with leaves_pipeline_as_built(built):
        with RecompileWatcher() as probing:  # loading named adapters changes what the slot's graph guards on
            floor = noise_floor(built, reference)
        try:
            cache = [CachedLora.read(a) for a in resident]
            with RecompileWatcher() as loading:
                load_seconds, _ = timed(lambda: [cached.load(pipe, adapter_name=name)
                                                 for cached, name in zip(cache, names, strict=True)], built.device_type)
            mib_per_adapter = statistics.fmean(lora_bytes(transformer, n) for n in names) / 2**20
            held_before = graphs_by_forward(transformer)
            first, failure = [], None
            for i in switched:
                try:
                    first += run_switches(built, [switch(i)], reference.inputs)
                except torch._dynamo.exc.FailOnRecompileLimitHit as exc:
                    failure = _failure(exc, names[i], fullest(transformer))
                    break
            served = switched[:len(first)]
            steady = run_switches(built, [switch(i) for i in served], reference.inputs)
            if failure is None and count < len(resident):
                unseen = next(i for i in range(len(resident)) if i not in switched)
                limit_shown = _fail_at_limit(built, switch(unseen), reference.inputs)
            errors, controls, checking = named_swap_check(built, reference, switch(index[target.name]), switch(0))
        finally:
            pipe.delete_adapters([n for n in names if n in getattr(transformer, "peft_config", {})])
            activate(transformer, HOTSWAP_ADAPTER)
    requests = tuple(Request(f"set_adapters {names[i]} ({resident[i].name})", f[0], f[2], s[0], s[2], images=0)
                     for i, f, s in zip(served, first, steady, strict=True))
    figures = NamedFigures(
        tuple(names), tuple(names[i] for i in switched), limit, load_seconds, loading.count, mib_per_adapter,
        max(held_before.values(), default=0), tuple(c for *_, c in first),
        {names[i]: f[1] for i, f in zip(served, first, strict=True)}, failure, limit_shown, count,
        held_before if len(held_before) > 1 else {})
    return scenario_result(built, "named", requests, errors, controls, probing.count + checking, noise_floor=floor,
                           named=figures, per_request=len(first), detail=_named_finding(figures))


def _failure(exc: Exception, adapter: str, graphs: int, limit_set_to: int | None = None) -> LimitHit:
    return LimitHit(adapter, graphs, error_line(exc), limit_set_to)


def fullest(transformer: torch.nn.Module) -> int:
    """The graphs the transformer's fullest compiled forward holds: the one dynamo's ``recompile_limit`` (counted per
    code object) stops first (the transformer's own on a full-graph row; a repeated block's on a regional one)."""
    return max(graphs_by_forward(transformer).values(), default=0)


def _fail_at_limit(built: BuiltPipeline, switch: Switch, probe: StepInputs) -> LimitHit:
    """Dynamo's limit set to the graphs the transformer's fullest compiled forward holds, then ``switch`` (to an
    adapter never switched to): what the switch past the real limit does, shown without compiling up to it.
    ``error`` None: it did not fail."""
    held = fullest(built.pipe.transformer)
    with torch._dynamo.config.patch(recompile_limit=held):
        try:
            run_switches(built, [switch], probe)
        except torch._dynamo.exc.FailOnRecompileLimitHit as exc:
            return _failure(exc, switch[0], held, held)
    return LimitHit(switch[0], held, None, held)


def named_swap_check(built: BuiltPipeline, reference: StepReference, target: Switch, other: Switch
                     ) -> tuple[dict, dict, int]:
    """The swap check on ``set_adapters`` to the reference's adapter, against the same numerics taken in the graph
    that switch compiled: the target's own LoRA layers fed the fresh pipeline's state, every other adapter the
    transformer holds (the hot-swap slot, the other named ones) at no effect, so the reference is the target
    acting alone and a switch that left another adapter acting beside it fails. Each named adapter has a graph of
    its own, with kernels of its own, so the hot-swap slot's graph as reference would measure two graphs' FP8
    roundings rather than the switch: on the H200 that read 0.0323 for a correct switch, 1.42x the floor
    (``optimized_fullgraph_defaults``, 2026-11-30). Controls: the target's weights ``SCALE_DEFECT`` strong (written
    in place, as a load at the wrong strength would leave them), and ``other`` left active (the switch not made).
    Both were switched to before, so nothing compiles."""
    transformer, name = built.pipe.transformer, target[0]
    modules = lora_modules(transformer, name)
    with RecompileWatcher() as probing:
        target[1]()
        with _alone(transformer, name):
            same = same_numerics_reference(built, reference, adapter=name)
        errors = {f"set_adapters to {name}": same.error(step_output(built.pipe, reference.inputs))}
        own = snapshot(modules, name)
        scale_all(modules, name, own, 1 + SCALE_DEFECT)
        controls = {f"{name} loaded {SCALE_DEFECT:.0%} strong": same.error(step_output(built.pipe, reference.inputs))}
        restore(modules, name, own)
        other[1]()
        controls[f"{other[0]} left active, set_adapters to {name} not made"] = same.error(
            step_output(built.pipe, reference.inputs))
    return errors, controls, probing.count


@contextlib.contextmanager
def _alone(transformer: torch.nn.Module, adapter: str) -> Iterator[None]:
    """Every adapter of ``transformer`` but ``adapter`` at no effect (written in place: an inactive adapter's
    tensors are not in the active graph, so nothing compiles), and put back on the way out. Kept on the CPU
    meanwhile: the slot and seven named adapters are about 1.9 GB at full size, beyond a consumer card's margin."""
    others = {n: lora_modules(transformer, n) for n in transformer.peft_config if n != adapter}
    kept = {n: snapshot(modules, n, "cpu") for n, modules in others.items()}
    try:
        for n, modules in others.items():
            zero_effect(modules, n)
        yield
    finally:
        for n, modules in others.items():
            restore(modules, n, kept[n])


def _named_finding(figures: NamedFigures) -> str | None:
    """What switching named adapters costs against dynamo's recompile limit, from the measured counts (None: it
    compiled nothing and nothing failed)."""
    per, limit, held = figures.recompiles_per_switch, figures.recompile_limit, figures.graphs_held_before
    if not any(per) and figures.failure is None:
        return None
    text = (f"switches to named adapters not switched to before compiled {per} graph(s); dynamo's recompile_limit "
            f"is {limit} (torch._dynamo.config, read at run time) and the transformer held {held} graph(s) before "
            f"the first switch")
    if figures.held_by_forward:  # a regional compile: each block's graphs count against the limit apart
        text += f" ({', '.join(f'{n} {h}' for n, h in sorted(figures.held_by_forward.items()))})"
    if len(set(per)) == 1:
        fits = _fits(limit, per[0], figures.held_by_forward or {"": held})
        text += (f", so {fits} named adapters fit and the switch to adapter {fits + 1} passes the limit "
                 f"({len(figures.adapters)} are resident)")
    failure, shown = figures.failure, figures.limit_shown
    if failure is not None:
        text += f"; the switch to {failure.adapter} failed with {failure.graphs_held} held: {failure.error}"
    if figures.stopped_after is not None and figures.stopped_after < len(figures.adapters):
        slowest = max(figures.first_step_seconds.values())
        text += (f"; the run stopped after {figures.stopped_after} switches: each switch to a new adapter compiles "
                 f"the transformer (its first step took up to {slowest:.0f} s here)")
    if shown is not None:
        text += (f"; with recompile_limit set to the {shown.recompile_limit_set_to} graphs held, the switch to "
                 f"{shown.adapter} {'failed: ' + shown.error if shown.error else 'did not fail'}")
    return text


def _fits(limit: int, per_switch: int, held: dict[str, int]) -> int:
    """Named adapters one compiled transformer can switch to before a compiled forward passes ``limit``: each
    forward's graphs recompile alike, so a switch's graphs spread over them as the graphs they held."""
    total = sum(held.values())
    return min((limit - graphs) // max(1, per_switch * graphs // total) for graphs in held.values())
