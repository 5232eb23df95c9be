"""One FLUX block's kernels, FP8 against bf16: ``python -m perf.tools.block_profile --out DIR``.

``profile_step`` builds and compiles a whole recipe (3 minutes cold on an H200) to say where a step's time goes;
this answers the narrower questions a kernel idea raises in about two minutes of device time: which kernels one
double-stream and one single-stream block run, how Inductor fused the FP8 activation quantization into them, and
what a compile mode changes. Each block has FLUX.1-dev's width, seeded random weights, and a LoRA on every Linear
(peft, the rank of the hot-swap slots), as a hot-swap row runs them; FP8 is the builder's own ``quantize_fp8``.

Variants are ``NUMERICS[@MODE][+OPTION=VALUE...]``: ``bf16``, ``fp8`` or ``fp8_fused`` (each GELU output's
FP8 quantization in one pass, ``Recipe.fused_fp8_gelu``; with ``--rank 0``), a ``torch.compile`` mode
(``fp8@max-autotune``), and Inductor options a recipe could set (``Recipe.inductor``), kept to the variant:
``fp8+triton.multi_kernel=1`` screens a setting on two blocks before a whole row is built with it.
Writes ``block-profile.json`` after each variant (a job cut off keeps what it measured); on a CPU it runs at the
tiny model's width, which is how CI checks it.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import torch

from perf.build import compile_settings
from perf.build.builder import quantize_fp8
from perf.build.fused_fp8 import fuse_double_block, fuse_single_block
from perf.run.measure import time_rounds
from perf.tools.profile_step import category, kernel_times

FULL = {"width": 3072, "heads": 24, "head_dim": 128, "image_tokens": 4096, "text_tokens": 512}
TINY = {"width": 64, "heads": 2, "head_dim": 32, "image_tokens": 64, "text_tokens": 16}
NUMERICS = ("bf16", "fp8", "fp8_fused")  # fp8_fused: GELU outputs quantized as perf.build.fused_fp8 does


def make_block(kind: str, numerics: str, size: dict, rank: int, device: str) -> torch.nn.Module:
    """A double- or single-stream FLUX block with seeded weights, FP8-quantized if asked, then LoRA on every
    Linear: the order the builder uses (quantize, then load the adapter). Rank 0: no LoRA, the block an adapter
    merged into its weights would leave (what merging saves is the difference)."""
    from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock, FluxTransformerBlock
    from peft import LoraConfig, inject_adapter_in_model

    torch.manual_seed(0)
    block_type = FluxTransformerBlock if kind == "double" else FluxSingleTransformerBlock
    block = block_type(size["width"], size["heads"], size["head_dim"])
    for param in block.parameters():
        torch.nn.init.normal_(param, std=0.02)
    block = block.to(device, torch.bfloat16).eval()
    if numerics in ("fp8", "fp8_fused"):
        quantize_fp8(block, set_inductor_config=False)
    if numerics == "fp8_fused":  # refuses the LoRA path on the fused linears: fp8_fused takes --rank 0
        (fuse_single_block if kind == "single" else fuse_double_block)(block)
    if rank == 0:
        return block
    linears = [name for name, module in block.named_modules() if isinstance(module, torch.nn.Linear)]
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=linears, init_lora_weights=False)
    return inject_adapter_in_model(config, block).to(device)


def block_inputs(size: dict, device: str) -> dict:
    generator = torch.Generator(device).manual_seed(1)
    tokens = size["image_tokens"] + size["text_tokens"]

    def randn(*shape: int, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
        return torch.randn(*shape, device=device, dtype=dtype, generator=generator)

    return {
        "hidden_states": randn(1, size["image_tokens"], size["width"]),
        "encoder_hidden_states": randn(1, size["text_tokens"], size["width"]),
        "temb": randn(1, size["width"]),
        "image_rotary_emb": (randn(tokens, size["head_dim"], dtype=torch.float32),
                             randn(tokens, size["head_dim"], dtype=torch.float32)),
    }


def relative_error(outputs: tuple[torch.Tensor, ...], reference: tuple[torch.Tensor, ...]) -> float:
    """||outputs - reference|| / ||reference|| over a block's outputs: what its numerics cost against the same
    block's eager bf16 (5.9e-2 and 6.3e-2 for FP8 at full width on the H200). A fused FP8 block that leaves out
    the GELU reads 0.33-0.46 against 0.009-0.010 at the tiny width (``tests/unit/test_fused_fp8.py``)."""
    diff = sum(float((o.float() - r.float()).square().sum()) for o, r in zip(outputs, reference, strict=True))
    return (diff / sum(float(r.float().square().sum()) for r in reference)) ** 0.5


Variant = tuple[str, str | None, tuple[tuple[str, bool | int], ...]]  # numerics, compile mode, Inductor options


def parse_variant(variant: str) -> Variant:
    """``fp8@reduce-overhead+triton.multi_kernel=1`` -> ("fp8", "reduce-overhead", (("triton.multi_kernel", 1),)).
    Raises ValueError naming the variant for bad numerics, an option without a value or with a value neither
    true, false nor an integer, or an option Inductor does not have."""
    head, *options = variant.split("+")
    numerics, _, mode = head.partition("@")
    if numerics not in NUMERICS:
        raise ValueError(f"variant {variant!r}: numerics must be one of {', '.join(NUMERICS)}")
    parsed = []
    for option in options:
        name, sep, text = option.partition("=")
        if text.lower() in ("true", "false"):
            parsed.append((name, text.lower() == "true"))
        elif sep and text.lstrip("-").isdigit():
            parsed.append((name, int(text)))
        else:
            raise ValueError(f"variant {variant!r}: {option!r} is not OPTION=VALUE (true, false or an integer)")
    try:
        compile_settings.check(parsed)
    except ValueError as exc:
        raise ValueError(f"variant {variant!r}: {exc}") from None
    return numerics, mode or None, tuple(parsed)


def variant_list(text: str) -> dict[str, Variant]:
    """``--variants``: each variant by its name, or one usage line (argparse) naming the one that is wrong."""
    try:
        return {variant: parse_variant(variant) for variant in text.split(",")}
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def eager_bf16(kind: str, size: dict, rank: int, device: str) -> tuple[torch.Tensor, ...]:
    """The block's outputs in eager bf16, made once per kind: what each variant's error is measured against."""
    with torch.inference_mode():
        return make_block(kind, "bf16", size, rank, device)(**block_inputs(size, device))


def profile_variant(kind: str, variant: Variant, size: dict, rank: int, device: str, repeats: int,
                    reference: tuple[torch.Tensor, ...]) -> dict:
    numerics, mode, options = variant
    saved = compile_settings.snapshot()
    try:
        compile_settings.apply(options)
        return _profile(kind, numerics, mode, size, rank, device, repeats, reference)
    finally:
        compile_settings.restore(saved)


def _profile(kind: str, numerics: str, mode: str | None, size: dict, rank: int, device: str, repeats: int,
             reference: tuple[torch.Tensor, ...]) -> dict:
    torch.compiler.reset()
    eager = make_block(kind, numerics, size, rank, device)
    lora_layers = sum(1 for name, _ in eager.named_modules() if name.endswith(".lora_A"))
    block = torch.compile(eager, fullgraph=True, mode=mode)
    inputs = block_inputs(size, device)
    with torch.inference_mode():
        compile_s = time_rounds(lambda: block(**inputs), None, 1, device)[0]
        wall = time_rounds(lambda: block(**inputs), None, repeats, device)
        kernels = kernel_times(lambda: block(**inputs), device)
        error = relative_error(block(**inputs), reference)
    by_category: dict[str, float] = defaultdict(float)
    for kernel, ms in kernels.items():
        by_category[category(kernel)] += ms
    return {
        "lora_layers": lora_layers,
        "error_vs_bf16": error,
        "first_call_s": compile_s,
        "wall_ms": statistics.median(wall) * 1e3,
        "kernel_ms": sum(kernels.values()),
        "by_category_ms": dict(by_category),
        "kernels_ms": dict(list(kernels.items())[:40]),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.tools.block_profile", description=__doc__.splitlines()[0])
    parser.add_argument("--variants", type=variant_list, default="bf16,fp8",
                        help="NUMERICS[@MODE][+OPTION=VALUE...],... (default: bf16,fp8)")
    parser.add_argument("--rank", type=int, default=64,
                        help="LoRA rank on every Linear (default: 64; 0: no LoRA, as if merged)")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path(".results/profiles"))
    args = parser.parse_args(argv)
    if args.rank and any(numerics == "fp8_fused" for numerics, _, _ in args.variants.values()):
        parser.error("fp8_fused serves an adapter merged into the weights (the fused linears skip the LoRA path): "
                     "use it with --rank 0")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    size = FULL if device == "cuda" else TINY
    args.out.mkdir(parents=True, exist_ok=True)
    result: dict = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "size": size,
                    "rank": args.rank, "torch": torch.__version__, "blocks": {}}
    for kind in ("double", "single"):
        reference = eager_bf16(kind, size, args.rank, device)
        for variant, parsed in args.variants.items():
            row = profile_variant(kind, parsed, size, args.rank, device, args.repeats, reference)
            result["blocks"][f"{kind}/{variant}"] = row
            (args.out / "block-profile.json").write_text(json.dumps(result, indent=1))
            categories = ", ".join(f"{label} {ms:.3f}" for label, ms in sorted(row["by_category_ms"].items()))
            print(f"{kind:<6} {variant:<24} kernels {row['kernel_ms']:.3f} ms, wall {row['wall_ms']:.3f} ms, "
                  f"first call {row['first_call_s']:.0f} s, error vs bf16 {row['error_vs_bf16']:.2e}: {categories}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
