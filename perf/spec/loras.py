"""The LoRA pool: synthetic adapters of mixed ranks, alphas and target sets (or the user's files), and the
constraints checked up front (read as diffusers will load it, fits the model, can be hot-swapped) so a bad
adapter gives one clear error instead of a peft stack trace or a silently empty load."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from perf.errors import LoraIncompatibleError, SuiteError
from perf.spec.cache import build_once
from perf.spec.models import CONFIGS

WEIGHT_NAME = "pytorch_lora_weights.safetensors"
ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")
QKV = ("to_q", "to_k", "to_v")
LORA_VERSION = 3  # bump when the synthetic adapters change, so stale caches are rebuilt
STRENGTH = 4.0  # std of the weight delta in units of 1/sqrt(fan_in); a default Linear weight's is ~0.58


@dataclass(frozen=True)
class SyntheticLoraSpec:
    name: str
    rank: int
    alpha: float
    targets: tuple[str, ...]
    seed: int
    prompt: str


def synthetic_specs(size: str) -> tuple[SyntheticLoraSpec, ...]:
    """Three adapters: the first targets the most modules (hot-swapped adapters may only target a subset);
    ranks rise so the pool's max rank is not the first adapter's; alphas differ so scales differ."""
    r1, r2, r3 = (4, 8, 16) if size == "tiny" else (16, 32, 64)
    return (
        SyntheticLoraSpec("style_a", r1, r1, ATTENTION, 1, "a red fox in the snow, style_a"),
        SyntheticLoraSpec("style_b", r2, 2 * r2, QKV, 2, "a lighthouse at dusk, style_b"),
        SyntheticLoraSpec("style_c", r3, r3 / 2, ATTENTION, 3, "a bowl of ramen, style_c"),
    )


@dataclass(frozen=True)
class LoraLayer:
    """One transformer module an adapter adapts, as diffusers will load it (its keys converted to peft format):
    lora_A is (rank, in_features), lora_B (out_features, rank)."""

    module: str
    rank: int
    in_features: int
    out_features: int | None  # None: the file has no lora_B for it


@dataclass(frozen=True)
class LoraAdapter:
    """One adapter file and what it contains, read from its tensors (not trusted from a name)."""

    name: str
    path: Path
    rank: int
    layers: frozenset[LoraLayer]  # the transformer modules it adapts
    text_encoder: bool  # has text-encoder weights (cannot be hot-swapped)
    prompt: str
    synthetic: bool

    @property
    def modules(self) -> frozenset[str]:
        return frozenset(layer.module for layer in self.layers)


@dataclass(frozen=True)
class LoraPool:
    adapters: tuple[LoraAdapter, ...]

    @property
    def max_rank(self) -> int:
        return max(a.rank for a in self.adapters)

    def describe(self) -> str:
        return ", ".join(f"{a.name} (r{a.rank}, {len(a.modules)} modules)" for a in self.adapters)


def linear_shapes(model: torch.nn.Module) -> dict[str, tuple[int, int]]:
    """(out, in) of every Linear in ``model``."""
    return {n: (m.out_features, m.in_features) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def transformer_linear_shapes(config: dict) -> dict[str, tuple[int, int]]:
    """``linear_shapes`` of the FLUX transformer of ``config`` (its ``config.json``), built on the meta device:
    no memory, and the same modules the real model has."""
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):
        return linear_shapes(FluxTransformer2DModel.from_config(config))


def _matches(module: str, targets: tuple[str, ...]) -> bool:
    return any(module == t or module.endswith("." + t) for t in targets)


def lora_layers(spec: SyntheticLoraSpec, shapes: dict[str, tuple[int, int]]) -> dict[str, torch.Tensor]:
    """``spec``'s peft-format LoRA weights for the Linears ``shapes`` lists. Seeded, never zero: B is random too,
    scaled so the adapter's weight delta has std ``STRENGTH``/sqrt(fan_in), about 7x a default-initialized
    weight: a random FLUX barely moves its image for smaller deltas (0.9x gave 0.012 mean abs on the H100),
    and the swap checks need adapters whose images differ well beyond bf16 noise."""
    gen = torch.Generator().manual_seed(spec.seed)
    layers = {}
    for module, (out_f, in_f) in shapes.items():
        if not _matches(module, spec.targets):
            continue
        a = torch.randn(spec.rank, in_f, generator=gen) / math.sqrt(in_f)
        b = torch.randn(out_f, spec.rank, generator=gen) * (STRENGTH * math.sqrt(spec.rank) / spec.alpha)
        layers[f"{module}.lora_A.weight"] = a.to(torch.bfloat16)
        layers[f"{module}.lora_B.weight"] = b.to(torch.bfloat16)
    return layers


def lora_metadata(spec: SyntheticLoraSpec) -> dict:
    """The adapter config diffusers needs to load ``spec``'s layers (rank, alpha, targets). The empty rank and
    alpha patterns are part of it: diffusers 0.35-0.37 read ``config["rank_pattern"]`` from the metadata and fail
    every load with a KeyError without them (later versions fill them in)."""
    return {"r": spec.rank, "lora_alpha": spec.alpha, "target_modules": list(spec.targets), "rank_pattern": {},
            "alpha_pattern": {}}


def write_synthetic_lora(spec: SyntheticLoraSpec, size: str, folder: Path) -> Path:
    """Save ``spec`` for the transformer of ``size`` as a diffusers LoRA (peft keys + adapter metadata)."""
    from diffusers import FluxPipeline

    layers = lora_layers(spec, transformer_linear_shapes(CONFIGS[size]["transformer"]))
    build_once(folder, WEIGHT_NAME, lambda staging: FluxPipeline.save_lora_weights(
        staging, transformer_lora_layers=layers, weight_name=WEIGHT_NAME,
        transformer_lora_adapter_metadata=lora_metadata(spec),
    ))
    return folder / WEIGHT_NAME


def inspect_lora(path: Path, name: str, prompt: str, synthetic: bool = False) -> LoraAdapter:
    """Read a LoRA file as diffusers will load it: the transformer modules it adapts (with their shapes, to match
    against the model), its rank and whether it has text-encoder weights. A file diffusers would load nothing
    from is refused here: diffusers only warns (hidden by the suite's quieting) and every check goes vacuous."""
    path = _single_file(Path(path))
    _check_lora_tensors(path)
    shapes = _diffusers_shapes(path)
    layers = _transformer_layers(shapes)
    if not layers:
        found = sorted(shapes)
        shown = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
        raise SuiteError(
            f"LoRA {path}: diffusers would load none of its {len(found)} tensors into the FLUX transformer (it "
            f"loads keys named transformer.<module>.lora_A/lora_B.weight, or kohya/xlabs keys it converts to "
            f"those); found {shown}. Use an adapter saved with diffusers or peft for FluxPipeline"
        )
    text_encoder = any(k.startswith(TEXT_ENCODER_PREFIX) for k in shapes)
    rank = max(layer.rank for layer in layers)
    return LoraAdapter(name, path, rank, layers, text_encoder, prompt, synthetic)


TRANSFORMER_PREFIX = "transformer."  # what FluxPipeline.load_lora_weights loads into the transformer
TEXT_ENCODER_PREFIX = "text_encoder."


def _single_file(path: Path) -> Path:
    """``path`` itself, or the one safetensors file of a folder."""
    if path.is_dir():
        files = sorted(path.glob("*.safetensors"))
        if len(files) != 1:
            raise SuiteError(f"LoRA folder {path} must hold exactly one .safetensors file, found {len(files)}")
        path = files[0]
    if not path.is_file():
        raise SuiteError(f"LoRA {path}: no such file")
    return path


def _check_lora_tensors(path: Path) -> None:
    """A readable safetensors file with LoRA weights in it: read from its header, before diffusers reads it
    (whose errors for an empty or truncated file name neither the file nor the fix)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
    except Exception as exc:  # safetensors raises its own error types for truncated/corrupt headers
        raise SuiteError(
            f"LoRA {path}: not a readable safetensors file ({exc}); is it truncated? Download or save it again"
        ) from exc
    if not any(".lora_A." in k or ".lora_down." in k for k in keys):
        raise SuiteError(
            f"LoRA {path}: not a LoRA (no lora_A/lora_down weights among {len(keys)} tensors); pass a LoRA "
            "adapter file (diffusers/peft lora_A/lora_B or kohya lora_down/lora_up weights)"
        )


def _diffusers_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """The file's tensor shapes under the keys ``FluxPipeline.load_lora_weights`` uses: diffusers converts
    kohya, xlabs and BFL formats to peft keys first. Its converters assume FLUX.1-dev's layer widths (a bare
    ``AssertionError`` otherwise), so a file they refuse is named here, not met as a traceback in every test."""
    from diffusers import FluxPipeline

    try:
        state = FluxPipeline.lora_state_dict(str(path))
    except Exception as exc:
        detail = (str(exc).splitlines() or [""])[0][:200]
        raise SuiteError(
            f"LoRA {path}: diffusers cannot convert this kohya/other-format file ({type(exc).__name__}"
            f"{': ' + detail if detail else ''}); its converters expect FLUX.1-dev's layer widths: is it an "
            "adapter for another model? Use an adapter made for this model, saved with diffusers or peft"
        ) from None
    return {k: tuple(v.shape) for k, v in state.items()}


def _transformer_layers(shapes: dict[str, tuple[int, ...]]) -> frozenset[LoraLayer]:
    """The transformer modules of a peft-format state dict, with their lora_A/lora_B shapes."""
    a_suffix, b_suffix = ".lora_A.weight", ".lora_B.weight"

    def by_module(suffix: str) -> dict[str, tuple[int, ...]]:
        return {k.removeprefix(TRANSFORMER_PREFIX).removesuffix(suffix): s for k, s in shapes.items()
                if k.startswith(TRANSFORMER_PREFIX) and k.endswith(suffix)}

    b = by_module(b_suffix)
    return frozenset(
        LoraLayer(module, int(a[0]), int(a[-1]), int(b[module][0]) if module in b else None)
        for module, a in by_module(a_suffix).items()
    )


def pool_of_specs(specs: tuple[SyntheticLoraSpec, ...], size: str, folder: Path) -> LoraPool:
    """Synthetic adapters written once under ``folder/<name>/`` and read back like any user file."""
    adapters = []
    for spec in specs:
        path = folder / spec.name / WEIGHT_NAME
        if not path.is_file():
            path = write_synthetic_lora(spec, size, folder / spec.name)
        adapters.append(inspect_lora(path, spec.name, spec.prompt, synthetic=True))
    return LoraPool(tuple(adapters))


def synthetic_pool(size: str, cache: Path) -> LoraPool:
    return pool_of_specs(synthetic_specs(size), size, cache / "loras" / f"synthetic-{size}-v{LORA_VERSION}")


def user_pool(specs: list[str], prompt: str) -> LoraPool:
    """Adapters from ``--lora PATH_OR_ID`` (files, folders, or hub ids in the local Hugging Face cache)."""
    adapters = []
    for i, spec in enumerate(specs):
        path = Path(spec).expanduser()
        if not path.exists() and spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
            try:
                from huggingface_hub import snapshot_download

                path = Path(snapshot_download(spec, allow_patterns=["*.safetensors"]))
            except Exception as exc:
                raise SuiteError(f"--lora {spec}: not a file and not in the Hugging Face cache ({exc})") from exc
        adapters.append(inspect_lora(path, f"lora{i}", prompt))
    return LoraPool(tuple(adapters))


REAL_LORA_PROMPT = "a photo of a cat holding a sign that says hello world"


def pool_for(specs: list[str], size: str, cache: Path) -> LoraPool:
    """The user's adapters (``--lora``) or the synthetic pool for the model size; at least two to swap between."""
    pool = user_pool(specs, REAL_LORA_PROMPT) if specs else synthetic_pool(size, cache)
    if len(pool.adapters) < 2:
        raise SuiteError("the LoRA pool needs at least two adapters to swap between; pass --lora twice or more")
    return pool


def check_hotswap(first: LoraAdapter, candidate: LoraAdapter, target_rank: int) -> None:
    """Raise ``LoraIncompatibleError`` naming the constraint if ``candidate`` cannot be hot-swapped in."""
    if candidate.text_encoder:
        raise LoraIncompatibleError(
            f"LoRA {candidate.name!r} ({candidate.path}) has text-encoder weights: hot-swapping text-encoder "
            "adapters is not supported by diffusers; use a transformer-only LoRA or a recipe without hot-swap"
        )
    if candidate.rank > target_rank:
        raise LoraIncompatibleError(
            f"LoRA {candidate.name!r} has rank {candidate.rank} but hot-swap was prepared for rank {target_rank}: "
            f"enable_lora_hotswap(target_rank=...) must be at least the pool's max rank; pass --max-rank "
            f"{candidate.rank} or more, or leave it unset to use the pool's max rank"
        )
    extra = sorted(candidate.modules - first.modules)
    if extra:
        shown = ", ".join(extra[:4]) + (f" and {len(extra) - 4} more" if len(extra) > 4 else "")
        raise LoraIncompatibleError(
            f"LoRA {candidate.name!r} targets {len(extra)} module(s) that the first adapter {first.name!r} does "
            f"not ({shown}): a hot-swapped adapter may only target the same modules as the first one or a "
            "subset; load the adapter with the most targets first"
        )


def check_pool(pool: LoraPool, target_rank: int) -> None:
    """Every adapter fits the first one's hot-swap preparation."""
    for adapter in pool.adapters:
        check_hotswap(pool.adapters[0], adapter, target_rank)


def hotswap_target_rank(pool: LoraPool, requested: int | None) -> int:
    """The rank ``enable_lora_hotswap`` prepares for: ``requested`` (``--max-rank``) or the pool's max rank. A
    requested rank below the pool's max cannot hold its biggest adapter."""
    if requested is None:
        return pool.max_rank
    if requested < pool.max_rank:
        biggest = max(pool.adapters, key=lambda a: a.rank)
        raise LoraIncompatibleError(
            f"--max-rank {requested} is below the LoRA pool's max rank {pool.max_rank} ({biggest.name!r}, "
            f"{biggest.path}): hot-swap must be prepared for the biggest adapter; pass --max-rank "
            f"{pool.max_rank} or more, or leave it unset to use the pool's max rank"
        )
    return requested


def check_fits_model(adapter: LoraAdapter, shapes: dict[str, tuple[int, int]], model: str) -> None:
    """Every module ``adapter`` adapts is a Linear of the model (``shapes``: (out, in) by name) of the same
    width. Else diffusers loads part of it or none (only warning), or fails with a size mismatch in every test."""
    missing = sorted(layer.module for layer in adapter.layers if layer.module not in shapes)
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        share = "all" if len(missing) == len(adapter.layers) else f"{len(missing)}"
        raise LoraIncompatibleError(
            f"LoRA {adapter.path}: {share} of its {len(adapter.layers)} modules are not in {model} ({shown}), "
            "so diffusers would not load them: an adapter for another model? Use an adapter made for this model"
        )
    for layer in sorted(adapter.layers, key=lambda layer: layer.module):
        out_f, in_f = shapes[layer.module]
        if layer.in_features != in_f or layer.out_features not in (None, out_f):
            raise LoraIncompatibleError(
                f"LoRA {adapter.path}: module {layer.module} is {layer.out_features}x{layer.in_features} "
                f"(out x in) in the file but {out_f}x{in_f} in {model}: an adapter for another model? Use an "
                "adapter made for this model"
            )
