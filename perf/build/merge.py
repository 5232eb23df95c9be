"""An adapter merged into the weights it adapts (``Recipe.merge_lora``): issue 25's largest lead. On the H200 the
LoRA layers of a hot-swap row cost 12.6 ms of a step's kernels (``perf.tools.block_profile``, rank 64 against 0),
about 0.35 s of a 28-step image.

The adapter is still loaded the way diffusers loads it (``load_lora_weights(..., hotswap=True)`` into peft's LoRA
layers, rank-padded, its scaling tensors), so everything that reads or writes an adapter keeps working; the LoRA
path is switched off in the forward (peft's ``enable_adapters(False)``: the compiled graph runs the base weights
alone), and every write of the slot's state is followed by ``Merged.write``, which puts ``base + scaling * B @ A``
into the weights in place (the tensors the compiled graph reads: nothing recompiles), FP8 re-quantized with
torchao's own ``Float8Tensor.from_hp`` where the row is FP8. The base is the weights as loaded, before FP8: merged
onto the FP8 weights dequantized, a delta smaller than half of FP8's rounding step rounds back to the weight (a CPU
emulation of per-row e4m3 kept 36% of a delta of 1% of the weight, 65% of 2%; ``docs/results/2026-11-30-h200.md``).
"""

from __future__ import annotations

import torch

from perf.errors import SuiteError


def lora_modules(transformer: torch.nn.Module, adapter: str) -> dict[str, torch.nn.Module]:
    """Every PEFT LoRA layer holding ``adapter``, by module name."""
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in transformer.named_modules() if isinstance(m, LoraLayer) and adapter in m.lora_A}


class Merged:
    """The base weights (and biases) of every LoRA layer holding ``adapter``, and the write of its current state
    into them. ``unquantized``: the transformer's Linear weights as loaded, by module name (on the H200 the LoRA'd
    projections' bf16 weights are about 23 GB, kept on their device)."""

    def __init__(self, transformer: torch.nn.Module, unquantized: dict[str, torch.Tensor], adapter: str):
        self.adapter = adapter
        self.layers = lora_modules(transformer, adapter)
        # on the weight's device (a staged build keeps the copy where it loaded: the CPU)
        self.base = {name: unquantized[name].to(layer.base_layer.weight.device) for name, layer in self.layers.items()}
        self.bias = {name: layer.base_layer.bias.detach().clone() for name, layer in self.layers.items()
                     if layer.base_layer.bias is not None}

    def write(self, onto_weights: bool = False) -> None:
        """``base + scaling * B @ A`` of the adapter's current state into each layer's weight, in place, computed
        in float32 before the weight's own rounding (and ``scaling * lora_B.bias`` into the bias, where the file
        has one). ``onto_weights``: onto the layer's current weight instead (an FP8 weight dequantized), the merge
        that loses a weak adapter (``perf.tools.merged_lora`` measures it)."""
        with torch.no_grad():
            for name, layer in self.layers.items():
                lora_a, lora_b = layer.lora_A[self.adapter], layer.lora_B[self.adapter]
                scaling = layer.scaling[self.adapter]
                scaling = scaling.float() if isinstance(scaling, torch.Tensor) else scaling
                weight = layer.base_layer.weight
                base = _dense(weight) if onto_weights else self.base[name]
                _write(weight, base.float() + (lora_b.weight.float() @ lora_a.weight.float()) * scaling)
                if lora_b.bias is not None:
                    if name not in self.bias:
                        raise SuiteError(f"{name}: the adapter has a lora_B bias and the layer has none to merge "
                                         "it into (a new bias would be a new parameter: the graph would recompile)")
                    layer.base_layer.bias.copy_(self.bias[name] + lora_b.bias * scaling)

    def lora_in_forward(self, on: bool) -> None:
        """peft's switch for each layer's LoRA path: off, the graph computes the merged base weights alone."""
        for layer in self.layers.values():
            layer.enable_adapters(on)


def _dense(weight: torch.Tensor) -> torch.Tensor:
    """The weight as a plain tensor (an FP8 weight dequantized)."""
    return weight.dequantize() if hasattr(weight, "qdata") else weight.detach()


def _write(weight: torch.Tensor, value: torch.Tensor) -> None:
    """``value`` into ``weight`` in place: a plain weight copied in its dtype; torchao's FP8 weight quantized as
    torchao quantizes it (``Float8Tensor.from_hp`` with the weight's own settings), its data and scales copied."""
    if not hasattr(weight, "qdata"):
        weight.copy_(value.to(weight.dtype))
        return
    from torchao.quantization import Float8Tensor, PerRow

    fresh = Float8Tensor.from_hp(value.to(weight.dtype), weight.qdata.dtype, PerRow(), mm_config=weight.mm_config,
                                 kernel_preference=weight.kernel_preference, act_quant_kwargs=weight.act_quant_kwargs)
    weight.qdata.copy_(fresh.qdata)
    weight.scale.copy_(fresh.scale)
