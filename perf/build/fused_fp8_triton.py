"""The CUDA kernel of ``perf.build.fused_fp8.gelu_cat_fp8_rowwise``: one program per row. Imported only where
CUDA runs it (Triton is not installed with CPU torch). Its name holds "amax", which the profiles count as FP8
activation quantization.

The whole row (15360 values at FLUX.1-dev's width) is held in registers and each input read once from memory; the
autotuner picks the warps per row on the device (``TRITON_PRINT_AUTOTUNING=1`` names the pick). On the H200
(2026-12-01, ``block_profile --rank 0``) it picks 8 warps for a single block's row and 8-32 for a feed-forward's
12288; a chunked shape (the row read twice, the second time from L2) was never picked, and was dropped. With
libdevice's tanh the kernel took 0.145 ms a single block where Inductor's two passes take 0.244; with the GELU
below, about 0.076 ms (2.8 TB/s; 3.63 ms a step of the best row's 72), a single block 1.329 ms of kernels against
1.525 unfused and a double block 1.515 against 1.642."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

CONFIGS = [triton.Config({}, num_warps=warps) for warps in (4, 8, 16, 32)]


@triton.jit
def _gelu_bf16(m):
    """diffusers' GELU (tanh) of a float32 row, rounded to bf16 as the block's activation is. Written as
    ``m * sigmoid(2u)`` (equal to ``0.5 m (1 + tanh(u))``) with the hardware's exp2 and reciprocal: libdevice's
    tanh cost about 20 instructions a value, which made the kernel compute-bound (0.145 ms a single block, 1.5
    TB/s). It rounds to another bf16 than torch's formula only in the negative tail, where ``1 + tanh(u)`` cancels
    (torch's is the less exact there): a CPU emulation at FLUX's width moves 7e-5 of the e4m3 bytes."""
    u = 0.7978845608028654 * (m + 0.044715 * m * m * m)  # 0.797...: sqrt(2 / pi)
    g = libdevice.fast_dividef(m, 1.0 + tl.exp2(-2.8853900817779268 * u))  # 2.885...: 2 log2(e)
    return g.to(tl.bfloat16).to(tl.float32)


@triton.jit
def _scale(amax, FP8_MAX: tl.constexpr):
    """torchao's: the bf16 amax divided by e4m3's max in bf16, then float32."""
    return (amax / FP8_MAX).to(tl.bfloat16).to(tl.float32)


@triton.jit
def _cast(x, scale, FP8_MAX: tl.constexpr):
    return tl.clamp(x / scale, -FP8_MAX, FP8_MAX).to(tl.float8e4nv)


@triton.autotune(configs=CONFIGS, key=["A", "H"])
@triton.jit
def _gelu_cat_amax_fp8_rowwise(attn_ptr, mlp_ptr, out_ptr, scale_ptr, A: tl.constexpr, H: tl.constexpr,
                               BLOCK_A: tl.constexpr, BLOCK_H: tl.constexpr, FP8_MAX: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    attn, mlp, out = attn_ptr + row * A, mlp_ptr + row * H, out_ptr + row * (A + H)
    cols_a = tl.arange(0, BLOCK_A)
    cols_h = tl.arange(0, BLOCK_H)
    a = tl.load(attn + cols_a, mask=cols_a < A, other=0.0).to(tl.float32)
    g = _gelu_bf16(tl.load(mlp + cols_h, mask=cols_h < H, other=0.0).to(tl.float32))
    scale = _scale(tl.maximum(tl.max(tl.abs(a), axis=0), tl.max(tl.abs(g), axis=0)), FP8_MAX)
    tl.store(scale_ptr + row, scale)
    tl.store(out + cols_a, _cast(a, scale, FP8_MAX), mask=cols_a < A)
    tl.store(out + A + cols_h, _cast(g, scale, FP8_MAX), mask=cols_h < H)


def gelu_cat_fp8_rowwise_triton(attn: torch.Tensor, mlp: torch.Tensor,
                                config: triton.Config | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``config``: one launch shape of ``CONFIGS`` instead of the autotuner's pick (the tests run each)."""
    rows, a_cols = attn.shape
    h_cols = mlp.shape[1]
    data = torch.empty((rows, a_cols + h_cols), device=attn.device, dtype=torch.float8_e4m3fn)
    scale = torch.empty((rows, 1), device=attn.device, dtype=torch.float32)
    blocks = (max(1, triton.next_power_of_2(a_cols)), triton.next_power_of_2(h_cols))  # no attention part: 1, masked
    args = (attn, mlp, data, scale, a_cols, h_cols, *blocks, torch.finfo(torch.float8_e4m3fn).max)
    if config is None:
        _gelu_cat_amax_fp8_rowwise[(rows,)](*args)
    else:
        _gelu_cat_amax_fp8_rowwise.fn[(rows,)](*args, **config.all_kwargs())
    return data, scale
