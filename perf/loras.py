"""The LoRA pool: synthetic adapters of mixed ranks, alphas and target sets (or the user's files), and the
hot-swap constraints checked up front so a bad adapter gives one clear error instead of a peft stack trace."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from perf.cache import build_once
from perf.errors import LoraIncompatibleError, SuiteError
from perf.models import CONFIGS

WEIGHT_NAME = "pytorch_lora_weights.safetensors"
ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")
QKV = ("to_q", "to_k", "to_v")
LORA_VERSION = 2  # bump when the synthetic adapters change, so stale caches are rebuilt
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
class LoraAdapter:
    """One adapter file and what it contains, read from its tensors (not trusted from a name)."""

    name: str
    path: Path
    rank: int
    modules: frozenset[str]  # transformer module names it adapts
    text_encoder: bool  # has text-encoder weights (cannot be hot-swapped)
    prompt: str
    synthetic: bool


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


def _linear_shapes(size: str) -> dict[str, tuple[int, int]]:
    """``linear_shapes`` of the transformer of ``size``, built on the meta device (no memory)."""
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):
        return linear_shapes(FluxTransformer2DModel(**CONFIGS[size]["transformer"]))


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
    """The adapter config diffusers needs to load ``spec``'s layers (rank, alpha, targets)."""
    return {"r": spec.rank, "lora_alpha": spec.alpha, "target_modules": list(spec.targets)}


def write_synthetic_lora(spec: SyntheticLoraSpec, size: str, folder: Path) -> Path:
    """Save ``spec`` for the transformer of ``size`` as a diffusers LoRA (peft keys + adapter metadata)."""
    from diffusers import FluxPipeline

    layers = lora_layers(spec, _linear_shapes(size))
    build_once(folder, WEIGHT_NAME, lambda staging: FluxPipeline.save_lora_weights(
        staging, transformer_lora_layers=layers, weight_name=WEIGHT_NAME,
        transformer_lora_adapter_metadata=lora_metadata(spec),
    ))
    return folder / WEIGHT_NAME


def inspect_lora(path: Path, name: str, prompt: str, synthetic: bool = False) -> LoraAdapter:
    """Read rank, adapted modules and text-encoder content from a LoRA safetensors file."""
    from safetensors import safe_open

    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.safetensors"))
        if len(files) != 1:
            raise SuiteError(f"LoRA folder {path} must hold exactly one .safetensors file, found {len(files)}")
        path = files[0]
    if not path.is_file():
        raise SuiteError(f"LoRA {path}: no such file")
    try:
        with safe_open(str(path), framework="pt") as f:
            shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}  # noqa: SIM118 - safe_open has no iter
    except Exception as exc:  # safetensors raises its own error types for truncated/corrupt headers
        raise SuiteError(
            f"LoRA {path}: not a readable safetensors file ({exc}); is it truncated? Download or save it again"
        ) from exc
    down = {k: s for k, s in shapes.items() if ".lora_A." in k or ".lora_down." in k}
    if not down:
        raise SuiteError(
            f"LoRA {path}: not a LoRA (no lora_A/lora_down weights among {len(shapes)} tensors); pass a LoRA "
            "adapter file (diffusers/peft lora_A/lora_B or kohya lora_down/lora_up weights)"
        )
    text_encoder = any(k.startswith(("text_encoder", "lora_te")) for k in down)
    modules = frozenset(
        k.split(".lora_")[0].removeprefix("transformer.") for k in down if not k.startswith(("text_encoder", "lora_te"))
    )
    rank = max(int(s[0]) for s in down.values())
    return LoraAdapter(name, path, rank, modules, text_encoder, prompt, synthetic)


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
            f"{candidate.rank} or leave it unset to use the pool's max rank"
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
