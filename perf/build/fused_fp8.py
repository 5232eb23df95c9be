"""FP8 linears whose input is a GELU output, that input quantized in the pass that computes the GELU
(``Recipe.fused_fp8_gelu``, issue 25).

A single block multiplies ``cat([attention output, GELU(proj_mlp(x))])``, rows of 3072 + 12288, by ``proj_out``.
With torchao's dynamic per-row FP8 Inductor computes that input's row amax in one looped kernel and recomputes the
GELU and concat to cast it in a second: 4.66 + 4.20 ms of a merged row's 83 ms step on the H200 (38 blocks,
``docs/results/2026-12-01-h200/profile``), at 24% and 40% of the bandwidth, multi-kernel reductions or not. A double
block's feed-forwards (image and text stream) multiply ``GELU(net[0].proj(x))``, rows of 12288, by ``net[2]``: one
looped kernel, 2.52 + 0.36 ms a step. ``gelu_cat_fp8_rowwise`` reads each input once and writes the FP8 row and its
scale, computed as torchao computes them (``_choose_scale_float8``, ``_quantize_affine_float8``); the linear's own
FP8 weight is then multiplied with ``torch._scaled_mm`` as torchao calls it.

The forwards are diffusers' (``FluxSingleTransformerBlock.forward``, ``FeedForward.forward``) with the GELU, concat
and linear replaced by that pair; the CPU tests hold them to diffusers' modules. They serve only rows that merge the
adapter into the weights: peft's LoRA path on the linear would need the bf16 input this never writes. The merge
writes the FP8 weight in place, into the very tensors kept here, so a swap reaches the fused forward and nothing
recompiles.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F

from perf.errors import SuiteError

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max


@torch.library.custom_op("flux_lora_perf::gelu_cat_fp8_rowwise", mutates_args=())
def gelu_cat_fp8_rowwise(attn: torch.Tensor | None, mlp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``cat([attn, gelu_tanh(mlp)], -1)`` of (rows, n) bf16 tensors (``attn`` None: the GELU alone), quantized
    per row as torchao does: the e4m3 data and the float32 scale (rows, 1) that multiplies it back. Plain ops here
    (any device); CUDA runs one Triton program per row (``perf.build.fused_fp8_triton``)."""
    x = F.gelu(mlp, approximate="tanh")  # bf16, as diffusers' modules materialize it
    x = x if attn is None else torch.cat([attn, x], dim=-1)
    scale = (x.abs().amax(dim=-1, keepdim=True) / FP8_MAX).to(torch.float32)  # the amax and divide in bf16
    return (x.to(torch.float32) / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


@gelu_cat_fp8_rowwise.register_fake
def _(attn: torch.Tensor | None, mlp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    rows, width = mlp.shape[0], mlp.shape[1] + (0 if attn is None else attn.shape[1])
    return mlp.new_empty((rows, width), dtype=FP8), mlp.new_empty((rows, 1), dtype=torch.float32)


@gelu_cat_fp8_rowwise.register_kernel("cuda")
def _(attn: torch.Tensor | None, mlp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from perf.build.fused_fp8_triton import gelu_cat_fp8_rowwise_triton

    attn = mlp.new_empty((mlp.shape[0], 0)) if attn is None else attn.contiguous()
    return gelu_cat_fp8_rowwise_triton(attn, mlp.contiguous())


def fp8_weight_parts(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """torchao's per-row FP8 weight as ``_scaled_mm`` takes it: the e4m3 data (out, in), its float32 scales
    (out, 1) and whether torchao accumulates fast; the same tensors the merge writes into."""
    if not hasattr(weight, "qdata"):
        raise SuiteError("fused_fp8_gelu needs the linear's weight in torchao's FP8 (Recipe.fp8)")
    return weight.qdata, weight.scale, bool(weight.mm_config.use_fast_accum)


def keep_fp8_linear(holder: torch.nn.Module, layer: torch.nn.Module, name: str) -> None:
    """``layer``'s FP8 weight, scales and bias kept on ``holder`` as non-persistent buffers (the same tensors,
    which CUDA graphs take as static). Refuses a layer whose LoRA path is on (the fused forward would skip it)."""
    if hasattr(layer, "base_layer") and not layer.disable_adapters:
        raise SuiteError(f"{name}: its LoRA path is on; fused_fp8_gelu serves adapters merged into the weights "
                         "(Recipe.merge_lora)")
    base = getattr(layer, "base_layer", layer)
    data, scale, fast_accum = fp8_weight_parts(base.weight)
    holder.register_buffer("fp8_weight", data, persistent=False)
    holder.register_buffer("fp8_scale", scale, persistent=False)
    holder.register_buffer("fp8_bias", None if base.bias is None else base.bias.detach(), persistent=False)
    holder.fp8_fast_accum = fast_accum


def fp8_linear(holder: torch.nn.Module, attn: torch.Tensor | None, mlp: torch.Tensor) -> torch.Tensor:
    """The kept linear applied to ``cat([attn, GELU(mlp)])``, quantized in one pass; (..., n) in, (..., out) out."""
    rows = mlp.shape[:-1]
    data, scale = gelu_cat_fp8_rowwise(None if attn is None else attn.reshape(-1, attn.shape[-1]),
                                       mlp.reshape(-1, mlp.shape[-1]))
    out = torch._scaled_mm(data, holder.fp8_weight.t(), scale_a=scale, scale_b=holder.fp8_scale.t(),
                           bias=holder.fp8_bias, out_dtype=mlp.dtype, use_fast_accum=holder.fp8_fast_accum)
    return out.reshape(*rows, -1)


def fused_single_forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                         temb: torch.Tensor, image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
                         joint_attention_kwargs: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """diffusers 0.42's ``FluxSingleTransformerBlock.forward``, ``proj_out(cat(...))`` fused as above."""
    text_seq_len = encoder_hidden_states.shape[1]
    hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)
    residual = hidden_states
    norm_hidden_states, gate = self.norm(hidden_states, emb=temb)
    mlp_hidden_states = self.proj_mlp(norm_hidden_states)
    attn_output = self.attn(hidden_states=norm_hidden_states, image_rotary_emb=image_rotary_emb,
                            **(joint_attention_kwargs or {}))
    hidden_states = residual + gate.unsqueeze(1) * fp8_linear(self, attn_output, mlp_hidden_states)
    if hidden_states.dtype == torch.float16:
        hidden_states = hidden_states.clip(-65504, 65504)
    return hidden_states[:, :text_seq_len], hidden_states[:, text_seq_len:]


def fused_feed_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    """diffusers 0.42's ``FeedForward.forward`` for ``gelu-approximate``: ``net[2](GELU(net[0].proj(x)))``, the
    dropout between them inactive (p 0 in FLUX, and eval), fused as above."""
    return fp8_linear(self, None, self.net[0].proj(hidden_states))


def fuse_single_block(block: torch.nn.Module, name: str = "single block") -> None:
    keep_fp8_linear(block, block.proj_out, f"{name}.proj_out")
    block.forward = types.MethodType(fused_single_forward, block)


def fuse_feed_forward(ff: torch.nn.Module, name: str = "ff") -> None:
    from diffusers.models.activations import GELU

    gelu, dropout, out = ff.net if len(ff.net) == 3 else (None, None, None)
    if not isinstance(gelu, GELU) or gelu.approximate != "tanh" or getattr(dropout, "p", None) != 0:
        raise SuiteError(f"{name}: fused_fp8_gelu takes FLUX's feed-forward (GELU tanh, dropout 0, linear), "
                         f"not {ff.net}")
    keep_fp8_linear(ff, out, f"{name}.net.2")
    ff.forward = types.MethodType(fused_feed_forward, ff)


def fuse_double_block(block: torch.nn.Module, name: str = "double block") -> None:
    fuse_feed_forward(block.ff, f"{name}.ff")
    fuse_feed_forward(block.ff_context, f"{name}.ff_context")


def fuse_gelu_linears(transformer: torch.nn.Module) -> str:
    """Every double block's two feed-forwards and every single block's ``proj_out``, fused as above."""
    for index, block in enumerate(transformer.transformer_blocks):
        fuse_double_block(block, f"transformer_blocks.{index}")
    for index, block in enumerate(transformer.single_transformer_blocks):
        fuse_single_block(block, f"single_transformer_blocks.{index}")
    return (f"GELU and per-row FP8 in one pass before the feed-forward outputs of {len(transformer.transformer_blocks)}"
            f" double blocks and proj_out of {len(transformer.single_transformer_blocks)} single blocks "
            "(perf.build.fused_fp8)")
