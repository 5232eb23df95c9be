"""Where one denoising step's time goes: ``python -m perf.profile_step --recipe optimized --out DIR``.

Builds the recipe exactly as the suite does (``build_pipeline``), warms the transformer up on inputs of the
settings' shapes (compile happens there), then profiles one transformer forward with ``torch.profiler`` and
sorts its GPU kernels into matmuls (bf16 / FP8), attention, Triton-fused and other kernels. Needs a GPU.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import torch

from perf.builder import attention_shape, build_pipeline
from perf.cache import cache_dir
from perf.loras import synthetic_pool
from perf.models import resolve_source
from perf.profiles import resolve_profile
from perf.recipes import get_recipe
from perf.settings import SETTINGS_BY_SIZE

CATEGORIES = (  # first match wins; names are CUDA kernel names
    # Inductor names a fused kernel after the ops it absorbed ("..._scaled_mm__to_copy_amax..." is the FP8
    # activation quantization, "..._cudnn_attention__permute..." the rope/permute before attention).
    ("triton fused", ("triton",)),
    ("attention", ("flash", "fmha", "attention", "cudnn", "sdpa")),
    # cuBLASLt's FP8 kernels: "nvjet_sm90_qqtst_..._ovscale" (qq: fp8 operands, ovscale: per-row scales)
    ("matmul fp8", ("scaled_mm", "e4m3", "f8f8", "fp8", "qqtst", "ovscale")),
    ("matmul bf16", ("gemm", "nvjet", "cutlass", "xmma", "cublas", "sm90_")),
)


def category(kernel: str) -> str:
    name = kernel.lower()
    return next((label for label, keys in CATEGORIES if any(k in name for k in keys)), "other")


def transformer_inputs(pipe, settings) -> dict:
    """Random inputs of the shapes the pipeline feeds its transformer at ``settings`` (one step, batch 1)."""
    _, tokens, _, _ = attention_shape(pipe, settings)
    image_tokens = tokens - settings.max_sequence_length
    cfg = pipe.transformer.config
    kw = {"device": "cuda", "dtype": torch.bfloat16}
    return {
        "hidden_states": torch.randn(1, image_tokens, cfg.in_channels, **kw),
        "encoder_hidden_states": torch.randn(1, settings.max_sequence_length, cfg.joint_attention_dim, **kw),
        "pooled_projections": torch.randn(1, cfg.pooled_projection_dim, **kw),
        "timestep": torch.full((1,), 0.5, **kw),
        "guidance": torch.full((1,), settings.guidance_scale, **kw),
        "img_ids": torch.zeros(image_tokens, 3, **kw),
        "txt_ids": torch.zeros(settings.max_sequence_length, 3, **kw),
        "return_dict": False,
    }


def profile_recipe(recipe_name: str, out: Path, warmups: int = 2) -> dict:
    active = resolve_profile(None)
    cache = cache_dir()
    source = resolve_source(None, active.profile.model_size)
    settings = SETTINGS_BY_SIZE[source.size]
    pool = synthetic_pool(source.size, cache)
    built = build_pipeline(source, get_recipe(recipe_name), active, pool, settings, cache)
    inputs = transformer_inputs(built.pipe, settings)
    with torch.inference_mode():
        for _ in range(warmups):
            built.pipe.transformer(**inputs)
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            built.pipe.transformer(**inputs)
            torch.cuda.synchronize()
    kernels: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        if event.self_device_time_total > 0:
            kernels[event.key] += event.self_device_time_total / 1e3  # ms
    by_category: dict[str, float] = defaultdict(float)
    for kernel, ms in kernels.items():
        by_category[category(kernel)] += ms
    step_ms = sum(kernels.values())
    result = {
        "recipe": recipe_name,
        "device": active.device.name,
        "attention": built.attention.kernel,
        "step_gpu_ms": step_ms,
        "image_estimate_s": step_ms * settings.num_inference_steps / 1e3,
        "by_category_ms": dict(sorted(by_category.items(), key=lambda kv: -kv[1])),
        "kernels_ms": dict(sorted(kernels.items(), key=lambda kv: -kv[1])),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / f"profile-{recipe_name}.json").write_text(json.dumps(result, indent=1))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.profile_step", description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", action="append", required=True, help="recipe to profile (repeatable)")
    parser.add_argument("--out", type=Path, default=Path(".results/profiles"), help="folder for profile-*.json")
    args = parser.parse_args(argv)
    for name in args.recipe:
        result = profile_recipe(name, args.out)
        print(f"{name}: {result['step_gpu_ms']:.1f} ms of GPU kernels per step "
              f"(~{result['image_estimate_s']:.2f} s per {SETTINGS_BY_SIZE['full'].num_inference_steps}-step image)")
        for label, ms in result["by_category_ms"].items():
            print(f"  {label:<14} {ms:8.1f} ms  {ms / result['step_gpu_ms']:6.1%}")
        torch.compiler.reset()
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
