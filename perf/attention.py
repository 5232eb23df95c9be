"""Which attention kernel a recipe gets, decided by measurement rather than by name.

``sdpa`` is diffusers' ``native`` backend (``F.scaled_dot_product_attention`` choosing its own kernel).
``fa3`` is FlashAttention-3 (``flash_attn_interface``) when importable. Without it, each FlashAttention-class
candidate that torch ships is checked against a float32 reference on random inputs of the model's attention
shape and timed; the fastest correct one runs, and the record names it.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field

import torch

# diffusers backend name -> the torch SDPA backend it forces (None: not a torch SDPA backend)
FALLBACKS = ("_native_cudnn", "_native_flash", "native")
MAX_REL_ERROR = 2e-2  # bf16 attention vs a float32 reference: ||out - ref|| / ||ref||; bf16 rounding is ~4e-3


@dataclass(frozen=True)
class AttentionChoice:
    backend: str  # the diffusers attention backend set on the transformer
    kernel: str  # what ran, in words, for the record
    timings_ms: dict[str, float] = field(default_factory=dict)
    rel_errors: dict[str, float] = field(default_factory=dict)


def fa3_installed() -> bool:
    return importlib.util.find_spec("flash_attn_interface") is not None


def _run(backend: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    from diffusers.models.attention_dispatch import dispatch_attention_fn

    return dispatch_attention_fn(q, k, v, backend=backend)


def _time_ms(fn, repeats: int = 10) -> float:
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats


def fastest_correct(shape: tuple[int, int, int, int], dtype=torch.bfloat16, candidates=FALLBACKS) -> AttentionChoice:
    """Check and time each candidate on random (batch, seq, heads, head_dim) inputs; keep the fastest correct."""
    q, k, v = (torch.randn(shape, device="cuda", dtype=dtype) for _ in range(3))
    ref = torch.nn.functional.scaled_dot_product_attention(
        *(t.float().transpose(1, 2) for t in (q, k, v))
    ).transpose(1, 2)
    timings, errors = {}, {}
    for backend in candidates:
        try:
            out = _run(backend, q, k, v)
            errors[backend] = float((out.float() - ref).norm() / ref.norm())
            if errors[backend] <= MAX_REL_ERROR:
                timings[backend] = _time_ms(lambda b=backend: _run(b, q, k, v))
        except Exception as exc:  # a backend unavailable on this build is just not a candidate
            errors[backend] = float("nan")
            timings.pop(backend, None)
            print(f"attention backend {backend} unavailable: {type(exc).__name__}: {exc}")
    if not timings:
        raise RuntimeError(f"no attention backend passed the numerical check: {errors}")
    best = min(timings, key=timings.get)
    return AttentionChoice(best, f"{best} (fastest FlashAttention-class kernel; FA3 not installed)", timings, errors)


def choose_attention(requested: str, device_type: str, shape: tuple[int, int, int, int]) -> AttentionChoice:
    if requested == "sdpa" or device_type != "cuda":
        return AttentionChoice("native", "native SDPA")
    if fa3_installed():
        return AttentionChoice("_flash_3", "FlashAttention-3 (flash_attn_interface)")
    return fastest_correct(shape)
