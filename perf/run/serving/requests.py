"""What every serving scenario is made of: a pipeline call with its compiles counted (the VAE decoder's apart),
every request served first and then steady, the switches of an adapter each followed by one step, the A/A noise
floor, and the ``ServingResult`` a scenario returns with its finding."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace

import torch

from perf.build.builder import BuiltPipeline
from perf.judge.serving_record import (
    Request,
    ServingResult,
)
from perf.judge.tolerances import FLOOR_PERTURBATION
from perf.run.measure import free_memory, read_peak, reset_peak, timed
from perf.run.serving.known import documented, finding
from perf.run.swap_probe import (
    StepInputs,
    StepReference,
    same_numerics_reference,
    step_output,
)
from perf.run.watchers import RecompileWatcher, graphs_by_forward, graphs_held
from perf.spec.loras import LoraAdapter


@dataclass(frozen=True)
class Call:
    """One pipeline call: its seconds, the graphs dynamo compiled during it, of those the compiled VAE decoder's
    (``compile_vae`` rows), and the images it made."""

    seconds: float
    graphs: int
    decoder_graphs: int
    images: int


def call(built: BuiltPipeline, request: dict, setup: Callable[[], None] | None = None) -> Call:
    """One pipeline call, after ``setup`` (what the request changes in the pipeline's state: its compiles counted,
    its time not). The decoder's graphs are counted apart (its code object's cache entries, ``graphs_held``): the
    compiled decoder recompiles for every new image shape, by rules of its own (on the CPU a convolution-layout
    guard at 64 x H x W > 20480 and duck sizing of square latents), which say nothing of the LoRA'd transformer."""
    decoder = built.pipe.vae.decoder
    with RecompileWatcher() as watcher:
        held = graphs_held(decoder)
        if setup is not None:
            setup()
        seconds, images = timed(lambda: built.serve(**request), built.device_type)
        decoder_graphs = graphs_held(decoder) - held
    return Call(seconds, watcher.count, decoder_graphs, len(images))


def serve_all(built: BuiltPipeline, requests: dict[str, dict],
              setups: dict[str, Callable[[], None]] | None = None) -> tuple[Request, ...]:
    """Every request once (first), then every request again once all were served (steady, its peak memory
    measured from an emptied allocator cache, so it is the request's own, not the largest request's before it):
    a shape made dynamic by a later first request must still be served without compiling. ``setups``: what a
    request changes in the pipeline before its call (adapters, weights), by label."""
    device, setups = built.device_type, setups or {}
    first = {label: call(built, request, setups.get(label)) for label, request in requests.items()}
    served = []
    for label, request in requests.items():
        free_memory(device)
        reset_peak(device)
        steady = call(built, request, setups.get(label))
        served.append(Request(label, first[label].seconds, first[label].graphs, steady.seconds, steady.graphs,
                              steady.images, read_peak(device).reserved_gib, first[label].decoder_graphs))
    return tuple(served)


@contextlib.contextmanager
def leaves_pipeline_as_built(built: BuiltPipeline) -> Iterator[None]:
    """Drop the graphs a scenario compiled and compile the default request again on the way out, so each scenario
    (and every test after it) finds the pipeline as the case built it (nothing to do where it compiled none). Not
    after an error: ``recover`` puts the pipeline back then, and serving the default request on the wreck first
    would be a full compile (minutes on a GPU) that fails or is dropped again."""
    watcher = RecompileWatcher()
    with watcher:
        yield
    if watcher.count:
        torch.compiler.reset()
        free_memory(built.device_type)
        built.generate()


def adapter_named(built: BuiltPipeline, name: str) -> LoraAdapter:
    return next(a for a in built.spec.pool.adapters if a.name == name)


def noise_floor(built: BuiltPipeline, reference: StepReference) -> float:
    """The serving checks' A/A control: the reference's state against itself with every scaling off by
    ``FLOOR_PERTURBATION`` (no recompile: written in place). About that much on the CPU; on FP8 rows the roundings
    it flips read as the floor every request that does not write the fresh pipeline's bits stands on."""
    same = same_numerics_reference(built, reference)
    return same.error(same_numerics_reference(built, reference, 1 + FLOOR_PERTURBATION).output)


def lora_bytes(transformer: torch.nn.Module, adapter: str) -> int:
    """Bytes of ``adapter``'s LoRA weights in the model (as loaded: padded where hot-swap padded them)."""
    return sum(p.numel() * p.element_size() for name, p in transformer.named_parameters()
               if f".lora_A.{adapter}." in name or f".lora_B.{adapter}." in name)


Switch = tuple[str, Callable[[], None]]  # a label, and the call that makes that adapter the active one


def run_switches(built: BuiltPipeline, switches: Sequence[Switch], probe: StepInputs
                 ) -> list[tuple[float, float, int]]:
    """Each switch in turn, each followed by one denoising step on ``probe`` (a switch recompiles at the
    transformer's next call; one step shows it at a fraction of a generation's cost): each switch's seconds, its
    step's (compiling included), and the graphs compiled by both."""
    done = []
    for _, switch in switches:
        with RecompileWatcher() as watcher:
            took, _ = timed(switch, built.device_type)
            step, _ = timed(lambda: step_output(built.pipe, probe), built.device_type)
        done.append((took, step, watcher.count))
    return done


def error_line(exc: BaseException, limit: int | None = None) -> str:
    """``exc`` as its type and the first line of its message (cut at ``limit`` characters): what a record keeps."""
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:limit]}"


def activate(transformer: torch.nn.Module, adapter: str) -> None:
    """Make ``adapter`` the active one in every LoRA layer, its scaling untouched (``set_adapters`` would write
    the hot-swap slot's scaling tensors as floats)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in transformer.modules():
        if isinstance(module, BaseTunerLayer):
            module.set_adapter(adapter)


def scenario_result(built: BuiltPipeline, scenario: str, requests: tuple[Request, ...], errors: dict | None = None,
                    controls: dict | None = None, probe_recompiles: int = 0, per_request: int = 1,
                    detail: str | None = None, tokens: int = 0, shared: tuple[str, ...] = (), **figures
                    ) -> ServingResult:
    """The result, its documented count (``known.documented`` on the graphs the transformer holds as the scenario
    left it: as built) times ``per_request`` where the count is per request (``named``: per switch); ``detail``:
    what the scenario measured beyond the count, for the finding; ``tokens``, ``shared``: the first request's image
    tokens and the input sizes they equal where every size starts symbolic (``known.duck_shaped``); ``figures``: the
    scenario's own figures section (``scale=ScaleFigures(...)``, ...)."""
    known = documented(scenario, built.recipe, sum(graphs_by_forward(built.pipe.transformer).values()), tokens,
                       shared)
    expected = known.count * per_request
    result = ServingResult(scenario, requests, errors or {}, controls or {}, probe_recompiles, expected, **figures)
    return replace(result, finding=finding(scenario, result.transformer_recompiles, known, expected, detail,
                                           result.decoder_recompiles))
