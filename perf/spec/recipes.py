"""Recipes as data: one entry per row of the seed's tables (huggingface/lora-fast), plus our own rows.

Adding a recipe = adding one ``Recipe`` to ``RECIPES``; every perf test picks it up for its profiles.
``seed_flags`` are the seed's ``run_benchmark.py`` flags for the row, so the table stays reproducible.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from perf.errors import SuiteError

if TYPE_CHECKING:  # torch is imported by the capability checks only: a record names its Recipe without torch
    import torch

    from perf.spec.profiles import ActiveProfile

Attention = Literal["fa3", "fa3_fp8", "fa4", "sdpa"]
QkScales = Literal["dynamic", "static"]  # how FA3 FP8 scales q and k (fa3_fp8 only)
CompileScope = Literal["none", "full", "regional"]

H100_PROFILES = ("cpu", "h100", "h200")
CUDAGRAPH_MODES = ("reduce-overhead", "max-autotune")  # torch.compile modes that run compiled graphs as CUDA graphs


@dataclass(frozen=True)
class Recipe:
    """How a pipeline is optimized. ``attention="fa3"`` means FlashAttention-3 when installed (and correct),
    otherwise the fastest FlashAttention-class kernel found on the device (the record names the kernel that ran);
    ``attention="fa4"`` means FlashAttention-4's CuTe package (``flash-attn-4``) and nothing else;
    ``attention="fa3_fp8"`` means FlashAttention-3's FP8 kernel with dynamic per-head scales and nothing else;
    with ``fp8_attention_qk="static"`` q and k are cast at one fixed scale instead, the largest value FLUX's q/k
    RMSNorm and rope can produce (``perf.build.attention.qk_bound``), and v keeps its per-head scales.
    ``compile_vae`` compiles the VAE decoder (channels-last, full graph), as flux-fast does."""

    name: str
    profiles: tuple[str, ...]
    attention: Attention = "sdpa"
    fp8: bool = False
    compile: CompileScope = "none"
    compile_mode: str | None = None  # torch.compile mode; None = default, as the seed ran it
    # torchao's quantize_(set_inductor_config=True), as the seed ran it, also turns on Inductor's coordinate-descent
    # tuning for the process (perf.build.compile_settings); False keeps Inductor at its defaults
    torchao_inductor_config: bool = True
    hotswap: bool = True
    compile_vae: bool = False
    fp8_attention_qk: QkScales = "dynamic"
    offload: bool = False
    t5_nf4: bool = False
    # the hot-swapped adapter merged into the weights on every swap, peft's LoRA path off in the forward
    # (perf.build.merge): no LoRA matmuls, one adapter at its merged strength
    merge_lora: bool = False
    # Inductor options of the recipe's own, by dotted name, set after torchao's and kept to the recipe
    # (perf.build.compile_settings): ("triton.multi_kernel", 1) lets Inductor benchmark a persistent (one-pass)
    # reduction against the looped one for rows longer than 1024, such as the FP8 amax over a GELU output's 15360
    inductor: tuple[tuple[str, bool | int], ...] = ()
    # the FP8 linears whose input is a GELU output (double blocks' feed-forward outputs, single blocks' proj_out)
    # quantized in the pass that computes the GELU (perf.build.fused_fp8); needs FP8 weights and the adapter merged
    # (the LoRA path would need the bf16 input)
    fused_fp8_gelu: bool = False
    seed_flags: str = ""
    seed_row: str | None = None  # the row name in the seed's table; None for rows beyond the seed
    seed_seconds: float | None = None  # the seed's published s/image for the row (its GPU, its weights)
    opt_in: bool = False  # runs only when named in --recipes (e.g. a compile known to take very long)
    memory_control: bool = False  # negative control: must NOT fit the profile's memory budget
    note: str = ""

    def __post_init__(self) -> None:
        if self.fp8_attention_qk != "dynamic" and self.attention != "fa3_fp8":
            raise ValueError(f"{self.name}: fp8_attention_qk={self.fp8_attention_qk!r} needs attention='fa3_fp8'")
        if self.merge_lora and not self.hotswap:
            raise ValueError(f"{self.name}: merge_lora merges the hot-swap slot: it needs hotswap=True")
        if self.fused_fp8_gelu and not (self.fp8 and self.merge_lora):
            raise ValueError(f"{self.name}: fused_fp8_gelu needs fp8=True and merge_lora=True")
        if self.inductor and not self.compiled:
            raise ValueError(f"{self.name}: inductor options need a compiled recipe")

    @property
    def compiled(self) -> bool:
        return self.compile != "none"

    @property
    def cudagraphs(self) -> bool:
        """Compiled graphs are recorded once as CUDA graphs and replayed: one launch instead of hundreds."""
        return self.compiled and self.compile_mode in CUDAGRAPH_MODES

    @property
    def serves_hotswap(self) -> bool:
        """Compiled with hot-swap: the serving recipe, where a swap that recompiles costs minutes."""
        return self.compiled and self.hotswap

    @property
    def expects_recompiles(self) -> bool:
        """Compiled without hot-swap: every new adapter changes the graph (the seed's negative control)."""
        return self.compiled and not self.hotswap

    def uncompiled(self) -> Recipe:
        """The same pipeline run eagerly: every compile setting off, the recipe's Inductor options with them."""
        return dataclasses.replace(self, compile="none", compile_mode=None, compile_vae=False, inductor=())

    def eager_reference(self) -> Recipe:
        """The same numerics without compile or hot-swap preparation: a fresh pipeline to check a swap against,
        its adapter through peft's LoRA layers (so the GELU outputs quantized by torchao, not fused: the same e4m3
        bytes but for 2.6e-4 of them on the H200)."""
        return dataclasses.replace(self.uncompiled(), name=f"{self.name}:reference", hotswap=False, merge_lora=False,
                                   fused_fp8_gelu=False)


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        # --- the seed's H100 table -------------------------------------------------------------------------
        Recipe(
            "baseline", H100_PROFILES, hotswap=False,
            seed_flags="--disable_fa3 --disable_fp8 --disable_compile --disable_hotswap",
            seed_row="baseline", seed_seconds=7.891, note="bf16, SDPA, eager; adapters unloaded and loaded anew",
        ),
        Recipe(
            "optimized", H100_PROFILES, attention="fa3", fp8=True, compile="regional",
            seed_flags="(none)", seed_row="optimized", seed_seconds=3.546,
            note="FA3 + FP8 + compile + hot-swap. Regional: the full-graph FP8 compile did not finish in 9.5 min "
            "on torch 2.11 under the coordinate-descent tuning torchao turns on; see optimized_fullgraph_defaults",
        ),
        Recipe(
            "no_fp8", H100_PROFILES, attention="fa3", compile="full",
            seed_flags="--disable_fp8", seed_row="no_fp8", seed_seconds=4.352, note="FA3 + compile + hot-swap, bf16",
        ),
        Recipe(
            "no_fa3", H100_PROFILES, fp8=True, compile="regional",
            seed_flags="--disable_fa3", seed_row="no_fa3", seed_seconds=4.302,
            note="FP8 + compile + hot-swap, plain SDPA; regional for the same reason as optimized",
        ),
        Recipe(
            "baseline_compile", H100_PROFILES, compile="full", hotswap=False,
            seed_flags="--disable_fa3 --disable_fp8 --disable_hotswap --disable_recompile_error",
            seed_row="baseline_compile", seed_seconds=5.092,
            note="negative control: compile without hot-swap recompiles on every new adapter",
        ),
        Recipe(
            "no_fa3_fp8", H100_PROFILES, compile="full",
            seed_flags="--disable_fa3 --disable_fp8", seed_row="no_fa3_fp8", seed_seconds=5.085,
            note="compile + hot-swap, bf16, SDPA",
        ),
        Recipe(
            "no_compile_fp8", H100_PROFILES, attention="fa3",
            seed_flags="--disable_compile --disable_fp8", seed_row="no_compile_fp8", seed_seconds=7.519,
            note="FA3 + hot-swap, eager",
        ),
        Recipe(
            "no_compile", H100_PROFILES, attention="fa3", fp8=True,
            seed_flags="--disable_compile", seed_row="no_compile", seed_seconds=10.434,
            note="FA3 + FP8 + hot-swap, eager",
        ),
        # --- beyond the seed ---------------------------------------------------------------------------------
        Recipe(
            "hotswap_eager", ("cpu",),
            note="hot-swap without compile, SDPA, full precision: the eager hot-swap path on any device",
        ),
        Recipe(
            "t5_nf4", ("cpu",), t5_nf4=True,
            note="T5 quantized to NF4 at load (bitsandbytes), hot-swap, eager: the consumer recipe's T5 path on "
            "any device bitsandbytes supports",
        ),
        Recipe(
            "optimized_fa4", ("h100", "h200"), attention="fa4", fp8=True, compile="regional",
            note="optimized with FlashAttention-4 (flash_attn.cute, SM90 CuTe kernels) forced: FA3 has no wheel "
            "for this torch; checked against a float32 reference before it is timed",
        ),
        Recipe(
            "optimized_fullgraph", ("h100", "h200"), attention="fa3", fp8=True, compile="full",
            seed_flags="(none)", opt_in=True,
            note="the seed's optimized row exactly: FP8 with full-graph compile under torchao's Inductor settings "
            "(coordinate-descent tuning: no image after 9.5 min on an H100; needs its own compile budget)",
        ),
        Recipe(
            "optimized_fullgraph_defaults", ("h100", "h200"), attention="fa3", fp8=True, compile="full",
            torchao_inductor_config=False,
            note="optimized_fullgraph with Inductor at its defaults: torchao's quantize_(set_inductor_config="
            "False) leaves coordinate-descent tuning off, the cause of the full-graph FP8 compile that did not "
            "finish (measured on an H100: first image after 157 s)",
        ),
        Recipe(
            "optimized_cudagraphs", ("h100", "h200"), attention="fa3", fp8=True, compile="full",
            torchao_inductor_config=False, compile_mode="reduce-overhead",
            note="optimized_fullgraph_defaults with CUDA graphs (compile mode reduce-overhead): the transformer is "
            "replayed as one graph per step; hot-swap copies into the captured weight tensors, so the graph stays "
            "valid. Full graph: CUDA-graph trees over regional blocks fail (a block's input is an overwritten "
            "output of the previous graph)",
        ),
        Recipe(
            "optimized_fa3_fp8attn", ("h100", "h200"), attention="fa3_fp8", fp8=True, compile="full",
            torchao_inductor_config=False,
            note="optimized_fullgraph_defaults with FP8 attention: FlashAttention-3's e4m3 kernel, q/k/v scaled per "
            "(batch, head) from their amax at every call (quantization fused by Inductor into the producers)",
        ),
        Recipe(
            "optimized_vae", ("h100", "h200"), attention="fa3", fp8=True, compile="full",
            torchao_inductor_config=False, compile_vae=True,
            note="optimized_fullgraph_defaults with the VAE decoder compiled (channels-last, full graph), as "
            "flux-fast does",
        ),
        Recipe(
            "optimized_fast", ("h100", "h200"), attention="fa3_fp8", fp8=True, compile="full",
            torchao_inductor_config=False, compile_vae=True,
            note="optimized_fullgraph_defaults with FP8 attention and the compiled VAE: the candidate best row",
        ),
        Recipe(
            "optimized_fast_cudagraphs", ("h100", "h200"), attention="fa3_fp8", fp8=True, compile="full",
            torchao_inductor_config=False, compile_vae=True, compile_mode="reduce-overhead",
            note="optimized_fast replayed as CUDA graphs (compile mode reduce-overhead): the FA3 op's Python launch "
            "path and the step's host work leave the GPU idle between kernels; hot-swap copies into the captured "
            "weights",
        ),
        Recipe(
            "optimized_fast_static_qk", ("h100", "h200"), attention="fa3_fp8", fp8_attention_qk="static", fp8=True,
            compile="full", torchao_inductor_config=False, compile_vae=True, compile_mode="reduce-overhead",
            opt_in=True,
            note="optimized_fast_cudagraphs with q and k cast to e4m3 at one static scale, the bound their RMSNorm "
            "and rope guarantee (issue 25 lead 2): a pointwise cast Inductor can fuse into the rope kernel, no amax "
            "pass over q and k; v keeps its per-head amax. Opt-in until measured on a GPU",
        ),
        Recipe(
            "optimized_fast_merged", ("h100", "h200"), attention="fa3_fp8", fp8=True, compile="full",
            torchao_inductor_config=False, compile_vae=True, compile_mode="reduce-overhead", merge_lora=True,
            opt_in=True,
            note="optimized_fast_cudagraphs with the adapter merged into the FP8 weights on every swap (issue 25): "
            "no LoRA matmuls in the step; the weights as loaded kept to merge onto (24 GB); serves one adapter at "
            "its merged strength. Opt-in: another serving mode (22 GB more, scale/two/named not served)",
        ),
        Recipe(
            "optimized_fast_merged_multi_kernel", ("h100", "h200"), attention="fa3_fp8", fp8=True, compile="full",
            torchao_inductor_config=False, compile_vae=True, compile_mode="reduce-overhead", merge_lora=True,
            inductor=(("triton.multi_kernel", 1),), opt_in=True,
            note="optimized_fast_merged with Inductor's multi-kernel reductions (issue 25): the FP8 activation "
            "amax over rows of 3072-15360 runs as a looped reduction and a second pass that recomputes and casts "
            "(8.8 ms a step for the single blocks' GELU output alone, at 24% and 40% of the H200's bandwidth); "
            "multi_kernel benchmarks a one-pass persistent kernel against it. Opt-in: on the H200 it made the amax "
            "persistent (4.66 -> 3.98 ms a step) but kept the second pass (82.2 against 83.3 ms of kernels, images "
            "2.525 against 2.544 s)",
        ),
        Recipe(
            "optimized_fast_merged_fused", ("h100", "h200"), attention="fa3_fp8", fp8=True, compile="full",
            torchao_inductor_config=False, compile_vae=True, compile_mode="reduce-overhead", merge_lora=True,
            fused_fp8_gelu=True, opt_in=True,
            note="optimized_fast_merged with each GELU output's FP8 quantization in the Triton pass that computes "
            "the GELU (the single blocks' proj_out input with its concat, the double blocks' feed-forward outputs; "
            "perf.build.fused_fp8) where Inductor runs one or two looped kernels (11.7 ms of an 83 ms step on the "
            "H200). On the H200 (2026-12-01): a single block 1.329 against 1.525 ms of kernels, a double block 1.515 "
            "against 1.642, the same error against bf16; every check passed. Opt-in: another serving mode, as "
            "optimized_fast_merged",
        ),
        Recipe(
            "optimized_fast_merged_fused_static_qk", ("h100", "h200"), attention="fa3_fp8",
            fp8_attention_qk="static", fp8=True, compile="full", torchao_inductor_config=False, compile_vae=True,
            compile_mode="reduce-overhead", merge_lora=True, fused_fp8_gelu=True, opt_in=True,
            note="optimized_fast_merged_fused with optimized_fast_static_qk's q and k scales: the fastest hot-swap "
            "row (issue 25). On the H200 (2026-12-01): 2.367-2.391 s against baseline's 5.70-5.79 s on three machines "
            "(2.41-2.42x), churn and cold start passing, 72-73 ms of kernels a step; its images against the same "
            "row's with dynamic q/k scales at PSNR 42.1 dB or more. Opt-in: another serving mode, as "
            "optimized_fast_merged",
        ),
        # --- the seed's RTX 4090 recipes (run_exps_rtx_4090.sh) ------------------------------------------------
        Recipe(
            "rtx4090_offload", ("rtx4090",), hotswap=False, offload=True,
            seed_flags="--disable_fa3 --disable_fp8 --disable_compile --disable_hotswap --offload",
            seed_row="offload", seed_seconds=35.403, note="bf16 with model CPU offload (~22 GB)",
        ),
        Recipe(
            "rtx4090_offload_regional", ("rtx4090",), compile="regional", hotswap=False, offload=True,
            seed_flags="--disable_fa3 --disable_fp8 --disable_hotswap --disable_recompile_error --offload",
            seed_row="offload + compile_repeated_blocks", seed_seconds=31.205, note="offload + regional compile",
        ),
        Recipe(
            "rtx4090_fp8_t5nf4", ("rtx4090",), fp8=True, t5_nf4=True,
            seed_flags="--disable_fa3 --disable_compile --quantize_t5",
            seed_row="baseline (fp8, T5 NF4, no compile)", seed_seconds=23.606,
            note="FP8 transformer + NF4 T5, no offload: fits 24 GB without offload",
        ),
        Recipe(
            "rtx4090_optimized", ("rtx4090",), fp8=True, t5_nf4=True, compile="regional",
            seed_flags="--disable_fa3 --quantize_t5", seed_row="optimized (2.04x)",
            note="FP8 + NF4 T5 + compile + hot-swap, no offload",
        ),
        Recipe(
            "rtx4090_bf16", ("rtx4090",), hotswap=False, memory_control=True,
            note="memory negative control: plain bf16 without offload must exceed the 24 GB budget",
        ),
    )
}


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise SuiteError(f"unknown recipe {name!r}; known recipes: {', '.join(RECIPES)}") from None


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@functools.cache
def nf4_problem(device_type: str, size: str, dtype: torch.dtype) -> str | None:
    """Why bitsandbytes cannot run the NF4 T5 of the ``size`` synthetic model on this device type, or None.

    Probes what a build does, not a stand-in: one ``Linear4bit`` of each of the T5's Linear shapes, quantized
    the way ``from_pretrained`` places it and called once in eval mode. On a CPU with AVX512-BF16 that call
    repacks the weight for bitsandbytes' CPU kernel, which refuses some shapes; quantizing alone never got there.
    """
    import torch
    from transformers import T5Config, T5EncoderModel

    from perf.spec.models import CONFIGS

    probing = "bitsandbytes"
    try:
        import bitsandbytes as bnb

        with torch.device("meta"):  # the shapes only: no memory, no init
            t5 = T5EncoderModel(T5Config(**CONFIGS[size]["t5"]))
        shapes = sorted({(m.in_features, m.out_features) for m in t5.modules() if isinstance(m, torch.nn.Linear)})
        with torch.no_grad():
            for in_features, out_features in shapes:
                probing = f"Linear4bit({in_features}, {out_features})"
                layer = bnb.nn.Linear4bit(in_features, out_features, quant_type="nf4", compute_dtype=dtype,
                                          device=device_type)
                layer.to(device_type).eval()(torch.randn(1, 2, in_features, device=device_type, dtype=dtype))
    except Exception as exc:  # bitsandbytes raises its own error types (and asserts) on shapes and devices
        message = str(exc).splitlines()[0] if str(exc) else ""
        return f"{probing}: {type(exc).__name__}: {message}"
    return None


def unsupported_reason(recipe: Recipe, active: ActiveProfile) -> str | None:
    """Why ``recipe`` cannot run as named on this device, or None. Never run something else under its name."""
    from perf.build import attention  # the module, not its functions: tests stand in for what is installed

    profile, device = active.profile, active.device
    where = active.describe()
    cc = device.capability or (0, 0)
    if recipe.fp8:
        if not profile.fp8 or cc < (8, 9):
            return f"FP8 needs a CUDA GPU of compute capability >= 8.9; {where} has none"
        if not _installed("torchao"):
            return "FP8 needs torchao (pip install '.[gpu]')"
    if recipe.attention in ("fa3", "fa3_fp8", "fa4") and (not profile.fa3 or cc < (9, 0)):
        return f"FA3-class attention needs a Hopper GPU (compute capability 9.0); {where} has none"
    if recipe.attention == "fa3_fp8" and not attention.fa3_installed():
        return "FP8 attention needs FlashAttention-3, which is not installed (pip install '.[fa3]')"
    if recipe.attention == "fa4" and not attention.fa4_installed():
        return "FlashAttention-4 is not installed (pip install flash-attn-4 nvidia-cutlass-dsl[cu13])"
    if recipe.offload and device.type != "cuda":
        return f"CPU offload needs a GPU to offload from; {where}"
    if recipe.t5_nf4:
        if not _installed("bitsandbytes"):
            return "NF4 T5 needs bitsandbytes (pip install '.[gpu]')"
        problem = nf4_problem(device.type, profile.model_size, profile.dtype)
        if problem:
            return f"NF4 T5: the installed bitsandbytes cannot run the T5's 4-bit layers on {where}: {problem}"
    if recipe.fp8 and recipe.offload:
        return "the seed refuses FP8 with offload (torchao FP8 does not support offloading)"
    return None
