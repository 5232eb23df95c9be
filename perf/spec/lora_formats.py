"""LoRA files in the key formats people download, written from one adapter as it is meant to act.

An adapter is meant as ``MeantLora``: for each transformer module (diffusers names) its A, B, alpha and lora_B
bias. A writer puts it into one format's keys, with the fusions that format has: kohya (``lora_unet_*`` with
``.alpha``) and ComfyUI (``diffusion_model.*`` with ``lora_down``/``lora_up``) fuse a double block's q/k/v and a
single block's q/k/v/mlp into BFL's ``qkv``/``linear1`` (written block-diagonal, which diffusers' converter splits
back exactly); XLabs (``processor.*``) shares one A across a fused q/k/v and has no alpha; PEFT/ai-toolkit
(``transformer.*``) with the adapter config as metadata, or with ``.alpha`` tensors and no metadata; BFL
(``diffusion_model.*`` with ``lora_A``/``lora_B``). Diffusers converts them at load
(``FluxPipeline.lora_state_dict``); nothing here builds PEFT dicts for the pipeline.

``conversion_errors`` compares what a pipeline loaded against what was meant, module by module (the weight delta
``scaling * B @ A`` plus the bias): a converter that drops a module, mis-scales one or mixes up a fusion is named.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

FORMATS = ("peft", "ai_toolkit", "reordered", "kohya", "comfyui", "xlabs", "bfl")
PEFT_FORMATS = ("peft", "ai_toolkit", "reordered")  # transformer.<module> keys, one LoRA per module

DOUBLE, SINGLE = "transformer_blocks", "single_transformer_blocks"
# diffusers module (in a block) -> (BFL module, position in BFL's fused Linear, size of that fusion)
DOUBLE_BFL = {
    "attn.to_q": ("img_attn.qkv", 0, 3), "attn.to_k": ("img_attn.qkv", 1, 3), "attn.to_v": ("img_attn.qkv", 2, 3),
    "attn.add_q_proj": ("txt_attn.qkv", 0, 3), "attn.add_k_proj": ("txt_attn.qkv", 1, 3),
    "attn.add_v_proj": ("txt_attn.qkv", 2, 3),
    "attn.to_out.0": ("img_attn.proj", 0, 1), "attn.to_add_out": ("txt_attn.proj", 0, 1),
    "ff.net.0.proj": ("img_mlp.0", 0, 1), "ff.net.2": ("img_mlp.2", 0, 1),
    "ff_context.net.0.proj": ("txt_mlp.0", 0, 1), "ff_context.net.2": ("txt_mlp.2", 0, 1),
    "norm1.linear": ("img_mod.lin", 0, 1), "norm1_context.linear": ("txt_mod.lin", 0, 1),
}
SINGLE_BFL = {
    "attn.to_q": ("linear1", 0, 4), "attn.to_k": ("linear1", 1, 4), "attn.to_v": ("linear1", 2, 4),
    "proj_mlp": ("linear1", 3, 4), "proj_out": ("linear2", 0, 1), "norm.linear": ("modulation.lin", 0, 1),
}
TOP_BFL = {"x_embedder": ("img_in", 0, 1), "context_embedder": ("txt_in", 0, 1),
           "proj_out": ("final_layer.linear", 0, 1)}
# XLabs' processors: img q/k/v, txt q/k/v and the two output projections of a double block; q/k/v and proj_out of
# a single block (no LoRA on its mlp, modulations, feed-forwards or the top-level Linears)
XLABS_DOUBLE = {"attn.to_q": ("qkv_lora1", 0, 3), "attn.to_k": ("qkv_lora1", 1, 3), "attn.to_v": ("qkv_lora1", 2, 3),
                "attn.add_q_proj": ("qkv_lora2", 0, 3), "attn.add_k_proj": ("qkv_lora2", 1, 3),
                "attn.add_v_proj": ("qkv_lora2", 2, 3), "attn.to_out.0": ("proj_lora1", 0, 1),
                "attn.to_add_out": ("proj_lora2", 0, 1)}
XLABS_SINGLE = {"attn.to_q": ("qkv_lora", 0, 3), "attn.to_k": ("qkv_lora", 1, 3), "attn.to_v": ("qkv_lora", 2, 3),
                "proj_out": ("proj_lora", 0, 1)}


@dataclass(frozen=True)
class ModuleLora:
    """One module's LoRA as meant: its delta is ``alpha / rank * b @ a`` (+ ``bias`` on lora_B's output)."""

    a: torch.Tensor  # (rank, in_features)
    b: torch.Tensor  # (out_features, rank)
    alpha: float
    bias: torch.Tensor | None = None  # (out_features,)

    @property
    def rank(self) -> int:
        return self.a.shape[0]

    def delta(self) -> torch.Tensor:
        return (self.alpha / self.rank) * self.b.float() @ self.a.float()


MeantLora = dict[str, ModuleLora]  # transformer module (diffusers name) -> its LoRA


def split_module(module: str) -> tuple[str, int | None, str]:
    """``transformer_blocks.3.attn.to_q`` -> (``transformer_blocks``, 3, ``attn.to_q``); top level: ("", None, name)."""
    head, _, rest = module.partition(".")
    if head in (DOUBLE, SINGLE):
        index, _, local = rest.partition(".")
        return head, int(index), local
    return "", None, module


def fusion_of(module: str, table: str = "bfl") -> tuple[str, int, int] | None:
    """(fused module's name in the format's keys, position, fusion size), or None where the format has no key for
    ``module``. ``table``: "bfl" (kohya, ComfyUI, BFL) or "xlabs"."""
    kind, index, local = split_module(module)
    if table == "xlabs":
        found = {DOUBLE: XLABS_DOUBLE, SINGLE: XLABS_SINGLE}.get(kind, {}).get(local)
        return None if found is None else (f"{'double' if kind == DOUBLE else 'single'}_blocks.{index}.processor."
                                           f"{found[0]}", found[1], found[2])
    if kind == "":
        found = TOP_BFL.get(local)
        return None if found is None else found
    found = (DOUBLE_BFL if kind == DOUBLE else SINGLE_BFL).get(local)
    return None if found is None else (f"{'double' if kind == DOUBLE else 'single'}_blocks.{index}.{found[0]}",
                                       found[1], found[2])


def expressible(module: str, fmt: str) -> bool:
    """Whether ``fmt`` has keys for ``module``."""
    if fmt in PEFT_FORMATS:
        return True
    return fusion_of(module, "xlabs" if fmt == "xlabs" else "bfl") is not None


def fused_groups(meant: MeantLora, table: str) -> dict[str, list[tuple[int, str]]]:
    """The format's fused module -> [(position, diffusers module)] of the modules ``meant`` adapts."""
    groups: dict[str, list[tuple[int, str]]] = {}
    for module in sorted(meant):
        fused, position, _ = fusion_of(module, table)
        groups.setdefault(fused, []).append((position, module))
    return groups


def _fused_factors(parts: list[ModuleLora], shared_a: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One (down, up) pair for modules fused into one Linear, in fusion order. Block-diagonal (down stacked, up
    block-diagonal: each part keeps its own A) or, with ``shared_a`` (XLabs), one A and the Bs stacked."""
    if shared_a:
        return parts[0].a, torch.cat([p.b for p in parts])
    return torch.cat([p.a for p in parts]), torch.block_diag(*[p.b for p in parts])


def _check_fusion(fused: str, parts: list[tuple[int, str]], meant: MeantLora, size: int, shared_a: bool) -> None:
    """A fused Linear has one rank and one alpha (XLabs: one A too), and every part (it cannot leave one out)."""
    loras = [meant[m] for _, m in parts]
    if len(parts) != size or len({(lo.rank, lo.alpha) for lo in loras}) != 1:
        raise ValueError(f"{fused}: its {size} fused modules need one rank and alpha each, got "
                         f"{[(m, meant[m].rank, meant[m].alpha) for _, m in parts]}")
    if shared_a and not all(torch.equal(lo.a, loras[0].a) for lo in loras):
        raise ValueError(f"{fused}: XLabs shares one lora down across the fused q/k/v")


def bfl_tensors(meant: MeantLora, prefix: str, down: str, up: str, dots: bool) -> dict[str, torch.Tensor]:
    """kohya / ComfyUI / BFL keys: ``{prefix}{bfl module}.{down}.weight``, ``.{up}.weight`` and ``.alpha`` (kohya's
    scale is alpha over the fused rank, so a fusion of n parts of rank r carries n * alpha)."""
    tensors = {}
    for fused, parts in fused_groups(meant, "bfl").items():
        size = fusion_of(parts[0][1])[2]
        _check_fusion(fused, parts, meant, size, shared_a=False)
        ordered = [meant[m] for _, m in sorted(parts)]
        a, b = _fused_factors(ordered, shared_a=False)
        name = prefix + (fused if dots else fused.replace(".", "_"))
        tensors[f"{name}.{down}.weight"] = a
        tensors[f"{name}.{up}.weight"] = b
        tensors[f"{name}.alpha"] = torch.tensor(ordered[0].alpha * size, dtype=a.dtype)
    return tensors


def xlabs_tensors(meant: MeantLora) -> dict[str, torch.Tensor]:
    """XLabs keys: ``double_blocks.N.processor.qkv_lora1.down.weight`` and so on; no alpha (its scale is 1)."""
    tensors = {}
    for fused, parts in fused_groups(meant, "xlabs").items():
        size = fusion_of(parts[0][1], "xlabs")[2]
        _check_fusion(fused, parts, meant, size, shared_a=True)
        ordered = [meant[m] for _, m in sorted(parts)]
        if ordered[0].alpha != ordered[0].rank:
            raise ValueError(f"{fused}: XLabs files have no alpha, so alpha must equal the rank")
        tensors[f"{fused}.down.weight"], tensors[f"{fused}.up.weight"] = _fused_factors(ordered, shared_a=True)
    return tensors


def peft_tensors(meant: MeantLora, alphas: bool) -> dict[str, torch.Tensor]:
    """``transformer.{module}.lora_A.weight`` / ``lora_B.weight`` (/ ``lora_B.bias``), with ``.alpha`` tensors when
    ``alphas`` (ai-toolkit style files without metadata)."""
    tensors = {}
    for module, lora in meant.items():
        tensors[f"transformer.{module}.lora_A.weight"] = lora.a
        tensors[f"transformer.{module}.lora_B.weight"] = lora.b
        if lora.bias is not None:
            tensors[f"transformer.{module}.lora_B.bias"] = lora.bias
        if alphas:
            tensors[f"transformer.{module}.alpha"] = torch.tensor(float(lora.alpha), dtype=lora.a.dtype)
    return tensors


def lora_config(meant: MeantLora) -> dict:
    """The PEFT ``LoraConfig`` fields that define ``meant``'s effect, as diffusers reads them from a file's
    metadata: the commonest rank and alpha, every other module's in ``rank_pattern``/``alpha_pattern`` (diffusers
    0.35-0.37 need the patterns present), targets by exact name and pattern keys anchored with ``^`` as diffusers
    anchors them itself (peft matches a pattern as a suffix, first match wins: an unanchored ``proj_out`` gave
    every single block's ``proj_out`` the top-level one's alpha, 99.7% of its delta wrong), lora_bias where any
    module has one."""
    from collections import Counter

    r = Counter(lo.rank for lo in meant.values()).most_common(1)[0][0]
    alpha = Counter(lo.alpha for lo in meant.values()).most_common(1)[0][0]
    return {
        "r": r, "lora_alpha": alpha,
        "rank_pattern": {f"^{m}": lo.rank for m, lo in sorted(meant.items()) if lo.rank != r},
        "alpha_pattern": {f"^{m}": lo.alpha for m, lo in sorted(meant.items()) if lo.alpha != alpha},
        "target_modules": sorted(meant), "lora_bias": any(lo.bias is not None for lo in meant.values()),
        "use_dora": False, "use_rslora": False,
    }


def format_tensors(meant: MeantLora, fmt: str) -> dict[str, torch.Tensor]:
    """``meant`` in ``fmt``'s keys (the peft format's config goes in the file's metadata: ``write_lora``)."""
    if any(lo.bias is not None for lo in meant.values()) and fmt not in PEFT_FORMATS:
        raise ValueError(f"{fmt} files carry no lora_B bias")
    missing = sorted(m for m in meant if not expressible(m, fmt))
    if missing:
        raise ValueError(f"{fmt} has no keys for {missing}")
    writers: dict[str, Callable[[], dict]] = {
        "peft": lambda: peft_tensors(meant, alphas=False),
        "ai_toolkit": lambda: peft_tensors(meant, alphas=True),
        "reordered": lambda: peft_tensors(meant, alphas=True),
        "kohya": lambda: bfl_tensors(meant, "lora_unet_", "lora_down", "lora_up", dots=False),
        "comfyui": lambda: bfl_tensors(meant, "diffusion_model.", "lora_down", "lora_up", dots=True),
        "bfl": lambda: bfl_tensors(meant, "diffusion_model.", "lora_A", "lora_B", dots=True),
        "xlabs": lambda: xlabs_tensors(meant),
    }
    return {k: v.contiguous() for k, v in writers[fmt]().items()}


def write_lora(meant: MeantLora, fmt: str, path: Path) -> Path:
    """Write ``meant`` to ``path`` in ``fmt``. The peft format goes through diffusers' own saver with the adapter
    config as metadata; "reordered" is written by hand with its tensors in reverse order (lora_B before lora_A,
    the last module first), as tools that do not sort their keys write them."""
    from safetensors.torch import save_file

    tensors = format_tensors(meant, fmt)
    if fmt == "peft":
        from diffusers import FluxPipeline

        FluxPipeline.save_lora_weights(
            path.parent, transformer_lora_layers={k.removeprefix("transformer."): v for k, v in tensors.items()},
            weight_name=path.name, transformer_lora_adapter_metadata=lora_config(meant),
        )
    elif fmt == "reordered":
        write_safetensors_in_order(dict(reversed(sorted(tensors.items()))), path)
    else:
        save_file(tensors, str(path))
    return path


_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}


def write_safetensors_in_order(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """A safetensors file whose header and data hold the tensors in ``tensors``' order (``safetensors`` itself
    sorts them): the format allows any order, and a loader must not depend on it."""
    header, offset, blobs = {}, 0, []
    for name, tensor in tensors.items():
        blob = tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        header[name] = {"dtype": _DTYPES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for blob in blobs:
            f.write(blob)


# --- what a pipeline loaded, against what was meant -------------------------------------------------------------

CONVERSION_TOLERANCE = 0.02  # relative error of a module's delta: bf16 rounding of kohya's pre-scaled factors ~0.4%


def loaded_deltas(transformer: torch.nn.Module, adapter: str) -> dict[str, torch.Tensor]:
    """Each PEFT LoRA layer's delta for ``adapter`` (scaling * B @ A, float32, bias as an extra last column)."""
    from peft.tuners.lora import LoraLayer

    deltas = {}
    for name, module in transformer.named_modules():
        if isinstance(module, LoraLayer) and adapter in module.lora_A:
            scaling = module.scaling[adapter]
            scaling = float(scaling) if not isinstance(scaling, torch.Tensor) else float(scaling.item())
            delta = scaling * module.lora_B[adapter].weight.float() @ module.lora_A[adapter].weight.float()
            bias = module.lora_B[adapter].bias
            column = torch.zeros(delta.shape[0]) if bias is None else bias.detach().float()
            deltas[name] = torch.cat([delta.detach(), column[:, None]], dim=1)
    return deltas


def meant_deltas(meant: MeantLora) -> dict[str, torch.Tensor]:
    out = {}
    for module, lora in meant.items():
        column = torch.zeros(lora.b.shape[0]) if lora.bias is None else lora.bias.float()
        out[module] = torch.cat([lora.delta(), column[:, None]], dim=1)
    return out


def conversion_errors(meant: MeantLora, loaded: dict[str, torch.Tensor]) -> dict[str, str]:
    """Module -> what is wrong with it after loading (missing, unexpected, or its delta's relative error beyond
    ``CONVERSION_TOLERANCE``); empty when the file acts as meant."""
    errors = {}
    expected = meant_deltas(meant)
    for module in sorted(set(expected) | set(loaded)):
        if module not in loaded:
            errors[module] = "not loaded"
        elif module not in expected:
            errors[module] = "loaded but not in the adapter"
        else:
            error = float((loaded[module] - expected[module]).norm() / expected[module].norm())
            if not error <= CONVERSION_TOLERANCE:
                errors[module] = f"delta off by {error:.1%}"
    return errors


def random_lora(out_f: int, in_f: int, rank: int, alpha: float, gen: torch.Generator, strength: float,
                bias: bool = False, a: torch.Tensor | None = None) -> ModuleLora:
    """Seeded factors, never zero, scaled so the delta has std ``strength``/sqrt(in_f) whatever rank and alpha."""
    a = torch.randn(rank, in_f, generator=gen) / math.sqrt(in_f) if a is None else a
    b = torch.randn(out_f, rank, generator=gen) * (strength * math.sqrt(rank) / alpha)
    column = torch.randn(out_f, generator=gen) * (strength / math.sqrt(in_f)) if bias else None
    to = torch.bfloat16
    return ModuleLora(a.to(to), b.to(to), float(alpha), None if column is None else column.to(to))
