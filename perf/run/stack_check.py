"""Does the library stack this run is on work at all? Checked once, before any test.

An upgrade that breaks an import, a build or LoRA loading used to end in one traceback per test (24 copies of
75 lines) or an ``INTERNALERROR>`` block, with no line saying which package broke what. Here it ends the run
with one message naming the step, the package the error came from and the stack's versions, exit code
``BROKEN_STACK_EXIT``, and a record (``<results>/<profile>/stack/stack_check.json``) the verdict reads: in the
upgrade gate a broken candidate is a ``regressed`` row naming step and package (``perf.judge.compare``).

The check, in order: every library the selected recipes need imports; then, for each kind of pipeline they build
(attention, FP8, hot-swap, NF4 T5, offload), that pipeline builds on the tiny synthetic model on the run's
device, loads an adapter, hot-swaps (or, without hot-swap, reloads) to a second one, and generates an image.
Compilation is left out: it costs a minute per kind on a CPU, and a compile that breaks fails its recipe's
tests, which the verdict shows as ``regressed`` check rows. This module imports no torch at module level, so
it can report a torch that does not import.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import sys
import traceback
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

from perf.judge.baseline_files import versions_of
from perf.judge.stack_record import RECORD, StackCheck

LIBRARIES = ("torch", "diffusers", "transformers", "peft", "accelerate", "safetensors")
FP8_LIBRARIES = ("torchao",)
NF4_LIBRARIES = ("bitsandbytes",)
USED = {
    "diffusers": ("FluxPipeline", "FluxTransformer2DModel", "AutoencoderKL", "FlowMatchEulerDiscreteScheduler"),
    "transformers": ("CLIPTextModel", "T5EncoderModel", "CLIPTokenizer", "T5Tokenizer"),
    "peft": ("LoraConfig",),
    "torchao.quantization": ("quantize_", "Float8DynamicActivationFloat8WeightConfig"),
}
"""Names the suite imports from each library: diffusers and transformers import lazily, so ``import diffusers``
succeeds where ``from diffusers import FluxPipeline`` fails (diffusers 0.34 beside transformers 5)."""


def _distribution_of(filename: str) -> str | None:
    """The installed distribution a source file belongs to, as "name version" (None: stdlib or the suite)."""
    path = Path(filename).resolve()
    suite = Path(__file__).resolve().parents[1]  # perf/
    if path.is_relative_to(suite) or path.is_relative_to(suite.parent / "tests"):
        return None
    roots = [Path(p).resolve() for p in sys.path if p]
    inside = [r for r in roots if path.is_relative_to(r) and path != r]
    if not inside:
        return None
    top = path.relative_to(max(inside, key=lambda r: len(r.parts))).parts[0].removesuffix(".py")
    for name in metadata.packages_distributions().get(top, [])[:1]:
        return f"{name} {metadata.version(name)}"
    return None


def culprit(exc: BaseException) -> str | None:
    """The distribution of the innermost traceback frame inside an installed package: where the error was raised."""
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        found = _distribution_of(frame.filename)
        if found:
            return found
    return None


def _involved(exc: BaseException) -> tuple[str, ...]:
    """The package an ImportError could not import from (``from transformers import HybridCache``)."""
    name = getattr(exc, "name", None)
    if not isinstance(exc, ImportError) or not name:
        return ()
    top = name.split(".")[0]
    dists = metadata.packages_distributions().get(top, [])
    return tuple(f"{d} {metadata.version(d)}" for d in dists[:1])


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0].rstrip(':')}"


def root_cause(exc: BaseException) -> BaseException:
    """The exception at the bottom of the chain: diffusers wraps a failed lazy import in a RuntimeError whose
    own message only says to look up the traceback."""
    seen = {id(exc)}
    while (inner := exc.__cause__ or exc.__context__) is not None and id(inner) not in seen:
        seen.add(id(inner))
        exc = inner
    return exc


def failed(step: str, library: str, exc: BaseException, versions: dict, recipes: tuple[str, ...]) -> StackCheck:
    root = root_cause(exc)
    error = _first_line(exc) + (f" (cause: {_first_line(root)})" if root is not exc else "")
    version = versions.get(library) if library in versions else versions_of([library])[library]
    package = culprit(root) or culprit(exc) or f"{library} {version or 'not installed'}"
    return StackCheck(versions, recipes, step, package, error, _involved(root))


def check_imports(libraries: Iterable[str], recipes: tuple[str, ...] = ()) -> StackCheck:
    """Import each library; the first that fails is the verdict."""
    libraries = tuple(libraries)
    versions = versions_of(libraries)
    for name in libraries:
        try:
            for module, attributes in [(name, ()), *((m, a) for m, a in USED.items() if m.split(".")[0] == name)]:
                loaded = importlib.import_module(module)
                for attribute in attributes:
                    getattr(loaded, attribute)
        except Exception as exc:  # an upgrade breaks imports in any way: AttributeError, RuntimeError, ...
            return failed(f"import {name}", name, exc, versions, recipes)
    return StackCheck(versions, recipes)


def libraries_for(recipes: Iterable) -> tuple[str, ...]:
    """The libraries the recipes import: the core ones, torchao for FP8, bitsandbytes for NF4 T5."""
    recipes = list(recipes)
    return (LIBRARIES + (FP8_LIBRARIES if any(r.fp8 for r in recipes) else ())
            + (NF4_LIBRARIES if any(r.t5_nf4 for r in recipes) else ()))


def pipeline_kinds(recipes: Iterable) -> list:
    """One eager recipe per distinct kind of pipeline (what the builder does apart from compiling), on torch's SDPA:
    FlashAttention kernels are checked against float32 at the run's real shape when each case builds (the tiny
    model's head dim of 16 is below what FA3 and FA4 take), and a kernel that fails there fails its recipe."""
    kinds = {}
    for recipe in recipes:
        kind = dataclasses.replace(recipe.uncompiled(), attention="sdpa", fp8_attention_qk="dynamic")
        kinds.setdefault((kind.attention, kind.fp8, kind.hotswap, kind.t5_nf4, kind.offload), kind)
    return list(kinds.values())


def describe_kind(recipe) -> str:
    parts = [recipe.attention, "fp8" if recipe.fp8 else "", "hotswap" if recipe.hotswap else "reload",
             "t5 nf4" if recipe.t5_nf4 else "", "offload" if recipe.offload else ""]
    return ", ".join(p for p in parts if p)


def check_pipelines(tiny_spec, recipes: tuple, names: tuple[str, ...], versions: dict) -> StackCheck:
    """The tiny model and adapters are written (``tiny_spec()``); then each kind builds on them, loads, swaps and
    generates; the first failure is the verdict."""
    from perf.build.builder import build_pipeline

    try:
        spec = tiny_spec()
    except Exception as exc:
        return failed("write the tiny model and adapters", "diffusers", exc, versions, names)
    for kind in pipeline_kinds(recipes):
        what = describe_kind(kind)
        step, library = "build", "diffusers"
        try:
            built = build_pipeline(spec, kind)  # loads the first adapter (after enable_lora_hotswap)
            step, library = ("hot-swap" if kind.hotswap else "reload"), "peft"
            built.load_adapter(spec.pool.adapters[1])
            step, library = "generate", "diffusers"
            built.generate()
        except Exception as exc:  # whatever an upgrade breaks: the verdict names it instead of a crash per test
            return failed(f"{step} ({what})", library, exc, versions, names)
        del built
    return StackCheck(versions, names)


def check_stack(tiny_spec, recipes: Iterable) -> StackCheck:
    """Imports, then each kind of pipeline on the tiny model (``tiny_spec()`` makes the run's spec for it: the run's
    device and cache, the tiny synthetic model and pool, written on first use)."""
    recipes = tuple(recipes)
    names = tuple(r.name for r in recipes)
    imports = check_imports(libraries_for(recipes), names)
    if not imports.ok:
        return imports
    return check_pipelines(tiny_spec, recipes, names, imports.versions)


def write_check(results_profile_dir: Path, check: StackCheck) -> Path:
    """The check's record, written atomically where the verdict looks for it."""
    from perf.judge.baseline_files import atomic_write_bytes

    path = Path(results_profile_dir) / RECORD
    atomic_write_bytes(path, (json.dumps(check.to_dict(), indent=1, sort_keys=True) + "\n").encode())
    return path
