"""Where an image's time goes, against the floor: ``python -m perf.tools.profile_step --recipe optimized --out DIR``.

Builds the recipe exactly as the suite does (``build_pipeline``) and warms it up with one pipeline call (compile
happens there), capturing the transformer's inputs of one denoising step on the way. Then:

- times whole images, and the step alone (each call waited for), its VAE decode and text encoding, so that
  launch gaps and the parts outside the denoising loop show;
- profiles the step with ``torch.profiler`` and sorts its kernels into FP8 / bf16 matmuls, attention, FP8
  activation quantization and other fused kernels, with the TFLOP/s reached where the FLOPs are known;
- on a GPU, measures the matmul ceilings (8192^3 bf16 and FP8 rowwise ``_scaled_mm``) and sets the step's FLOPs
  (from the model config) against them: the floor an image cannot beat with these kernels.

With ``--recipe`` repeated, each recipe is built in turn and each adapter's image of a later one is compared
(PSNR, SSIM) with the same adapter's image of the first: the quality a speed-up costs against its sibling row
(``--recipe optimized_vae --recipe optimized_fast_cudagraphs --recipe optimized_fast_static_qk``: bf16 attention,
FP8 attention, static q/k scales).

Writes ``profile-<recipe>.json`` as each part finishes (a job cut off keeps what it measured). On a CPU (tiny
model) it runs too, without the floor: that is how CI checks it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from perf.build import compile_settings
from perf.build.builder import BuiltPipeline, attention_shape, build_pipeline
from perf.judge.record import IDENTITY_FIELDS, to_data
from perf.run.measure import gpu_sampled, synchronize, time_rounds, timed
from perf.run.quality import fidelity
from perf.run.recording import identity
from perf.spec.profiles import resolve_profile
from perf.spec.recipes import get_recipe
from perf.spec.run_spec import RunSpec, add_run_options, resolve_run

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
    return {name: 2 * n**3 / (median_ms(fn, repeats, "cuda") / 1e3) / 1e12 for name, fn in calls.items()}


def median_ms(fn: Callable[[], object], repeats: int, device_type: str) -> float:
    """Median wall time of ``fn`` (ms) over ``repeats`` calls after one warm-up, each call waited for."""
    fn()
    return statistics.median(time_rounds(fn, None, repeats, device_type)) * 1e3


def capture_inputs(module: torch.nn.Module, run: Callable[[], object]) -> tuple[tuple, dict]:
    """The positional and keyword arguments of ``module``'s first call during ``run()``: a step exactly as the
    pipeline feeds it, so profiling it recompiles nothing."""
    captured: list[tuple[tuple, dict]] = []

    def hook(_module, args, kwargs):
        if not captured:
            captured.append((args, dict(kwargs)))

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        run()
    finally:
        handle.remove()
    return captured[0]


def kernel_times(fn: Callable[[], object], device_type: str) -> dict[str, float]:
    """Time (ms) of each kernel that ``fn`` runs, summed over its launches: GPU kernels on a GPU, operators'
    own CPU time on a CPU."""
    cuda = device_type == "cuda"
    activity = torch.profiler.ProfilerActivity.CUDA if cuda else torch.profiler.ProfilerActivity.CPU
    with torch.profiler.profile(activities=[activity]) as prof:
        fn()
        synchronize(device_type)
    kernels: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        us = event.self_device_time_total if cuda else event.self_cpu_time_total
        if us > 0:
            kernels[event.key] += us / 1e3
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


@dataclasses.dataclass(frozen=True)
class AdapterImages:
    """What ``per_adapter_images`` measured of one recipe: each adapter's seconds, every image in the order served,
    and each adapter's first image (which a later recipe of the same run is compared with: same seed, prompt and
    adapter, so what differs is the recipe's numerics)."""

    seconds: dict[str, list[float]]
    served: list[dict]
    images: dict[str, np.ndarray]


def per_adapter_images(built: BuiltPipeline, rounds: int) -> AdapterImages:
    """Seconds of ``rounds`` images with each adapter of the pool hot-swapped in (the swap untimed), round-robin
    (each round swaps through the pool in order), the first adapter back in place afterwards; and every image in
    the order served, with the GPU's mean clock and power while it was made (``gpu_sampled``). Round-robin, an
    adapter's own cost shows as its rounds alike, and a drift in time (a clock falling as the GPU heats) as every
    adapter's later rounds slower. On the H200 (2026-11-30) it was the adapter: the merged row's images were 0.4%
    apart for one adapter and 10.5% between the pool's four, in the same order every round, at the GPU's power
    cap; the seconds times the mean clock (``clock_explains``) say whether the clock is why."""
    device_type, measured = built.device_type, AdapterImages({}, [], {})
    for _ in range(rounds):
        for adapter in built.spec.pool.adapters:
            # loaded as the suite loads them, outside inference mode: under it, diffusers' state_dict() of a
            # torchao-quantized transformer fails ("Cannot set version_counter for inference tensor", H200)
            with torch.inference_mode(False):
                built.load_adapter(adapter)
            synchronize(device_type)
            with gpu_sampled(device_type) as during:
                seconds, image = timed(built.generate, device_type)
            measured.seconds.setdefault(adapter.name, []).append(seconds)
            measured.images.setdefault(adapter.name, image)
            measured.served.append({"adapter": adapter.name, "seconds": seconds, **during})
    with torch.inference_mode(False):
        built.load_adapter(built.first)
    return measured


def clock_explains(served: list[dict]) -> dict[str, dict[str, float]]:
    """Per adapter, the median seconds of its images, the median of their mean SM clocks, and the median of
    seconds x clock (megacycles): where the adapters' seconds differ and their megacycles do not, the clock is why
    (at the power cap, what the GPU multiplies sets it); where the megacycles differ too, the adapter costs the
    kernels more at any clock. Empty where the clock was not sampled. The best row on the H200 (2026-12-01): seconds
    9.9% apart between the pool's adapters, megacycles 1.2%."""
    if not served or any("sm_clock_mhz_mean" not in image for image in served):
        return {}
    by_adapter: dict[str, list[dict]] = {}
    for image in served:
        by_adapter.setdefault(image["adapter"], []).append(image)
    return {adapter: {"seconds": statistics.median(i["seconds"] for i in images),
                      "sm_clock_mhz": statistics.median(i["sm_clock_mhz_mean"] for i in images),
                      "megacycles": statistics.median(i["seconds"] * i["sm_clock_mhz_mean"] for i in images),
                      "power_capped_share": statistics.median(i["power_capped_share"] for i in images)}
            for adapter, images in by_adapter.items()}


def fidelity_against(images: dict[str, np.ndarray], reference: tuple[str, dict[str, np.ndarray]]) -> dict:
    """PSNR (dB) and SSIM of each adapter's image against the same adapter's image of the reference recipe (the
    first one profiled in this run): the quality a speed-up costs against its sibling, e.g. FP8 attention against
    bf16 attention, or static q/k scales against dynamic ones (issue 25)."""
    name, theirs = reference
    per_adapter = {adapter: dataclasses.asdict(fidelity(image, theirs[adapter]))
                   for adapter, image in images.items() if adapter in theirs}
    return {"against": name, "per_adapter": per_adapter,
            "worst_psnr": min((f["psnr"] for f in per_adapter.values()), default=None),
            "worst_ssim": min((f["ssim"] for f in per_adapter.values()), default=None)}


def profile_recipe(recipe_name: str, out: Path, spec: RunSpec, rounds: int = 3,
                   reference: tuple[str, dict[str, np.ndarray]] | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """Build ``recipe_name`` for ``spec`` as the suite does, warm it up through the pipeline, and measure where its
    time goes; with ``reference`` (a recipe's name and its adapters' images), how far its images are from those.
    Returns the figures written and each adapter's image (none for a recipe without hot-swap)."""
    device_type, settings = spec.device_type, spec.settings
    started = time.perf_counter()
    recipe = get_recipe(recipe_name)
    built = build_pipeline(spec, recipe)
    pipe, cfg = built.pipe, built.pipe.transformer.config
    _, tokens, _, _ = attention_shape(pipe, settings)
    flops = step_flops(
        cfg.num_layers + cfg.num_single_layers, cfg.num_attention_heads * cfg.attention_head_dim,
        tokens - settings.max_sequence_length, settings.max_sequence_length,
    )
    path = out / f"profile-{recipe_name}.json"
    out.mkdir(parents=True, exist_ok=True)
    identified = to_data(identity(recipe, spec))
    result: dict = {
        **{name: identified[name] for name in IDENTITY_FIELDS},  # device, versions, commit, command, as every record
        "attention": {"kernel": built.attention.kernel, "timings_ms": built.attention.timings_ms,
                      "rel_errors": built.attention.rel_errors},
        "facts": built.facts,
        "step_flops": flops,
    }

    def save() -> None:
        path.write_text(json.dumps(result, indent=1))

    with torch.inference_mode():
        # The warm-up is a pipeline call, as in the suite (compile happens here); it also hands over one step's
        # real inputs, so the step profiled below is the step the pipeline runs.
        args, kwargs = capture_inputs(pipe.transformer, built.generate)
        result["build_and_warmup_s"] = time.perf_counter() - started
        result["image"] = {"wall_s": time_rounds(built.generate, None, rounds, device_type)}
        images = {}
        if recipe.hotswap:
            measured = per_adapter_images(built, rounds)
            images = measured.images
            result["image"] |= {"per_adapter_s": measured.seconds, "served": measured.served,
                                "clock": clock_explains(measured.served)}
            if reference is not None:
                result["image"]["fidelity"] = fidelity_against(images, reference)
        save()

        def step() -> object:
            return pipe.transformer(*args, **kwargs)

        kernels = kernel_times(step, device_type)
        result["step"] = {
            "gpu_kernel_ms": sum(kernels.values()),
            "wall_ms": median_ms(step, 5, device_type),
            "by_category": breakdown(kernels, flops),
            "top_kernels_ms": dict(list(kernels.items())[:40]),
        }
        latents = torch.randn(1, pipe.vae.config.latent_channels, settings.height // pipe.vae_scale_factor,
                              settings.width // pipe.vae_scale_factor, device=device_type, dtype=pipe.vae.dtype)
        prompt = built.current.prompt
        result["image"] |= {
            "steps_wall_s": result["step"]["wall_ms"] * settings.num_inference_steps / 1e3,
            "vae_decode_ms": median_ms(lambda: pipe.vae.decode(latents, return_dict=False), 3, device_type),
            "text_encode_ms": median_ms(lambda: pipe.encode_prompt(
                prompt=prompt, prompt_2=None, max_sequence_length=settings.max_sequence_length), 3, device_type),
        }
        save()
        if device_type == "cuda":
            ceilings = matmul_ceilings()
            attention_ms = result["step"]["by_category"].get("attention", {}).get("ms", 0.0)
            step_floor_ms = flops["linear"] / (ceilings["fp8_rowwise"] * 1e12) * 1e3 + attention_ms
            result["floor"] = {
                "matmul_ceilings_tflops": ceilings,
                "step_floor_ms": step_floor_ms,
                "image_floor_s": step_floor_ms * settings.num_inference_steps / 1e3,
                "meaning": "FP8 linears at this GPU's 8192^3 FP8 rowwise ceiling + attention as long as its kernel "
                           "took in this step; nothing else (quantization, norms, LoRA, VAE, text encoders)",
            }
            save()
    return result, images


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.tools.profile_step", description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", action="append", required=True,
                        help="recipe to build and profile on this device (repeatable; each is built in turn)")
    parser.add_argument("--out", type=Path, default=Path(".results/profiles"),
                        help="folder for profile-<recipe>.json (default: .results/profiles)")
    add_run_options(parser.add_argument)
    args = parser.parse_args(argv)
    spec = resolve_run(resolve_profile(None), args.model, args.lora, args.max_rank, args.perf_cache)
    reference = None  # the first recipe with adapter images: each later one's images are compared with its
    for name in args.recipe:
        settings_before = compile_settings.snapshot()
        result, images = profile_recipe(name, args.out, spec, reference=reference)
        reference = reference or ((name, images) if images else None)
        step, floor = result["step"], result.get("floor", {})
        print(f"{name}: {step['gpu_kernel_ms']:.1f} ms of kernels per step, {step['wall_ms']:.1f} ms wall; image "
              f"{statistics.median(result['image']['wall_s']):.3f} s, floor {floor.get('image_floor_s', 0):.2f} s")
        per_adapter = {name: statistics.median(seconds) for name, seconds in
                       result["image"].get("per_adapter_s", {}).items()}
        if per_adapter:
            spread = max(per_adapter.values()) / min(per_adapter.values()) - 1
            print("  images per adapter (median s): " + ", ".join(f"{n} {v:.3f}" for n, v in per_adapter.items())
                  + f"; {spread:.1%} apart")
        clock = result["image"].get("clock")
        if clock:
            cycles = [row["megacycles"] for row in clock.values()]
            print("  mean SM clock while each adapter's images ran (median MHz): " + ", ".join(
                f"{n} {row['sm_clock_mhz']:.0f} ({row['power_capped_share']:.0%} power-capped)"
                for n, row in clock.items()) + f"; seconds x clock {max(cycles) / min(cycles) - 1:.1%} apart")
        compared = result["image"].get("fidelity")
        if compared:
            print(f"  against {compared['against']}'s images: PSNR {compared['worst_psnr']:.1f} dB, SSIM "
                  f"{compared['worst_ssim']:.4f} at worst over the adapters")
        for label, row in step["by_category"].items():
            rate = f"  {row['tflops']:.0f} TFLOP/s" if "tflops" in row else ""
            print(f"  {label:<32} {row['ms']:8.1f} ms  {row['share']:6.1%}{rate}")
        torch.compiler.reset()
        compile_settings.restore(settings_before)  # the next recipe compiles under its own settings
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
