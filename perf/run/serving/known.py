"""What the current stack is documented to do in each serving scenario, measured: the graphs a scenario's first
requests compile and why (``KNOWN_RECOMPILES``), the failures it ends with on recipes of one kind
(``KNOWN_FAILURES``), and the finding a result carries, with the versions. Kept apart from the scenarios so the
list of what the libraries cannot do reads in one place."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from perf.judge.baseline_files import library_versions
from perf.spec.recipes import Recipe


@dataclass(frozen=True)
class Known:
    """Graphs a scenario's first requests compile on the current stack, and why: a finding, not a pass. ``count``
    is per graph the compiled transformer holds as built (see ``documented``); ``regional``: what a regional
    compile does instead, where the scenario's change happens outside the compiled blocks."""

    count: int
    why: str
    regional: Known | None = None


KNOWN_RECOMPILES = {
    "scale": Known(3, "diffusers applies joint_attention_kwargs['scale'] inside the compiled transformer "
                   "(apply_lora_scale -> scale_lora_layers, which returns early at 1.0): the first scale other than "
                   "1.0 compiles a graph specialized on its value, the second makes the float dynamic (automatic "
                   "dynamic), and an explicit 1.0 fails the dynamic graph's `scale == 1.0` guard; any scale after "
                   "that reuses the dynamic graph",
                   regional=Known(0, "a regional compile applies the scale in the transformer's forward, outside "
                                     "the compiled blocks, into the hot-swap slot's scaling tensors in place: the "
                                     "blocks' graphs read the tensors and compile nothing (measured on the CPU)")),
    "resolutions": Known(1, "the first new shape recompiles the transformer with its sequence length dynamic "
                         "(torch.compile's default automatic dynamic shapes); every other shape reuses that graph"),
    "batches": Known(1, "the first batch above 1 recompiles with the batch dimension dynamic (automatic dynamic); "
                     "larger batches reuse that graph"),
    "resident": Known(0, ""),
    "two": Known(1, "the second slot loaded into the compiled transformer and both made active: the first request "
                 "compiles a graph with both; weights written in place and hot-swaps of either slot reuse it"),
    "resolutions_static": Known(3, "static shapes (dynamic=False) compile one graph per sequence length by design, "
                                "the default shape's too (the mode starts from torch.compiler.reset()); portrait and "
                                "landscape share one: the transformer sees packed latents, the same number of tokens"),
    "resolutions_dynamic": Known(1, "dynamic=True compiles one graph with symbolic sizes from the first shape on "
                                 "(the mode starts from torch.compiler.reset()); every other shape reuses it "
                                 "(unless the first shape's image tokens equal another input size: ``duck_shaped``)"),
    "named": Known(1, "per named adapter switched to for the first time: set_adapters makes that adapter's LoRA "
                   "modules the active ones (other parameters, their requires_grad turned on), which fails the "
                   "compiled graph's guards; a switch back to an adapter already switched to reuses its graph"),
}


def duck_shaped(known: Known, tokens: int, shared: tuple[str, ...]) -> Known:
    """``known`` where every size starts symbolic (``dynamic=True``) and the first request's ``tokens`` equal the
    graph's other input sizes named in ``shared``. Dynamo's duck shaping gives equal sizes one symbol; a size a
    weight fixes (T5's width, at the context embedder) specializes it, and the tokens with it: the first graph is
    static in its tokens, and the first shape of another token count compiles one graph more. FLUX.1-dev's 1024²
    has 4096 tokens, T5's width. Measured on the CPU's tiny model: 2 graphs where its first shape's tokens equal
    its T5 width (64), its text tokens or pooled width (32), 1 where they equal none, and 1 with
    ``torch.fx.experimental._config.use_duck_shape=False``. On the H200 ``optimized_fullgraph_defaults`` compiled
    the second graph at 768x1344 (2026-11-30)."""
    if not shared:
        return known
    return Known(known.count + 1, f"{known.why}; but the first shape's {tokens} image tokens equal "
                 f"{' and '.join(shared)}: duck shaping gives them one symbol, fixed by the weights, so the first "
                 "graph is static in its tokens and the first shape of another token count compiles a second "
                 "(torch.fx.experimental._config.use_duck_shape=False avoids it)")


def documented(scenario: str, recipe: Recipe, held: int, tokens: int = 0, shared: tuple[str, ...] = ()) -> Known:
    """What ``scenario``'s first requests are documented to compile on ``recipe``, whose compiled transformer holds
    ``held`` graphs as built: ``KNOWN_RECOMPILES``' count on each of them, since each graph's guards fail alike.
    A full-graph compile holds one. A regional one holds a graph per repeated block class, and a second for the
    single-stream block where its first call's input has strides of its own: 3 on FLUX.1-dev's sizes (the H200's
    ``rtx4090_optimized``: batch 2 compiled 3), 2 on the CPU's tiny model (every scenario but ``scale`` compiled
    twice the full-graph count there). A regional compile's own ``Known`` where the scenario has one. ``tokens``
    and ``shared``: the first request's image tokens and the input sizes they equal (``duck_shaped``)."""
    known = duck_shaped(KNOWN_RECOMPILES[scenario], tokens, shared)
    if recipe.compile != "regional":
        return known
    if known.regional is not None:
        return known.regional
    return Known(known.count * held, f"{known.why}; on each of the {held} graphs a regional compile holds")


def finding(scenario: str, measured: int, known: Known, expected: int, detail: str | None = None,
            decoder: int = 0) -> str | None:
    """What the libraries could not serve without compiling after the first request (``measured``: the
    transformer's graphs; ``known``: what is documented, ``expected`` of them here; ``decoder``: the compiled VAE
    decoder's, said apart; ``detail``: what else the scenario measured of it), with the versions."""
    if measured == 0 and decoder == 0 and detail is None:
        return None
    stack = stack_versions()
    why = known.why
    parts = [f"{measured} graph(s) compiled by the first requests: "
             f"{why if measured == expected else f'not the documented count ({expected}: {why})'}"] if measured else []
    if decoder:
        parts.append(f"the compiled VAE decoder compiled {decoder} graph(s) more for the new image shapes (not the "
                     "LoRA'd transformer's, so not in the documented count; none once warm)")
    return f"{scenario}: {'; '.join([*parts, *([detail] if detail else [])])} [{stack}]"


@dataclass(frozen=True)
class KnownFailure:
    """A scenario the libraries cannot serve on recipes of one kind, measured: the error it ends with, and why.
    ``served`` False: a kind of recipe that cannot serve the scenario by design; it is not run there, and its
    result is that failure (``NOT_SERVED``)."""

    applies: Callable[[Recipe], bool]
    error: str  # part of the error's first line
    why: str
    served: bool = True


NOT_SERVED = "NotServed"
MERGED = KnownFailure(
    lambda recipe: recipe.merge_lora, NOT_SERVED,
    "a row that merges the adapter into its weights (merge_lora) serves the hot-swap slot's adapter at the strength "
    "merged: peft's LoRA path, through which a per-request scale, a second slot and set_adapters act, is off in its "
    "forward, so they would be ignored without an error", served=False)

KNOWN_FAILURES = {
    "scale": (MERGED, KnownFailure(
        lambda recipe: recipe.cudagraphs, "accessing tensor output of CUDAGraphs that has been overwritten",
        "diffusers' apply_lora_scale multiplies the hot-swap slot's scaling tensors in place before the transformer "
        "and assigns each a new tensor (scaling / scale, peft's unscale_layer) after it, inside the compiled "
        "transformer: under CUDA graphs (compile mode reduce-overhead) that new tensor is a graph output, overwritten "
        "by the next replay, so the next request reads a dead tensor (measured on optimized_fast_cudagraphs, H200, "
        "2026-11-30: the second scale's request fails; hot-swaps then fail on the same tensors)")),
    "two": (MERGED,),
    "named": (MERGED,),
}
"""Scenario -> the failures it ends with on the recipes each ``applies`` to (the first that applies): the record's
finding explains it, and the tests treat it as a strict expected failure (a stack that serves the scenario fails
them until this is updated)."""


def known_failure(scenario: str, recipe: Recipe, failure: str | None) -> KnownFailure | None:
    """The documented failure ``scenario`` has on ``recipe``'s kind, when ``failure`` is it (None otherwise)."""
    known = expects_failure(scenario, recipe)
    return known if known is not None and failure is not None and known.error in failure else None


def expects_failure(scenario: str, recipe: Recipe) -> KnownFailure | None:
    """The failure documented for ``scenario`` on ``recipe``'s kind, whether or not this run saw it."""
    return next((known for known in KNOWN_FAILURES.get(scenario, ()) if known.applies(recipe)), None)


def stack_versions() -> str:
    versions = library_versions()
    return ", ".join(f"{name} {versions.get(name)}" for name in ("torch", "diffusers", "peft", "torchao"))
