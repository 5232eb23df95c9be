"""Where an image's time goes, against the floor: ``python -m perf.profile_step --recipe optimized --out DIR``.

Builds the recipe exactly as the suite does (``build_pipeline``), warms the transformer up on inputs of the
settings' shapes (compile happens there), then:

- profiles one transformer forward (one denoising step) with ``torch.profiler`` and sorts its GPU kernels into
  FP8 / bf16 matmuls, attention, FP8 activation quantization, other fused kernels;
- times the same step without the profiler (wall, CUDA events), a whole image, its VAE decode and text
  encoding, so that launch gaps and the parts outside the denoising loop show;
- measures this GPU's matmul ceilings (8192^3 bf16 and FP8 rowwise ``_scaled_mm``) and sets the step's FLOPs
  (from the model config) against them: the floor an image cannot beat with these kernels.

Writes ``profile-<recipe>.json`` as each part finishes (a job cut off keeps what it measured). Needs a GPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from perf.builder import attention_shape, build_pipeline
from perf.cache import cache_dir
from perf.loras import synthetic_pool
from perf.models import resolve_source
from perf.profiles import resolve_profile
from perf.recipes import get_recipe
from perf.settings import SETTINGS_BY_SIZE

CATEGORIES = (  # first match wins; names are CUDA kernel names, lower-cased
    # Inductor names a fused kernel after the ops it absorbed: "..._scaled_mm__to_copy_amax_clamp..." is the FP8
    # activation quantization (row amax, scale, cast), possibly fused with the norm or GELU before it.
    ("fp8 activation quantization", ("triton_red_fused__scaled_mm", "triton_poi_fused__scaled_mm", "amax")),
    ("fused norm/rope/elementwise", ("triton",)),
    ("attention", ("flash", "fmha", "attention", "sdpa", "cutlass_fwd")),
    # cuBLASLt's FP8 kernels: "nvjet_sm90_qqtst_..._ovscale" (qq: fp8 operands, ovscale: per-row scales)
    ("matmul fp8", ("scaled_mm", "e4m3", "f8f8", "fp8", "qqtst", "ovscale")),
    ("matmul bf16 (LoRA, embeddings)", ("gemm", "nvjet", "cutlass", "xmma", "cublas", "sm90_")),
)
MLP_RATIO = 4  # FLUX blocks: MLP hidden = 4 x model width


def category(kernel: str) -> str:
    name = kernel.lower()
    return next((label for label, keys in CATEGORIES if any(k in name for k in keys)), "other")


def step_flops(num_blocks: int, width: int, image_tokens: int, text_tokens: int) -> dict[str, float]:
    """FLOPs of one transformer forward of a FLUX model (batch 1), as two groups.

    Every block, double-stream (q, k, v, out + MLP per stream) or single-stream (q, k, v + MLP in, one fused
    projection out), multiplies each of its ``tokens`` by 12 width^2 weights: 3 (qkv) + 1 (out) + 2 x 4 (MLP).
    Joint attention costs QK^T + PV = 4 tokens^2 width per block. Embedders and AdaLN (one token) are left out.
    """
    tokens = image_tokens + text_tokens
    macs_per_token = (3 + 1 + 2 * MLP_RATIO) * width**2
    return {
        "linear": 2.0 * macs_per_token * tokens * num_blocks,
        "attention": 4.0 * tokens**2 * width * num_blocks,
    }


def matmul_ceilings(n: int = 8192, repeats: int = 20) -> dict[str, float]:
    """TFLOP/s of an n^3 matmul on this GPU, bf16 and FP8 e4m3 with rowwise scales (what torchao's FP8 calls)."""
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    a8, b8 = a.to(torch.float8_e4m3fn), b.to(torch.float8_e4m3fn).t().contiguous().t()
    ones_a, ones_b = torch.ones(n, 1, device="cuda"), torch.ones(1, n, device="cuda")
    calls = {
        "bf16": lambda: a @ b,
        "fp8_rowwise": lambda: torch._scaled_mm(a8, b8, scale_a=ones_a, scale_b=ones_b, out_dtype=torch.bfloat16),
    }
    return {name: 2 * n**3 / (_gpu_ms(fn, repeats) / 1e3) / 1e12 for name, fn in calls.items()}


def _gpu_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median of ``repeats`` CUDA-event timings of ``fn`` after one warm-up call."""
    fn()
    samples = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        samples.append(start.elapsed_time(end))
    return statistics.median(samples)


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


def kernel_times(fn: Callable[[], object]) -> dict[str, float]:
    """GPU time (ms) of each kernel that ``fn`` launches, summed over its launches."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    kernels: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        if event.self_device_time_total > 0:
            kernels[event.key] += event.self_device_time_total / 1e3
    return dict(sorted(kernels.items(), key=lambda kv: -kv[1]))


def breakdown(kernels: dict[str, float], flops: dict[str, float]) -> dict[str, dict[str, float]]:
    """Per category: ms, share of the step, and achieved TFLOP/s where the category's FLOPs are known."""
    by_category: dict[str, float] = defaultdict(float)
    for kernel, ms in kernels.items():
        by_category[category(kernel)] += ms
    total = sum(by_category.values())
    known = {"matmul fp8": flops["linear"], "attention": flops["attention"]}
    result = {}
    for label, ms in sorted(by_category.items(), key=lambda kv: -kv[1]):
        row = {"ms": ms, "share": ms / total}
        if label in known and ms > 0:
            row["tflops"] = known[label] / (ms / 1e3) / 1e12
        result[label] = row
    return result


def profile_recipe(recipe_name: str, out: Path, warmups: int = 2) -> dict:
    active = resolve_profile(None)
    cache = cache_dir()
    source = resolve_source(None, active.profile.model_size)
    settings = SETTINGS_BY_SIZE[source.size]
    pool = synthetic_pool(source.size, cache)
    started = time.perf_counter()
    built = build_pipeline(source, get_recipe(recipe_name), active, pool, settings, cache)
    pipe, cfg = built.pipe, built.pipe.transformer.config
    inputs = transformer_inputs(pipe, settings)
    image_tokens = inputs["hidden_states"].shape[1]
    flops = step_flops(
        cfg.num_layers + cfg.num_single_layers, cfg.num_attention_heads * cfg.attention_head_dim,
        image_tokens, settings.max_sequence_length,
    )
    path = out / f"profile-{recipe_name}.json"
    out.mkdir(parents=True, exist_ok=True)
    result: dict = {
        "recipe": recipe_name,
        "device": active.device.name,
        "model_source": source.label,
        "settings": settings.to_dict(),
        "versions": {"torch": torch.__version__},
        "attention": {"kernel": built.attention.kernel, "timings_ms": built.attention.timings_ms,
                      "rel_errors": built.attention.rel_errors},
        "facts": built.facts,
        "step_flops": flops,
    }

    def save() -> None:
        path.write_text(json.dumps(result, indent=1))

    with torch.inference_mode():
        for _ in range(warmups):
            pipe.transformer(**inputs)
        torch.cuda.synchronize()
        result["build_and_warmup_s"] = time.perf_counter() - started
        kernels = kernel_times(lambda: pipe.transformer(**inputs))
        result["step"] = {
            "gpu_kernel_ms": sum(kernels.values()),
            "wall_ms": _gpu_ms(lambda: pipe.transformer(**inputs), repeats=5),
            "by_category": breakdown(kernels, flops),
            "top_kernels_ms": dict(list(kernels.items())[:40]),
        }
        save()
        ceilings = matmul_ceilings()
        attention_ms = result["step"]["by_category"].get("attention", {}).get("ms", 0.0)
        step_floor_ms = flops["linear"] / (ceilings["fp8_rowwise"] * 1e12) * 1e3 + attention_ms
        result["floor"] = {
            "matmul_ceilings_tflops": ceilings,
            "step_floor_ms": step_floor_ms,
            "image_floor_s": step_floor_ms * settings.num_inference_steps / 1e3,
            "meaning": "FP8 linears at this GPU's 8192^3 FP8 rowwise ceiling + attention as long as its kernel took "
                       "in this step; nothing else (quantization, norms, LoRA, VAE, text encoders)",
        }
        save()
        latents = torch.randn(1, pipe.vae.config.latent_channels, settings.height // pipe.vae_scale_factor,
                              settings.width // pipe.vae_scale_factor, device="cuda", dtype=pipe.vae.dtype)
        prompt = built.current.prompt
        images = []
        for _ in range(3):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            built.generate()
            images.append(time.perf_counter() - t0)
        result["image"] = {
            "wall_s": images,
            "denoise_estimate_s": result["step"]["wall_ms"] * settings.num_inference_steps / 1e3,
            "vae_decode_ms": _gpu_ms(lambda: pipe.vae.decode(latents, return_dict=False), repeats=3),
            "text_encode_ms": _gpu_ms(lambda: pipe.encode_prompt(
                prompt=prompt, prompt_2=None, max_sequence_length=settings.max_sequence_length), repeats=3),
        }
        save()
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.profile_step", description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", action="append", required=True,
                        help="recipe to build and profile on this GPU (repeatable; each is built in turn)")
    parser.add_argument("--out", type=Path, default=Path(".results/profiles"),
                        help="folder for profile-<recipe>.json (default: .results/profiles)")
    args = parser.parse_args(argv)
    for name in args.recipe:
        result = profile_recipe(name, args.out)
        step, floor = result["step"], result["floor"]
        print(f"{name}: {step['gpu_kernel_ms']:.1f} ms of GPU kernels per step, {step['wall_ms']:.1f} ms wall; "
              f"image {statistics.median(result['image']['wall_s']):.3f} s, floor {floor['image_floor_s']:.2f} s")
        for label, row in step["by_category"].items():
            rate = f"  {row['tflops']:.0f} TFLOP/s" if "tflops" in row else ""
            print(f"  {label:<32} {row['ms']:8.1f} ms  {row['share']:6.1%}{rate}")
        torch.compiler.reset()
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
