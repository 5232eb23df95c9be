"""The LoRA pool: synthetic adapters of mixed ranks, alphas and target sets (or the user's files), and the
constraints checked up front (read as diffusers will load it, fits the model, can be hot-swapped) so a bad
adapter gives one clear error instead of a peft stack trace or a silently empty load."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from perf.errors import LoraIncompatibleError, SuiteError
from perf.spec.cache import build_once
from perf.spec.lora_formats import (
    DOUBLE,
    FORMATS,
    PEFT_FORMATS,
    SINGLE,
    MeantLora,
    expressible,
    fusion_of,
    random_lora,
    split_module,
    write_lora,
)
from perf.spec.models import CONFIGS

WEIGHT_NAME = "pytorch_lora_weights.safetensors"
LORA_VERSION = 4  # bump when the synthetic adapters change, so stale caches are rebuilt (4: no lora_B bias)
STRENGTH = 4.0  # std of the weight delta in units of 1/sqrt(fan_in); a default Linear weight's is ~0.58


@dataclass(frozen=True)
class SyntheticLoraSpec:
    """A synthetic adapter as the suite writes it: which Linear families it adapts (None: every Linear the format
    has keys for), in which file format, with per-module ranks and alphas cycling through ``ranks`` and
    ``alphas`` over its fused groups (``alphas`` None: alpha = rank, as in files without alphas).

    One adapter mixes ranks, or alphas, not both where peft must derive an ``alpha_pattern`` that differs from
    another adapter's: peft refuses to hot-swap those (``hotswap_findings``). So PEFT and ai-toolkit files mix
    ranks under one alpha, kohya files mix alphas (baked into the weights) under one rank."""

    name: str
    format: str  # one of perf.spec.lora_formats.FORMATS
    ranks: tuple[int, ...]
    alphas: tuple[float, ...] | None
    seed: int
    prompt: str
    families: tuple[str, ...] | None = None  # perf.spec.loras.family names; None: all the format can express
    bias: bool = False  # a lora_B bias on every module (PEFT-format files)

    @property
    def rank(self) -> int:
        return max(self.ranks)


def family(module: str) -> str:
    """A Linear's family: its name inside a block, with the block's kind (``double.attn.to_q``,
    ``single.proj_out``), or its own name at the top level (``proj_out``, ``x_embedder``)."""
    kind, _, local = split_module(module)
    return {DOUBLE: "double.", SINGLE: "single.", "": ""}[kind] + local


def scaled_ranks(ranks: tuple[int, ...], size: str) -> tuple[int, ...]:
    """The tiny model's ranks; four times them at full size (FLUX.1-dev adapters are rank 16-128)."""
    return ranks if size == "tiny" else tuple(4 * r for r in ranks)


def synthetic_specs(size: str) -> tuple[SyntheticLoraSpec, ...]:
    """The main pool, one adapter per format family people download. The first adapts every Linear of the model
    (hot-swapped adapters may only target a subset of the first one's modules: ``order_for_hotswap``). It carries
    no lora_B bias: peft 0.21.0's ``TorchaoLoraLinear`` refuses one ("does not support lora_bias yet"; measured on
    the H200, 2026-11-29), which would stop every FP8 row at the stack check; a biased PEFT file is checked on its
    own (tests/unit/test_lora_formats.py). The others are kohya (``lora_unet_*`` + ``.alpha``), XLabs
    (``processor.*``) and an ai-toolkit file (``transformer.*`` + ``.alpha``, no metadata) with its tensors in reverse
    order. ComfyUI and the other formats are in the churn; BFL ``lora_A``/``lora_B`` files are a finding
    (``format_findings``)."""
    return (
        SyntheticLoraSpec("peft_all", "peft", scaled_ranks((4, 2, 8), size), (6.0,), 1,
                          "a red fox in the snow, peft_all"),
        SyntheticLoraSpec("kohya", "kohya", scaled_ranks((8,), size), (8.0, 3.0, 16.0, 4.0), 2,
                          "a lighthouse at dusk, kohya"),
        SyntheticLoraSpec("xlabs", "xlabs", scaled_ranks((16,), size), None, 3, "a bowl of ramen, xlabs"),
        SyntheticLoraSpec("ai_toolkit_reordered", "reordered", scaled_ranks((2, 8, 4), size), (3.0,), 4,
                          "a paper boat on a lake, ai_toolkit_reordered",
                          families=("double.attn.to_q", "double.attn.to_k", "double.attn.to_v", "double.ff.net.2",
                                    "single.proj_mlp", "single.proj_out", "proj_out", "context_embedder",
                                    "x_embedder")),
    )


def meant_lora(spec: SyntheticLoraSpec, shapes: dict[str, tuple[int, int]],
               excluded: frozenset[str] = frozenset()) -> MeantLora:
    """``spec``'s adapter as meant, for the Linears ``shapes`` lists (out, in by module) less the ``excluded``
    families. Seeded, never zero: B is random too, scaled so each module's delta has std ``STRENGTH``/sqrt(fan_in),
    about 7x a default-initialized weight: a random FLUX barely moves its image for smaller deltas (0.9x gave
    0.012 mean abs on the H100), and the swap checks need adapters whose images differ well beyond bf16 noise.
    The modules of one fused group of the format share a rank and an alpha (XLabs: one A too), as the format
    stores them."""
    gen = torch.Generator().manual_seed(spec.seed)
    chosen = {m: s for m, s in shapes.items() if expressible(m, spec.format) and family(m) not in excluded
              and (spec.families is None or family(m) in spec.families)}
    meant = {}
    for i, (_, modules) in enumerate(sorted(fused_modules(chosen, spec.format).items())):
        rank = spec.ranks[i % len(spec.ranks)]
        alpha = rank if spec.alphas is None else spec.alphas[i % len(spec.alphas)]
        shared = None
        for module in modules:
            out_f, in_f = chosen[module]
            meant[module] = random_lora(out_f, in_f, rank, alpha, gen, STRENGTH, spec.bias, shared)
            shared = meant[module].a if spec.format == "xlabs" else None
    return meant


def fused_modules(modules, fmt: str) -> dict[str, list[str]]:
    """``modules`` grouped as ``fmt`` stores them: one group per fused Linear of kohya, ComfyUI, BFL and XLabs
    files, one per module in PEFT-format files."""
    groups: dict[str, list[str]] = {}
    for module in sorted(modules):
        fused = None if fmt in PEFT_FORMATS else fusion_of(module, "xlabs" if fmt == "xlabs" else "bfl")
        groups.setdefault(fused[0] if fused else module, []).append(module)
    return groups


@dataclass(frozen=True)
class FormatFinding:
    """What diffusers cannot do with a format's keys for some Linear families at this model's widths, measured
    each time a pool is made (one file per fused group of the first block of each kind, converted with
    ``FluxPipeline.lora_state_dict``): the pool leaves those keys out of its adapter of that format, and every
    record names the finding, so the gap is in the open and closes by itself when diffusers fixes it."""

    format: str
    families: tuple[str, ...]
    problem: str
    versions: dict[str, str]  # library -> version it was measured on

    @property
    def subject(self) -> str:
        return f"{self.format} keys for {', '.join(self.families)}"


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in ("diffusers", "peft", "torch")}


def format_findings(fmt: str, shapes: dict[str, tuple[int, int]]) -> tuple[FormatFinding, ...]:
    """Each fused group of ``fmt`` (in the first double and single block, and at the top level) written alone
    and read as diffusers loads it: a group it cannot convert, or converts to modules it does not load, is a
    finding."""
    import tempfile

    from diffusers import FluxPipeline

    probe = SyntheticLoraSpec("probe", fmt, (4,), None, 0, "")
    firsts = {m: s for m, s in shapes.items() if split_module(m)[1] in (None, 0) and expressible(m, fmt)}
    failed: dict[str, list[str]] = {}  # problem -> families
    with tempfile.TemporaryDirectory() as folder:
        for i, (_, modules) in enumerate(sorted(fused_modules(firsts, fmt).items())):
            families = sorted({family(m) for m in modules})
            meant = meant_lora(dataclasses.replace(probe, families=tuple(families)), {m: firsts[m] for m in modules})
            path = write_lora(meant, fmt, Path(folder) / f"{i}.safetensors")
            try:
                converted = FluxPipeline.lora_state_dict(str(path))
            except Exception as exc:  # diffusers' converters fail with bare assertions and key errors
                failed.setdefault(f"diffusers cannot convert them ({type(exc).__name__})", []).extend(families)
                continue
            loaded = {layer.module for layer in _transformer_layers({k: tuple(v.shape) for k, v in converted.items()})}
            if set(meant) - loaded:
                failed.setdefault("diffusers converts them to keys load_lora_weights ignores, so it loads nothing "
                                  "into those modules, silently", []).extend(families)
    return tuple(FormatFinding(fmt, tuple(families), problem, _versions()) for problem, families in failed.items())


@dataclass(frozen=True)
class LoraLayer:
    """One transformer module an adapter adapts, as diffusers will load it (its keys converted to peft format):
    lora_A is (rank, in_features), lora_B (out_features, rank)."""

    module: str
    rank: int
    in_features: int
    out_features: int | None  # None: the file has no lora_B for it
    bias: bool = False  # the file has a lora_B bias for it (peft's lora_bias)


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

    @property
    def bias_modules(self) -> frozenset[str]:
        return frozenset(layer.module for layer in self.layers if layer.bias)


@dataclass(frozen=True)
class LoraPool:
    adapters: tuple[LoraAdapter, ...]
    findings: tuple[FormatFinding, ...] = ()  # what diffusers could not load of the synthetic formats

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
        if _saved_by_torch(path):
            raise SuiteError(
                f"LoRA {path}: a PyTorch file (torch.save, as pytorch_lora_weights.bin is), but only safetensors "
                "adapter files are supported; convert it once: python -c \"import torch, safetensors.torch as st; "
                f"st.save_file(torch.load('{path}', weights_only=True), '{path.with_suffix('.safetensors')}')\""
            ) from None
        raise SuiteError(
            f"LoRA {path}: not a readable safetensors file ({exc}); is it truncated? Download or save it again"
        ) from exc
    if not any(".lora_A." in k or ".lora_down." in k or (".processor." in k and k.endswith(".down.weight"))
               for k in keys):
        raise SuiteError(
            f"LoRA {path}: not a LoRA (no lora_A/lora_down weights among {len(keys)} tensors); pass a LoRA "
            "adapter file (diffusers/peft lora_A/lora_B, kohya lora_down/lora_up or XLabs processor weights)"
        )


def _saved_by_torch(path: Path) -> bool:
    """Whether ``path`` is what ``torch.save`` writes: a zip archive holding ``data.pkl``, or (the legacy format)
    a pickle, whose first byte is pickle's PROTO opcode."""
    import zipfile

    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return any(name.rpartition("/")[2] == "data.pkl" for name in archive.namelist())
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"


KOHYA_LINEAR1 = re.compile(r"single_blocks[._]\d+[._]linear1\.lora_down\.weight$")  # kohya and ComfyUI keys


def _kohya_single_block_width(path: Path) -> tuple[str, int] | None:
    """A kohya/ComfyUI single-block ``linear1`` key of the file and the width its lora_down reads (the model's
    hidden size), or None where the file has none."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        key = next((k for k in list(f.keys()) if KOHYA_LINEAR1.search(k)), None)
        return None if key is None else (key, int(f.get_slice(key).get_shape()[-1]))


def _diffusers_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """The file's tensor shapes under the keys ``FluxPipeline.load_lora_weights`` uses: diffusers converts
    kohya, xlabs and BFL formats to peft keys first. Its converters assume FLUX.1-dev's layer widths (a bare
    ``AssertionError`` otherwise), so a file they refuse is named here, not met as a traceback in every test."""
    from diffusers import FluxPipeline

    try:
        state = FluxPipeline.lora_state_dict(str(path))
    except Exception as exc:
        detail = (str(exc).splitlines() or [""])[0][:200]
        _refuse_kohya_width(path, exc)
        raise SuiteError(
            f"LoRA {path}: diffusers cannot convert this kohya/other-format file ({type(exc).__name__}"
            f"{': ' + detail if detail else ''}); its converters expect FLUX.1-dev's layer widths: is it an "
            "adapter for another model? Use an adapter made for this model, saved with diffusers or peft"
        ) from None
    return {k: tuple(v.shape) for k, v in state.items()}


def _refuse_kohya_width(path: Path, exc: Exception) -> None:
    """Name the cause when diffusers' kohya converter failed on a file whose single blocks are not FLUX.1-dev's
    width: the converter splits ``linear1`` at FLUX.1-dev's widths, so a file made for a FLUX-architecture model of
    another width (the tiny model's, say) fails whether or not it fits that model."""
    found = _kohya_single_block_width(path)
    dev = CONFIGS["full"]["transformer"]
    width = dev["num_attention_heads"] * dev["attention_head_dim"]
    if found is None or found[1] == width:
        return
    from importlib.metadata import version

    key, found_width = found
    raise SuiteError(
        f"LoRA {path}: diffusers {version('diffusers')} cannot convert its kohya single-block keys ({key} is "
        f"{found_width} wide; {type(exc).__name__}): its kohya converter hard-codes FLUX.1-dev's widths (a single "
        f"block's linear1 split as q, k, v of {width} and an MLP of {4 * width}), so a kohya file for a model of "
        "another width does not load even where it fits that model. Save the adapter in PEFT format "
        "(transformer.<module>.lora_A/lora_B) for this model, or leave out its single-block keys"
    ) from None


def _transformer_layers(shapes: dict[str, tuple[int, ...]]) -> frozenset[LoraLayer]:
    """The transformer modules of a peft-format state dict, with their lora_A/lora_B shapes."""
    a_suffix, b_suffix = ".lora_A.weight", ".lora_B.weight"

    def by_module(suffix: str) -> dict[str, tuple[int, ...]]:
        return {k.removeprefix(TRANSFORMER_PREFIX).removesuffix(suffix): s for k, s in shapes.items()
                if k.startswith(TRANSFORMER_PREFIX) and k.endswith(suffix)}

    b, bias = by_module(b_suffix), by_module(".lora_B.bias")
    return frozenset(
        LoraLayer(module, int(a[0]), int(a[-1]), int(b[module][0]) if module in b else None, module in bias)
        for module, a in by_module(a_suffix).items()
    )


def synthetic_meant(spec: SyntheticLoraSpec, size: str) -> MeantLora:
    """``spec``'s adapter as the pool writes it for ``size``: without the families its format cannot load there."""
    shapes = transformer_linear_shapes(CONFIGS[size]["transformer"])
    return meant_lora(spec, shapes, excluded_families(format_findings(spec.format, shapes)))


def excluded_families(findings: tuple[FormatFinding, ...]) -> frozenset[str]:
    return frozenset(f for finding in findings for f in finding.families)


def pool_of_specs(specs: tuple[SyntheticLoraSpec, ...], size: str, folder: Path) -> LoraPool:
    """Synthetic adapters written once under ``folder/<name>/`` and read back like any user file, each without
    the keys diffusers cannot load at this size (``format_findings``: every format is probed, the pool's or not,
    and the findings travel with the pool into every record)."""
    shapes = transformer_linear_shapes(CONFIGS[size]["transformer"])
    findings = {fmt: format_findings(fmt, shapes) for fmt in FORMATS}
    adapters = []
    for spec in specs:
        excluded = excluded_families(findings[spec.format])
        where = folder / (spec.name + (f"-without-{_digest(sorted(excluded))}" if excluded else ""))
        meant = meant_lora(spec, shapes, excluded)
        build_once(where, WEIGHT_NAME, lambda staging, m=meant, f=spec.format: write_lora(m, f, staging / WEIGHT_NAME))
        adapters.append(inspect_lora(where / WEIGHT_NAME, spec.name, spec.prompt, synthetic=True))
    return order_for_hotswap(LoraPool(tuple(adapters), tuple(f for fmt in FORMATS for f in findings[fmt])))


def synthetic_pool(size: str, cache: Path) -> LoraPool:
    return pool_of_specs(synthetic_specs(size), size, cache / "loras" / f"synthetic-{size}-v{LORA_VERSION}")


def _digest(parts: list[str]) -> str:
    import hashlib

    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:8]


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
    pool = order_for_hotswap(user_pool(specs, REAL_LORA_PROMPT)) if specs else synthetic_pool(size, cache)
    if len(pool.adapters) < 2:
        raise SuiteError("the LoRA pool needs at least two adapters to swap between; pass --lora twice or more")
    return pool


def check_hotswap(first: LoraAdapter, candidate: LoraAdapter, target_rank: int) -> None:
    """Raise ``LoraIncompatibleError`` naming the constraint if ``candidate`` cannot be hot-swapped in."""
    if candidate.text_encoder:
        raise LoraIncompatibleError(
            f"LoRA {candidate.path} has text-encoder weights: hot-swapping text-encoder "
            "adapters is not supported by diffusers; use a transformer-only LoRA or a recipe without hot-swap"
        )
    if candidate.rank > target_rank:
        raise LoraIncompatibleError(
            f"LoRA {candidate.path} has rank {candidate.rank} but hot-swap was prepared for rank {target_rank}: "
            f"enable_lora_hotswap(target_rank=...) must be at least the pool's max rank; pass --max-rank "
            f"{candidate.rank} or more, or leave it unset to use the pool's max rank"
        )
    extra = uncovered(first, candidate)
    if extra:
        shown = ", ".join(extra[:4]) + (f" and {len(extra) - 4} more" if len(extra) > 4 else "")
        raise LoraIncompatibleError(
            f"LoRA {candidate.path} targets {len(extra)} module(s) (or lora_B biases) that the first adapter "
            f"{first.path} does not ({shown}): PEFT hot-swaps only into the LoRA layers the first adapter made, "
            "so a later adapter may target the same modules or a subset; load the adapter with the most targets "
            "first"
        )


def uncovered(first: LoraAdapter, candidate: LoraAdapter) -> list[str]:
    """What ``candidate`` needs that hot-swapping into ``first``'s layers cannot give: modules ``first`` has no
    LoRA layer for, and lora_B biases where ``first``'s layer has none (peft's ``hotswap_adapter_from_state_dict``
    refuses both as unexpected keys; missing ones it zeroes)."""
    return sorted(candidate.modules - first.modules) + sorted(
        f"{m} (lora_B bias)" for m in candidate.bias_modules - first.bias_modules)


def order_for_hotswap(pool: LoraPool) -> LoraPool:
    """The pool with an adapter that covers all the others first (the first of them in the given order), so every
    other one can be hot-swapped into its layers; unchanged when none does (``check_pool`` then says why no order
    works, for the recipes that hot-swap)."""
    for i, adapter in enumerate(pool.adapters):
        if not any(uncovered(adapter, other) for other in pool.adapters):
            return dataclasses.replace(pool, adapters=(adapter, *pool.adapters[:i], *pool.adapters[i + 1:]))
    return pool


def check_pool(pool: LoraPool, target_rank: int) -> None:
    """Every adapter fits the first one's hot-swap preparation; when none could be first, say so for the pool."""
    first = pool.adapters[0]
    if any(uncovered(first, other) for other in pool.adapters):
        lacks = "; ".join(
            f"{a.path} lacks targets of {', '.join(str(b.path) for b in pool.adapters if uncovered(a, b))}"
            for a in pool.adapters)
        raise LoraIncompatibleError(
            f"no order of the LoRA pool can be hot-swapped: PEFT hot-swaps only into the LoRA layers the first "
            f"adapter made, and no adapter targets every module (and lora_B bias) the others do ({lacks}). Add an "
            "adapter that covers them all, or run the recipes without hot-swap"
        )
    for adapter in pool.adapters:
        check_hotswap(first, adapter, target_rank)


def hotswap_target_rank(pool: LoraPool, requested: int | None) -> int:
    """The rank ``enable_lora_hotswap`` prepares for: ``requested`` (``--max-rank``) or the pool's max rank. A
    requested rank below the pool's max cannot hold its biggest adapter."""
    if requested is None:
        return pool.max_rank
    if requested < pool.max_rank:
        biggest = max(pool.adapters, key=lambda a: a.rank)
        raise LoraIncompatibleError(
            f"--max-rank {requested} is below the LoRA pool's max rank {pool.max_rank} ({biggest.path}): "
            "hot-swap must be prepared for the biggest adapter; pass --max-rank "
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
