"""Which attention kernel a recipe gets, decided by measurement rather than by name.

``sdpa`` is diffusers' ``native`` backend (``F.scaled_dot_product_attention`` choosing its own kernel).
``fa3`` is FlashAttention-3 when importable (the official ``flash_attn_interface``, or the forward-only
``fa3_fwd_interface`` of the ``fa3-fwd`` wheel: ``pip install '.[fa3]'``), after it passes a check against a
float32 reference. Without it, or when it fails, each FlashAttention-class candidate found (FlashAttention-4's CuTe
package, torch's cuDNN and flash SDPA backends) is checked the same way and timed; the fastest correct one runs,
and the record names it (and why FA3 did not run). ``fa4`` asks for FlashAttention-4 itself, ``fa3_fp8`` for
FA3's FP8 kernel with per-head scales; both are checked, and a kernel asked for by name that fails is an error,
never replaced by another.

FA3 and FA4 run as torch custom ops in diffusers' backend slots, so ``torch.compile(fullgraph=True)`` keeps each
call whole instead of tracing into the kernel's Python.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.util
import math
import statistics
import sys
from collections.abc import Callable
from unittest import mock

import torch

from perf.build import compat
from perf.judge.record import AttentionChoice  # what the build chose is what the record keeps: one type

FA3_MODULES = ("flash_attn_interface", "fa3_fwd_interface")  # the official package first, then the fa3-fwd wheel
FA3_BACKEND = "_flash_3"
# diffusers 0.42 knows FA3 only as ``flash_attn_interface`` and FA4 only from the Hugging Face hub (``kernels``
# package); the suite fills those slots with its own custom ops over the locally installed kernels, and FA3's
# FP8 path (which diffusers does not offer) takes the FA3-hub slot: no hub is used.
FA3_FP8_BACKEND = "_flash_3_hub"
FA4_BACKEND = "flash_4_hub"
TORCH_CANDIDATES = ("_native_cudnn", "_native_flash", "native")
KERNELS = {
    FA4_BACKEND: "FlashAttention-4 (flash_attn.cute, CuTe DSL; local package in diffusers' flash_4_hub slot)",
    "_native_cudnn": "torch SDPA, cuDNN backend",
    "_native_flash": "torch SDPA, flash backend (FlashAttention-2)",
    "native": "torch SDPA, torch's own backend choice",
}
MAX_REL_ERROR = 2e-2  # bf16 attention vs a float32 reference: ||out - ref|| / ||ref||; bf16 rounding is ~4e-3
# FP8 attention (e4m3 q, k, v and, inside FA3, e4m3 softmax probabilities: 3 mantissa bits) vs float32. A CPU
# emulation of that rounding reproduces the H100's plain-cast figure (mean abs error / mean magnitude 0.054 vs
# 0.0010 / 0.019 measured) and gives ||out - ref|| / ||ref|| = 0.091 on the FP8 check's inputs at FLUX's shape
# (heads 0.5x-2x apart make the softmax sharper); a descale omitted, or read for the wrong head or batch element,
# gives 0.69 or more (tests/unit/test_fa3.py). 0.25 sits between, a factor of ~2.7 from each.
MAX_REL_ERROR_FP8 = 0.25
E4M3_MAX = torch.finfo(torch.float8_e4m3fn).max  # 448
FP8_CHECK_BATCH = 2  # the FP8 check runs two batch elements, so a scale read from the wrong one shows


class AttentionCheckFailed(RuntimeError):
    """A kernel that raised, or whose output is too far from the float32 reference to be used."""


def _module_installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ModuleNotFoundError, ValueError):  # the parent package is missing / a module without a spec
        return False


def fa3_module() -> str | None:
    """The FlashAttention-3 interface module this process would use, or None."""
    return next((name for name in FA3_MODULES if _module_installed(name)), None)


def fa3_installed() -> bool:
    return fa3_module() is not None


def fa4_installed() -> bool:
    return _module_installed("flash_attn.cute")


def _kernel_scale(query: torch.Tensor, scale: float | None) -> float:
    return query.shape[-1] ** -0.5 if scale is None else scale


def _refuse_mask(attn_mask: torch.Tensor | None, is_causal: bool, name: str) -> None:
    if attn_mask is not None or is_causal:
        raise ValueError(f"the suite's {name} backend takes no mask and no causal attention")


def quantize_e4m3(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch, seq, heads, head_dim) -> the same in float8 e4m3 and a float32 (batch, heads) descale, the layout
    FA3's ``q_descale``/``k_descale``/``v_descale`` take.

    Dynamic per-(batch, head) amax scaling: each head's largest magnitude maps to e4m3's largest (448), computed
    from the tensor itself at every call. It needs no calibration data, and an adapter that changes activation
    ranges (every hot-swap does) cannot push values out of range or into e4m3's coarse subnormals; a per-head
    scale also keeps a quiet head out of the subnormals a loud head's scale would push it into. The cost is one
    extra read of q, k and v (the amax must see a whole head before anything is cast); written in plain torch
    ops, outside the custom op, so Inductor can fuse the amax into the kernels that produce q, k and v (norm,
    rope) and the scale-and-cast into one pass, instead of launching kernels of their own."""
    amax = x.abs().amax(dim=(1, 3)).float().clamp(min=torch.finfo(torch.float32).tiny)
    scale = amax / E4M3_MAX
    return (x.float() / scale[:, None, :, None]).to(torch.float8_e4m3fn), scale


QK_NORMS = ("norm_q", "norm_k", "norm_added_q", "norm_added_k")  # FLUX's per-head RMSNorms of q and k
QK_BOUND_MARGIN = 1.01  # rope's output rounded to bf16 may exceed the exact bound by 2^-8 (0.4%); beyond: clamped


def qk_bound(transformer: torch.nn.Module) -> float:
    """The largest magnitude a q or k element can reach in ``transformer``'s attention, from its q/k RMSNorm
    weights alone: RMSNorm's output element i is x_i / rms(x) * w_i, and sum_i (x_i / rms(x))^2 <= head_dim, so
    any pair of elements has norm <= sqrt(head_dim) * max|w|; rope rotates pairs, keeping their norm. No input, no
    adapter (LoRA acts before the norm) and no hot-swap can push q or k past it."""
    bounds = [math.sqrt(module.weight.numel()) * float(module.weight.detach().abs().max())
              for name, module in transformer.named_modules()
              if name.rsplit(".", 1)[-1] in QK_NORMS and getattr(module, "weight", None) is not None]
    if not bounds:
        raise AttentionCheckFailed("static q/k scales need q and k RMSNorm'd with weights (norm_q, norm_k): "
                                   f"{type(transformer).__name__} has none")
    return max(bounds) * QK_BOUND_MARGIN


def quantize_e4m3_bounded(x: torch.Tensor, bound: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``quantize_e4m3`` at one fixed scale, ``bound`` mapping to e4m3's largest value: a pointwise cast with no
    amax pass, which Inductor fuses into the kernel producing ``x`` (rope). For q and k, whose magnitudes
    ``qk_bound`` caps; e4m3 keeps its relative precision at any scale, so a scale above a head's own amax costs
    only values that fall below its normal range (about 2^-6 of the bound)."""
    scale = bound / E4M3_MAX
    quantized = (x.float() * (1.0 / scale)).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    return quantized, torch.full((x.shape[0], x.shape[2]), scale, dtype=torch.float32, device=x.device)


_static_qk_bound: float | None = None
"""The FP8 backend's q/k bound for the pipeline being built (``choose_attention``); None: dynamic per-head scales.
A module global because diffusers' backend signature carries no per-model state; dynamo guards on its value."""


def _quantize_qkv(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> list:
    bound = _static_qk_bound
    if bound is None:
        return [quantize_e4m3(t) for t in (query, key, value)]
    return [quantize_e4m3_bounded(query, bound), quantize_e4m3_bounded(key, bound), quantize_e4m3(value)]


def _fa3_kernel() -> Callable[..., torch.Tensor]:
    """``flash_attn_func`` of the FA3 module already imported (two dict lookups), importing it the first time. It
    runs on every attention call (57 a denoising step), from Python even in a compiled graph: searching the import
    path there for a package that is not installed cost host time on every call, and a launch-bound step waits for
    the host (H100, optimized_fast: 2.97 s on one machine, 3.83 s on another)."""
    for name in FA3_MODULES:
        if sys.modules.get(name) is not None:
            return sys.modules[name].flash_attn_func
    return importlib.import_module(fa3_module() or FA3_MODULES[-1]).flash_attn_func  # none: names the wheel


@functools.cache
def fa3_op() -> Callable[..., torch.Tensor]:
    """FA3's ``flash_attn_func`` as a torch custom op: one opaque node in a compiled graph, serving whichever FA3
    package this process has (``_fa3_kernel``)."""

    @torch.library.custom_op("flux_lora_perf::flash_attn_3", mutates_args=())
    def fa3(
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        scale: float,
        q_descale: torch.Tensor | None = None,
        k_descale: torch.Tensor | None = None,
        v_descale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        out = _fa3_kernel()(
            query, key, value, softmax_scale=scale, q_descale=q_descale, k_descale=k_descale, v_descale=v_descale
        )
        return out[0] if isinstance(out, tuple) else out  # older FA3 releases return (out, lse)

    @fa3.register_fake
    def _(query, key, value, scale, q_descale=None, k_descale=None, v_descale=None):
        dtype = torch.bfloat16 if query.dtype == torch.float8_e4m3fn else query.dtype  # FP8 in, bf16 out
        return query.new_empty((*query.shape[:-1], value.shape[-1]), dtype=dtype)

    return fa3


@functools.cache
def _register_fa3() -> None:
    """The suite's FA3 op in diffusers' FA3 slot (bf16) and FA3-hub slot (FP8, quantized on the way in)."""
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    fa3 = fa3_op()

    def bf16_backend(query, key, value, attn_mask=None, scale=None, is_causal=False) -> torch.Tensor:
        _refuse_mask(attn_mask, is_causal, "FlashAttention-3")
        return fa3(query, key, value, _kernel_scale(query, scale))

    def fp8_backend(query, key, value, attn_mask=None, scale=None, is_causal=False) -> torch.Tensor:
        _refuse_mask(attn_mask, is_causal, "FlashAttention-3 FP8")
        (q8, q_descale), (k8, k_descale), (v8, v_descale) = _quantize_qkv(query, key, value)
        out = fa3(q8, k8, v8, _kernel_scale(query, scale), q_descale, k_descale, v_descale)
        return out.to(query.dtype)

    _AttentionBackendRegistry.register(AttentionBackendName._FLASH_3)(bf16_backend)
    _AttentionBackendRegistry.register(AttentionBackendName._FLASH_3_HUB)(fp8_backend)


@functools.cache
def _register_fa4() -> None:
    """FA4's ``flash_attn_func`` as a torch custom op (so ``torch.compile(fullgraph=True)`` keeps it whole instead
    of tracing into the CuTe DSL), registered under diffusers' FA4 backend name."""
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry
    from flash_attn.cute import flash_attn_func

    @torch.library.custom_op("flux_lora_perf::flash_attn_4", mutates_args=())
    def fa4(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float) -> torch.Tensor:
        out = flash_attn_func(query, key, value, softmax_scale=scale)
        return out[0] if isinstance(out, tuple) else out

    @fa4.register_fake
    def _(query, key, value, scale):
        return torch.empty_like(query)

    def backend(query, key, value, attn_mask=None, scale=None, is_causal=False) -> torch.Tensor:
        _refuse_mask(attn_mask, is_causal, "FlashAttention-4")
        return fa4(query, key, value, _kernel_scale(query, scale))

    _AttentionBackendRegistry.register(AttentionBackendName.FLASH_4_HUB)(backend)


SUITE_BACKENDS = {FA3_BACKEND: _register_fa3, FA3_FP8_BACKEND: _register_fa3, FA4_BACKEND: _register_fa4}


def set_backend(transformer, backend: str) -> None:
    """``transformer.set_attention_backend``; for the suite's own backends without diffusers' package and hub
    checks (the kernels are local, and registered here). Native SDPA goes through ``compat`` (diffusers 0.34 has
    no backends, only SDPA processors)."""
    if backend == "native":
        compat.set_native_attention(transformer)
        return
    if backend not in SUITE_BACKENDS:
        transformer.set_attention_backend(backend)
        return
    SUITE_BACKENDS[backend]()
    from diffusers.models import attention_dispatch

    with (
        mock.patch.object(attention_dispatch, "_check_attention_backend_requirements"),
        mock.patch.object(attention_dispatch, "_maybe_download_kernel_for_backend"),
    ):
        transformer.set_attention_backend(backend)


def run_backend(backend: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    from diffusers.models.attention_dispatch import dispatch_attention_fn

    if backend in SUITE_BACKENDS:
        SUITE_BACKENDS[backend]()
    return dispatch_attention_fn(q, k, v, backend=backend)


def check_inputs(
    shape: tuple[int, int, int, int], device: str, dtype: torch.dtype = torch.bfloat16
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded random (batch, seq, heads, head_dim) q, k, v whose magnitude differs per (batch, head), from 0.5x to
    2x, as real activations do: a scale applied to the wrong head or batch element changes the result."""
    generator = torch.Generator(device).manual_seed(0)
    batch, _, heads, _ = shape

    def one() -> torch.Tensor:
        magnitude = 2.0 ** (torch.rand((batch, 1, heads, 1), generator=generator, device=device) * 2 - 1)
        return (torch.randn(shape, generator=generator, device=device) * magnitude).to(dtype)

    return one(), one(), one()


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Attention in float32, (batch, seq, heads, head_dim) in and out."""
    f32 = (t.float().transpose(1, 2) for t in (q, k, v))
    return torch.nn.functional.scaled_dot_product_attention(*f32).transpose(1, 2)


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.float() - ref).norm() / ref.norm())


def check(backend: str, shape: tuple[int, int, int, int], device: str, max_error: float) -> float:
    """``backend``'s relative error against float32 on ``check_inputs``; raises ``AttentionCheckFailed`` when the
    kernel raises or the error is above ``max_error``."""
    q, k, v = check_inputs(shape, device)
    try:
        error = rel_error(run_backend(backend, q, k, v), reference(q, k, v))
    except Exception as exc:
        raise AttentionCheckFailed(f"{backend} raised {type(exc).__name__}: {exc}") from exc
    if not error <= max_error:  # NaN fails too
        raise AttentionCheckFailed(f"{backend}: relative error {error:.3g} vs float32 > {max_error:g}")
    return error


def _time_ms(fn, repeats: int = 20) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats


def interleaved_median_ms(fns: dict[str, Callable[[], object]], rounds: int = 3) -> dict[str, float]:
    """Median over interleaved rounds, so that clocks ramping up do not favour whichever runs last."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            samples[name].append(_time_ms(fn))
    return {name: statistics.median(s) for name, s in samples.items()}


def fastest_correct(
    shape: tuple[int, int, int, int], candidates: tuple[str, ...], rounds: int = 3
) -> AttentionChoice:
    """Check each candidate on ``check_inputs`` on the GPU, then time the correct ones; the fastest wins."""
    errors: dict[str, float] = {}
    for backend in candidates:
        try:
            errors[backend] = check(backend, shape, "cuda", MAX_REL_ERROR)
        except AttentionCheckFailed as failed:  # a backend unavailable on this build is just not a candidate
            errors[backend] = float("nan")
            print(f"attention backend not a candidate: {failed}")
    correct = [b for b, e in errors.items() if not math.isnan(e)]
    if not correct:
        raise RuntimeError(f"no attention backend passed the numerical check: {errors}")
    q, k, v = check_inputs(shape, "cuda")
    timings = interleaved_median_ms({b: functools.partial(run_backend, b, q, k, v) for b in correct}, rounds)
    best = min(timings, key=timings.get)
    return AttentionChoice(best, f"{KERNELS[best]} (fastest correct of {', '.join(correct)})", timings, errors)


def _fa3(backend: str, shape: tuple[int, int, int, int], device: str, static_qk: float | None = None
         ) -> AttentionChoice:
    """FA3 (bf16, or FP8 on a batch of ``FP8_CHECK_BATCH``) after its check; raises ``AttentionCheckFailed``.
    ``static_qk``: the model's q/k bound (FP8); the check runs its inputs at one static scale of their own
    largest magnitude (they are not RMSNorm'd), which exercises the same kernel path and descale layout."""
    global _static_qk_bound
    module = fa3_module()
    if module is None:
        raise AttentionCheckFailed("FlashAttention-3 is not installed (pip install '.[fa3]')")
    if backend == FA3_FP8_BACKEND:
        batch_shape = (max(shape[0], FP8_CHECK_BATCH), *shape[1:])
        if static_qk is not None:
            q, k, _ = check_inputs(batch_shape, device)
            _static_qk_bound = float(torch.maximum(q.abs().max(), k.abs().max()))
        try:
            error = check(backend, batch_shape, device, MAX_REL_ERROR_FP8)
        finally:
            _static_qk_bound = static_qk
        scales = (f"q and k at one static scale (bound {static_qk:.4g} from their RMSNorm weights), v dynamic "
                  "per-(batch, head) amax" if static_qk is not None else "dynamic per-(batch, head) amax scales")
        kernel = f"FlashAttention-3 FP8 e4m3 ({module}), {scales}"
    else:
        error = check(backend, shape, device, MAX_REL_ERROR)
        kernel = f"FlashAttention-3 ({module})"
    return AttentionChoice(backend, kernel, rel_errors={backend: error})


def without_backends(requested: str) -> AttentionChoice:
    """Before diffusers had attention backends (0.34) only native SDPA can be set: ``fa3`` runs it and the record
    says why; a kernel asked for by name (``fa4``, ``fa3_fp8``) is an error, never replaced by another."""
    from importlib.metadata import version

    why = f"diffusers {version('diffusers')} has no attention backends (set_attention_backend, diffusers 0.35+)"
    if requested in ("fa4", "fa3_fp8"):
        raise AttentionCheckFailed(f"{requested} cannot be set: {why}")
    return AttentionChoice("native", f"native SDPA; {requested} not used: {why}")


def choose_attention(requested: str, device_type: str, shape: tuple[int, int, int, int],
                     static_qk: float | None = None) -> AttentionChoice:
    """The backend for ``requested`` (a recipe's ``attention``) on ``device_type``, checked before use.
    ``static_qk``: FA3 FP8's q/k bound (``qk_bound``) for the pipeline being built, which the backend then uses
    until the next choice (None: dynamic scales)."""
    global _static_qk_bound
    _static_qk_bound = None
    if requested == "sdpa":
        return AttentionChoice("native", "native SDPA")
    if not compat.has_attention_backends():
        return without_backends(requested)
    if requested == "fa3_fp8":
        return _fa3(FA3_FP8_BACKEND, shape, device_type, static_qk)
    not_fa3 = ""
    if requested == "fa3" and fa3_installed():
        try:
            return _fa3(FA3_BACKEND, shape, device_type)
        except AttentionCheckFailed as failed:
            not_fa3 = f"; FlashAttention-3 not used, it failed its check: {failed}"
    if device_type != "cuda":  # the candidates below are CUDA kernels
        return AttentionChoice("native", f"native SDPA{not_fa3}")
    if requested == "fa4":
        return fastest_correct(shape, (FA4_BACKEND,))
    choice = fastest_correct(shape, ((FA4_BACKEND,) if fa4_installed() else ()) + TORCH_CANDIDATES)
    return dataclasses.replace(choice, kernel=f"{choice.kernel}{not_fa3}")
