"""Which attention kernel a recipe gets, decided by measurement rather than by name.

``sdpa`` is diffusers' ``native`` backend (``F.scaled_dot_product_attention`` choosing its own kernel).
``fa3`` is FlashAttention-3 (``flash_attn_interface``) when importable. Without it, each FlashAttention-class
candidate found (FlashAttention-4's CuTe package, torch's cuDNN and flash SDPA backends) is checked against a
float32 reference on random inputs of the model's attention shape and timed; the fastest correct one runs, and the
record names it. ``fa4`` asks for FlashAttention-4 itself (checked the same way), for a row of its own.
"""

from __future__ import annotations

import functools
import importlib.util
import statistics
from dataclasses import dataclass, field
from unittest import mock

import torch

FA3_BACKEND = "_flash_3"
# diffusers 0.42 knows FA4 only from the Hugging Face hub (``kernels`` package); the suite fills that slot with
# the locally installed ``flash_attn.cute`` package instead (no hub here), see ``_register_fa4``.
FA4_BACKEND = "flash_4_hub"
TORCH_CANDIDATES = ("_native_cudnn", "_native_flash", "native")
KERNELS = {
    FA3_BACKEND: "FlashAttention-3 (flash_attn_interface)",
    FA4_BACKEND: "FlashAttention-4 (flash_attn.cute, CuTe DSL; local package in diffusers' flash_4_hub slot)",
    "_native_cudnn": "torch SDPA, cuDNN backend",
    "_native_flash": "torch SDPA, flash backend (FlashAttention-2)",
    "native": "torch SDPA, torch's own backend choice",
}
MAX_REL_ERROR = 2e-2  # bf16 attention vs a float32 reference: ||out - ref|| / ||ref||; bf16 rounding is ~4e-3


@dataclass(frozen=True)
class AttentionChoice:
    backend: str  # the diffusers attention backend set on the transformer
    kernel: str  # what ran, in words, for the record
    timings_ms: dict[str, float] = field(default_factory=dict)
    rel_errors: dict[str, float] = field(default_factory=dict)


def _module_installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # the parent package is missing
        return False


def fa3_installed() -> bool:
    return _module_installed("flash_attn_interface")


def fa4_installed() -> bool:
    return _module_installed("flash_attn.cute")


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

    def backend(
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        scale: float | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        if attn_mask is not None or is_causal:
            raise ValueError("the suite's FlashAttention-4 backend takes no mask and no causal attention")
        return fa4(query, key, value, query.shape[-1] ** -0.5 if scale is None else scale)

    _AttentionBackendRegistry.register(AttentionBackendName.FLASH_4_HUB)(backend)


def set_backend(transformer, backend: str) -> None:
    """``transformer.set_attention_backend``; for FA4 without diffusers' hub checks (the kernel is local)."""
    if backend != FA4_BACKEND:
        transformer.set_attention_backend(backend)
        return
    _register_fa4()
    from diffusers.models import attention_dispatch

    with (
        mock.patch.object(attention_dispatch, "_check_attention_backend_requirements"),
        mock.patch.object(attention_dispatch, "_maybe_download_kernel_for_backend"),
    ):
        transformer.set_attention_backend(backend)


def _run(backend: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    from diffusers.models.attention_dispatch import dispatch_attention_fn

    return dispatch_attention_fn(q, k, v, backend=backend)


def _time_ms(fn, repeats: int = 20) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats


def fastest_correct(
    shape: tuple[int, int, int, int], candidates: tuple[str, ...], dtype=torch.bfloat16, rounds: int = 3
) -> AttentionChoice:
    """Check each candidate on random (batch, seq, heads, head_dim) inputs, then time the correct ones in
    interleaved rounds (median), so that clocks ramping up do not favour whichever runs last."""
    q, k, v = (torch.randn(shape, device="cuda", dtype=dtype) for _ in range(3))
    ref = torch.nn.functional.scaled_dot_product_attention(
        *(t.float().transpose(1, 2) for t in (q, k, v))
    ).transpose(1, 2)
    errors: dict[str, float] = {}
    correct = []
    for backend in candidates:
        try:
            if backend == FA4_BACKEND:
                _register_fa4()
            out = _run(backend, q, k, v)
            torch.cuda.synchronize()
        except Exception as exc:  # a backend unavailable on this build is just not a candidate
            errors[backend] = float("nan")
            print(f"attention backend {backend} unavailable: {type(exc).__name__}: {exc}")
            continue
        errors[backend] = float((out.float() - ref).norm() / ref.norm())
        if errors[backend] <= MAX_REL_ERROR:
            correct.append(backend)
    if not correct:
        raise RuntimeError(f"no attention backend passed the numerical check: {errors}")
    samples: dict[str, list[float]] = {b: [] for b in correct}
    for _ in range(rounds):
        for backend in correct:
            samples[backend].append(_time_ms(lambda b=backend: _run(b, q, k, v)))
    timings = {b: statistics.median(s) for b, s in samples.items()}
    best = min(timings, key=timings.get)
    return AttentionChoice(best, f"{KERNELS[best]} (fastest correct of {', '.join(correct)})", timings, errors)


def choose_attention(requested: str, device_type: str, shape: tuple[int, int, int, int]) -> AttentionChoice:
    if requested == "sdpa" or device_type != "cuda":
        return AttentionChoice("native", "native SDPA")
    if requested == "fa4":
        return fastest_correct(shape, (FA4_BACKEND,))
    if fa3_installed():
        return AttentionChoice(FA3_BACKEND, KERNELS[FA3_BACKEND])
    return fastest_correct(shape, ((FA4_BACKEND,) if fa4_installed() else ()) + TORCH_CANDIDATES)
