"""The single-stream blocks' ``proj_out`` input quantized to FP8 in one pass (``Recipe.fused_fp8_proj_out``,
issue 25).

A single block multiplies ``cat([attention output, GELU(proj_mlp(x))])``, rows of 3072 + 12288, by ``proj_out``.
With torchao's dynamic per-row FP8 Inductor computes that input's row amax in one looped kernel and recomputes the
GELU and concat to cast it in a second: 4.66 + 4.20 ms of a merged row's 83 ms step on the H200 (38 blocks,
``docs/results/2026-12-01-h200/profile``), at 24% and 40% of the bandwidth, multi-kernel reductions or not. One
row of 15360 fits one program: ``gelu_cat_fp8_rowwise`` reads the attention output and the MLP pre-activation once,
keeps the row on chip, and writes the FP8 row and its scale (about 8 GB a step where Inductor moves 13), computed
as torchao computes them (``_choose_scale_float8``, ``_quantize_affine_float8``). ``proj_out``'s own FP8 weight is
then multiplied with ``torch._scaled_mm`` as torchao calls it.

The block's forward is diffusers' ``FluxSingleTransformerBlock.forward`` with the concat and ``proj_out`` replaced
by that pair; the CPU tests hold it to diffusers' block. It serves only rows that merge the adapter into the
weights: peft's LoRA path on ``proj_out`` would need the bf16 concat this never writes. The merge writes the FP8
weight in place, into the very tensors kept here, so a swap reaches the fused forward and nothing recompiles.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F

from perf.errors import SuiteError

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max


@torch.library.custom_op("flux_lora_perf::gelu_cat_fp8_rowwise", mutates_args=())
def gelu_cat_fp8_rowwise(attn: torch.Tensor, mlp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``cat([attn, gelu_tanh(mlp)], -1)`` of two (rows, n) bf16 tensors, quantized per row as torchao does: the
    e4m3 data and the float32 scale (rows, 1) that multiplies it back. Plain ops here (any device); CUDA runs
    one Triton program per row (``perf.build.fused_fp8_triton``)."""
    x = torch.cat([attn, F.gelu(mlp, approximate="tanh")], dim=-1)  # bf16, as diffusers' block materializes it
    scale = (x.abs().amax(dim=-1, keepdim=True) / FP8_MAX).to(torch.float32)  # the amax and divide in bf16
    return (x.to(torch.float32) / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


@gelu_cat_fp8_rowwise.register_fake
def _(attn: torch.Tensor, mlp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    rows = attn.shape[0]
    return attn.new_empty((rows, attn.shape[1] + mlp.shape[1]), dtype=FP8), attn.new_empty((rows, 1),
                                                                                            dtype=torch.float32)


@gelu_cat_fp8_rowwise.register_kernel("cuda")
def _(attn: torch.Tensor, mlp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from perf.build.fused_fp8_triton import gelu_cat_fp8_rowwise_triton

    return gelu_cat_fp8_rowwise_triton(attn.contiguous(), mlp.contiguous())


def fp8_weight_parts(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """torchao's per-row FP8 weight as ``_scaled_mm`` takes it: the e4m3 data (out, in), its float32 scales
    (out, 1) and whether torchao accumulates fast; the same tensors the merge writes into."""
    if not hasattr(weight, "qdata"):
        raise SuiteError("fused_fp8_proj_out needs proj_out's weight in torchao's FP8 (Recipe.fp8)")
    return weight.qdata, weight.scale, bool(weight.mm_config.use_fast_accum)


def fused_forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor, temb: torch.Tensor,
                  image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
                  joint_attention_kwargs: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """diffusers 0.42's ``FluxSingleTransformerBlock.forward``, ``proj_out(cat(...))`` fused as above."""
    text_seq_len = encoder_hidden_states.shape[1]
    hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)
    residual = hidden_states
    norm_hidden_states, gate = self.norm(hidden_states, emb=temb)
    mlp_hidden_states = self.proj_mlp(norm_hidden_states)
    attn_output = self.attn(hidden_states=norm_hidden_states, image_rotary_emb=image_rotary_emb,
                            **(joint_attention_kwargs or {}))
    rows = attn_output.shape[:-1]
    data, scale = gelu_cat_fp8_rowwise(attn_output.reshape(-1, attn_output.shape[-1]),
                                       mlp_hidden_states.reshape(-1, mlp_hidden_states.shape[-1]))
    out = torch._scaled_mm(data, self.proj_out_fp8.t(), scale_a=scale, scale_b=self.proj_out_fp8_scale.t(),
                           bias=self.proj_out_bias, out_dtype=attn_output.dtype,
                           use_fast_accum=self.proj_out_fast_accum)
    hidden_states = residual + gate.unsqueeze(1) * out.reshape(*rows, -1)
    if hidden_states.dtype == torch.float16:
        hidden_states = hidden_states.clip(-65504, 65504)
    return hidden_states[:, :text_seq_len], hidden_states[:, text_seq_len:]


def fuse_single_block(block: torch.nn.Module, name: str = "single block") -> None:
    """The block's forward fused as above; its ``proj_out`` weight, scales and bias kept as non-persistent buffers
    (the same tensors, which CUDA graphs take as static). Refuses a block whose LoRA path on ``proj_out`` is on
    (the fused forward would skip it)."""
    layer = block.proj_out
    if hasattr(layer, "base_layer") and not layer.disable_adapters:
        raise SuiteError(f"{name}.proj_out: its LoRA path is on; fused_fp8_proj_out serves adapters merged into the "
                         "weights (Recipe.merge_lora)")
    base = getattr(layer, "base_layer", layer)
    data, scale, fast_accum = fp8_weight_parts(base.weight)
    block.register_buffer("proj_out_fp8", data, persistent=False)
    block.register_buffer("proj_out_fp8_scale", scale, persistent=False)
    block.register_buffer("proj_out_bias", None if base.bias is None else base.bias.detach(), persistent=False)
    block.proj_out_fast_accum = fast_accum
    block.forward = types.MethodType(fused_forward, block)


def fuse_proj_out(transformer: torch.nn.Module) -> str:
    """Every single-stream block of the transformer fused (``fuse_single_block``)."""
    blocks = transformer.single_transformer_blocks
    for index, block in enumerate(blocks):
        fuse_single_block(block, f"single_transformer_blocks.{index}")
    return f"proj_out of {len(blocks)} single blocks: GELU, concat and per-row FP8 in one pass (perf.build.fused_fp8)"
