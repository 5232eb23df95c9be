"""The one place a recipe is applied: ``build_pipeline(spec, recipe)``.

Order matters and is the seed's: load (T5 NF4 at load) -> attention backend -> FP8 -> enable hot-swap ->
first LoRA (merged into the weights, where the recipe merges; the FP8 quantization of GELU outputs fused, where
it asks) -> CPU offload -> compile (and the VAE decoder, where
the recipe asks). Hot-swap must be enabled
before the first adapter is loaded and before the transformer is compiled, or the second adapter recompiles.

Recipes made to fit a 24 GB card (offload or NF4 T5) are *staged*: loaded into CPU memory, T5 quantized at
load, the transformer quantized layer by layer on the GPU, and only then placed on the GPU (or offloaded), as
the seed does. The bf16 pipeline (~33 GB) is never on the GPU at once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from perf.build import compat, compile_settings
from perf.build.attention import AttentionChoice, choose_attention, qk_bound, set_backend
from perf.build.fused_fp8 import fuse_gelu_linears
from perf.build.merge import Merged
from perf.spec.cache import build_once
from perf.spec.loras import LoraAdapter, check_hotswap
from perf.spec.models import SYNTHETIC_VERSION, ModelSource, load_pipeline
from perf.spec.recipes import Recipe
from perf.spec.run_spec import RunSpec
from perf.spec.settings import GenerationSettings

HOTSWAP_ADAPTER = "default_0"  # the seed loads every adapter under one name when hot-swapping


@dataclass(frozen=True)
class CachedLora:
    """An adapter as a server keeps it in RAM: what ``lora_state_dict`` reads from its file (converted to diffusers'
    keys), with the file's network alphas and adapter metadata (``lora_alpha``, rank and alpha patterns).
    ``load_lora_weights`` given a state dict reads no metadata and takes none, so an adapter whose alphas live in
    the metadata would be served at the wrong strength (``perf.run.serving`` measures it): it is loaded through
    the transformer's ``load_lora_adapter``, which takes them, as the pipeline's loader does for a file."""

    state_dict: dict = field(repr=False)
    network_alphas: dict | None = None
    metadata: dict | None = None

    @classmethod
    def read(cls, adapter: LoraAdapter) -> CachedLora:
        from diffusers import FluxPipeline

        state_dict, alphas, metadata = FluxPipeline.lora_state_dict(str(adapter.path), return_alphas=True,
                                                                    return_lora_metadata=True)
        return cls(state_dict, alphas, metadata)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.state_dict.values())

    def load(self, pipe, **kwargs) -> None:
        """Into ``pipe``'s transformer (a shallow copy of the state dict: diffusers pops keys from it)."""
        pipe.transformer.load_lora_adapter(dict(self.state_dict), network_alphas=self.network_alphas,
                                           metadata=self.metadata, prefix="transformer", _pipeline=pipe, **kwargs)


@dataclass
class BuiltPipeline:
    """A pipeline with a recipe applied, and the one way to swap adapters and generate with it."""

    pipe: object
    recipe: Recipe
    spec: RunSpec
    attention: AttentionChoice
    build_seconds: float = 0.0
    first: LoraAdapter | None = None
    current: LoraAdapter | None = None
    loads: int = 0
    facts: dict = field(default_factory=dict)
    # the transformer's Linear weights as loaded, before FP8, by module name (only with ``keep_unquantized``)
    unquantized: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    merged: Merged | None = None  # the hot-swap slot merged into the weights (``Recipe.merge_lora``)

    @property
    def device_type(self) -> str:
        return self.spec.device_type

    def load_adapter(self, adapter: LoraAdapter, cached: CachedLora | None = None) -> None:
        """Hot-swap ``adapter`` in (recipes with hot-swap) or unload and load it as a new adapter (without). With
        ``cached`` (the adapter as a server keeps it in RAM), from memory instead of its file."""
        pipe = self.pipe

        def load(**kwargs) -> None:
            if cached is None:
                pipe.load_lora_weights(str(adapter.path), **kwargs)
            else:
                cached.load(pipe, **kwargs)

        if self.current is None:
            if self.recipe.hotswap:
                check_hotswap(adapter, adapter, self.spec.target_rank)
            load(adapter_name=HOTSWAP_ADAPTER)
            self.first = adapter
        elif self.recipe.hotswap:
            check_hotswap(self.first, adapter, self.spec.target_rank)
            with compat.hotswap_fixes(pipe):
                load(adapter_name=HOTSWAP_ADAPTER, hotswap=True)
        else:
            pipe.unload_lora_weights()
            name = f"adapter_{self.loads}"
            load(adapter_name=name)
            pipe.set_adapters(name)
        self.current = adapter
        self.loads += 1
        self.lora_written()

    def lora_written(self) -> None:
        """The hot-swap slot's state was written in place (a swap, a check's reference or control): on a row that
        merges the adapter, into the weights too, so the next step serves it."""
        if self.merged is not None:
            self.merged.write()

    def generate(self, adapter: LoraAdapter | None = None) -> np.ndarray:
        """One full pipeline call (text encoding, denoising, VAE decode) -> HxWx3 float image in [0, 1]."""
        return self.serve(adapter)[0]

    def serve(self, adapter: LoraAdapter | None = None, **request) -> np.ndarray:
        """One full pipeline call with ``request`` overriding the run's settings (a serving request: ``height``,
        ``width``, ``num_images_per_prompt``, ``joint_attention_kwargs={"scale": s}``) -> NxHxWx3 images."""
        prompt = (adapter or self.current).prompt
        generator = torch.Generator("cpu").manual_seed(self.spec.settings.seed)
        kwargs = {**self.spec.settings.pipeline_kwargs(), **request}
        return self.pipe(prompt=prompt, generator=generator, output_type="np", **kwargs).images


def image_tokens(pipe, height: int, width: int) -> int:
    """The image's tokens in the transformer: its latents (the VAE's scale) packed into 2x2 patches."""
    patch = pipe.vae_scale_factor * 2
    return (height // patch) * (width // patch)


def attention_shape(pipe, settings: GenerationSettings) -> tuple[int, int, int, int]:
    """(batch, tokens, heads, head_dim) of the transformer's joint attention at these settings."""
    cfg = pipe.transformer.config
    tokens = image_tokens(pipe, settings.height, settings.width) + settings.max_sequence_length
    return (1, tokens, cfg.num_attention_heads, cfg.attention_head_dim)


def _nf4_text_encoder_2(source: ModelSource, pipe, cache: Path, dtype: torch.dtype):
    """T5 in NF4 through bitsandbytes, quantized at load as the seed does (saved first when synthetic). It lands
    on the current GPU (bitsandbytes places 4-bit weights at load), or stays on the CPU where there is none."""
    from transformers import BitsAndBytesConfig, T5EncoderModel

    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
    if source.kind == "pretrained":
        where, subfolder = source.location, "text_encoder_2"
    else:
        where = build_once(
            cache / "models" / f"{source.location}-v{SYNTHETIC_VERSION}-text_encoder_2", "config.json",
            pipe.text_encoder_2.save_pretrained,
        )
        subfolder = None
    kwargs = {"subfolder": subfolder} if subfolder else {}
    return T5EncoderModel.from_pretrained(where, quantization_config=config, torch_dtype=dtype, **kwargs)


def quantize_fp8(transformer, device: str | None = None, set_inductor_config: bool = True) -> str:
    """FP8 rowwise weights and dynamic activations; with ``device``, each layer is moved there and quantized in
    turn (the staged path: the bf16 transformer never sits on the GPU whole). ``set_inductor_config`` is torchao's
    default, as the seed ran it: it also sets process-wide Inductor options (see ``perf.build.compile_settings``)."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    config = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), set_inductor_config=set_inductor_config)
    quantize_(transformer, config, device=device)
    return "torchao Float8DynamicActivationFloat8WeightConfig(PerRow) (= float8dq_e4m3_row)"


def compile_vae_decoder(vae) -> str:
    """The VAE decoder in channels-last memory format (the layout tensor-core convolutions take natively) and
    compiled as one graph, as flux-fast does; LoRAs never touch the VAE, so a swap cannot recompile it."""
    vae.to(memory_format=torch.channels_last)
    vae.decoder.compile(fullgraph=True)
    return "decoder channels_last, compiled fullgraph=True"


def staged(recipe: Recipe) -> bool:
    """Recipes made for a small card load into CPU memory first and are placed once quantized/offloaded."""
    return recipe.offload or recipe.t5_nf4


def _offload_device(device: str) -> torch.device:
    """The GPU this process runs on (one per pytest-xdist worker), not always cuda:0."""
    return torch.device(device, torch.cuda.current_device()) if device == "cuda" else torch.device(device)


def build_pipeline(spec: RunSpec, recipe: Recipe, first: LoraAdapter | None = None,
                   keep_unquantized: bool = False) -> BuiltPipeline:
    """Build ``recipe`` for ``spec`` with ``first`` (default: the pool's first adapter) loaded. ``keep_unquantized``
    keeps a copy of the transformer's Linear weights as loaded (``BuiltPipeline.unquantized``; 24 GB at FLUX.1-dev's
    size), for writing an adapter into the weights: an FP8 weight dequantized and re-quantized with a delta loses a
    weak adapter to rounding, one quantized from the loaded weight plus the delta keeps it."""
    started = time.perf_counter()
    source, active, cache, settings = spec.source, spec.active, spec.cache, spec.settings
    device = active.device.type
    dtype = active.profile.dtype
    stage = staged(recipe)
    pipe = load_pipeline(source, dtype, device, cache, staged=stage)
    pipe.set_progress_bar_config(disable=True)
    facts: dict = {"staged_on_cpu": stage}
    if recipe.t5_nf4:
        text_encoder_2 = _nf4_text_encoder_2(source, pipe, cache, dtype)
        pipe.text_encoder_2 = None
        pipe.register_modules(text_encoder_2=text_encoder_2)
        facts["t5"] = "bitsandbytes NF4"
    static_qk = qk_bound(pipe.transformer) if recipe.fp8_attention_qk == "static" else None
    attention = choose_attention(recipe.attention, device, attention_shape(pipe, settings), static_qk)
    set_backend(pipe.transformer, attention.backend)
    unquantized = {name: module.weight.detach().clone() for name, module in pipe.transformer.named_modules()
                   if isinstance(module, torch.nn.Linear)} if keep_unquantized or recipe.merge_lora else {}
    if recipe.fp8:
        facts["fp8"] = quantize_fp8(pipe.transformer, device if stage else None, recipe.torchao_inductor_config)
    compile_settings.apply(recipe.inductor)  # after torchao's; the case restores the process's on release
    if stage and not recipe.offload:
        pipe.to(device)
    built = BuiltPipeline(pipe, recipe, spec, attention, facts=facts,
                          unquantized=unquantized if keep_unquantized else {})
    if recipe.hotswap:
        pipe.enable_lora_hotswap(target_rank=built.spec.target_rank)
    built.load_adapter(first or spec.pool.adapters[0])
    if recipe.merge_lora:
        built.merged = Merged(pipe.transformer, unquantized, HOTSWAP_ADAPTER)
        del unquantized  # what the merge does not keep (the Linears the slot does not reach) is freed here
        built.merged.lora_in_forward(False)
        built.lora_written()
        facts["lora"] = f"merged into the weights of {len(built.merged.layers)} layers on every swap"
    if recipe.fused_fp8_gelu:
        facts["fused_fp8"] = fuse_gelu_linears(pipe.transformer)
    if recipe.offload:
        pipe.enable_model_cpu_offload(device=_offload_device(device))
    if recipe.compiled:
        fullgraph = not recipe.offload  # the seed compiles offloaded pipelines without fullgraph
        compile_kwargs = {"fullgraph": fullgraph, "mode": recipe.compile_mode}
        if recipe.compile == "full":
            pipe.transformer.compile(**compile_kwargs)
        else:
            compat.compile_repeated_blocks(pipe.transformer, **compile_kwargs)
        facts["compile"] = f"{recipe.compile} fullgraph={fullgraph} mode={recipe.compile_mode or 'default'}"
    if recipe.compile_vae:
        facts["vae"] = compile_vae_decoder(pipe.vae)
    facts["compile_settings"] = compile_settings.in_effect(name for name, _ in recipe.inductor)  # torchao's too
    built.build_seconds = time.perf_counter() - started
    return built
