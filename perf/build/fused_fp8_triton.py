"""The CUDA kernel of ``perf.build.fused_fp8.gelu_cat_fp8_rowwise``: one program per row, the whole row (15360
values at FLUX.1-dev's width) in registers, so each input is read once and the FP8 row written once. Imported only
where CUDA runs it (Triton is not installed with CPU torch). Its name holds "amax", which the profiles count as FP8
activation quantization.

On the H200 (2026-12-01, ``block_profile --rank 0``) it takes 0.145 ms a single block where Inductor's two passes
take 0.244, the block 1.413 ms of kernels against 1.506; 212 MB in 0.145 ms is 1.5 TB/s, a third of the
bandwidth, so its launch shape (rows per program, warps) is still to tune."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

SQRT_2_OVER_PI = tl.constexpr(0.7978845608028654)


@triton.autotune(configs=[triton.Config({}, num_warps=warps) for warps in (4, 8, 16, 32)], key=["A", "H"])
@triton.jit
def _gelu_cat_amax_fp8_rowwise(attn_ptr, mlp_ptr, out_ptr, scale_ptr, A: tl.constexpr, H: tl.constexpr,
                          BLOCK_A: tl.constexpr, BLOCK_H: tl.constexpr, FP8_MAX: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols_a = tl.arange(0, BLOCK_A)
    cols_h = tl.arange(0, BLOCK_H)
    a = tl.load(attn_ptr + row * A + cols_a, mask=cols_a < A, other=0.0).to(tl.float32)
    m = tl.load(mlp_ptr + row * H + cols_h, mask=cols_h < H, other=0.0).to(tl.float32)
    g = 0.5 * m * (1.0 + libdevice.tanh(SQRT_2_OVER_PI * (m + 0.044715 * m * m * m)))
    g = g.to(tl.bfloat16).to(tl.float32)  # GELU's output is bf16 in the block
    amax = tl.maximum(tl.max(tl.abs(a), axis=0), tl.max(tl.abs(g), axis=0))
    scale = (amax / FP8_MAX).to(tl.bfloat16).to(tl.float32)  # torchao divides the bf16 amax in bf16
    tl.store(scale_ptr + row, scale)
    out = out_ptr + row * (A + H)
    tl.store(out + cols_a, tl.clamp(a / scale, -FP8_MAX, FP8_MAX).to(tl.float8e4nv), mask=cols_a < A)
    tl.store(out + A + cols_h, tl.clamp(g / scale, -FP8_MAX, FP8_MAX).to(tl.float8e4nv), mask=cols_h < H)


def gelu_cat_fp8_rowwise_triton(attn: torch.Tensor, mlp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    rows, a_cols = attn.shape
    h_cols = mlp.shape[1]
    data = torch.empty((rows, a_cols + h_cols), device=attn.device, dtype=torch.float8_e4m3fn)
    scale = torch.empty((rows, 1), device=attn.device, dtype=torch.float32)
    _gelu_cat_amax_fp8_rowwise[(rows,)](attn, mlp, data, scale, a_cols, h_cols, triton.next_power_of_2(a_cols),
                                   triton.next_power_of_2(h_cols), torch.finfo(torch.float8_e4m3fn).max)
    return data, scale
