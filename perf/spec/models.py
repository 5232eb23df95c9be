"""Model sources: a real FLUX.1-dev (hub id or local folder) or the embedded synthetic FLUX-architecture model.

No hub is reachable here, so the suite ships FLUX.1-dev-shaped models with seeded random weights: speed and
memory do not depend on weight values. ``synthetic-tiny`` (CPU) is saved in diffusers format under the cache
folder and loaded back with ``FluxPipeline.from_pretrained``, the same path a real model takes.
``synthetic-full`` (FLUX.1-dev's real sizes) is built directly on the GPU: writing 33 GB to disk and reading it
back would cost more device time than the whole row it serves.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from perf.build import compat
from perf.errors import SuiteError
from perf.spec.cache import build_once

SYNTHETIC_SEED = 0
SYNTHETIC_VERSION = 2  # bump when the synthetic configs change, so stale caches are rebuilt

# FLUX.1-dev's component configs (black-forest-labs/FLUX.1-dev), and a tiny model of the same architecture.
# The tiny T5 is as small as NF4 on a CPU allows: with AVX512-BF16, bitsandbytes repacks every 4-bit Linear
# for its CPU kernel (``_convert_weight_packed_for_cpu``), which needs in-features a multiple of the 64-value
# quantization block and out-features a multiple of 32. So d_model, num_heads * d_kv and d_ff are multiples of
# 64, and the transformer's joint_attention_dim follows d_model (it reads T5's output).
CONFIGS: dict[str, dict[str, dict[str, Any]]] = {
    "full": {
        "transformer": dict(
            patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
            num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
            axes_dims_rope=(16, 56, 56),
        ),
        "vae": dict(
            in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
            up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[128, 256, 512, 512], layers_per_block=2,
            latent_channels=16, norm_num_groups=32, sample_size=1024, scaling_factor=0.3611, shift_factor=0.1159,
            use_quant_conv=False, use_post_quant_conv=False,
        ),
        "clip": dict(
            hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
            projection_dim=768, max_position_embeddings=77, hidden_act="quick_gelu",
        ),
        "t5": dict(
            d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64, feed_forward_proj="gated-gelu",
            relative_attention_num_buckets=32, is_gated_act=True, dense_act_fn="gelu_new",
        ),
    },
    "tiny": {
        "transformer": dict(
            patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=64, pooled_projection_dim=32, guidance_embeds=True,
            axes_dims_rope=(4, 4, 8),
        ),
        "vae": dict(
            in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
            up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[8, 16], layers_per_block=1,
            latent_channels=4, norm_num_groups=4, sample_size=64, scaling_factor=1.5035, shift_factor=0.0609,
            use_quant_conv=False, use_post_quant_conv=False,
        ),
        "clip": dict(
            hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, projection_dim=32,
            max_position_embeddings=77, hidden_act="quick_gelu",
        ),
        "t5": dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, feed_forward_proj="gated-gelu",
                   relative_attention_num_buckets=8, is_gated_act=True, dense_act_fn="gelu_new"),
    },
}
# FLUX.1-dev's scheduler settings.
SCHEDULER_CONFIG = dict(
    base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096, max_shift=1.15, num_train_timesteps=1000,
    shift=3.0, use_dynamic_shifting=True,
)
FULL_VOCAB = {"clip": 49408, "t5": 32128}


@dataclass(frozen=True)
class ModelSource:
    """Where the pipeline comes from. ``label`` goes into every record and benchmark."""

    kind: str  # "synthetic" or "pretrained"
    size: str  # "tiny" or "full": picks the generation settings
    location: str  # "synthetic-tiny", "synthetic-full", a hub id or a local folder

    @property
    def label(self) -> str:
        return self.location if self.kind == "synthetic" else f"pretrained:{self.location}"


def resolve_source(spec: str | None, default_size: str) -> ModelSource:
    """``None`` -> the profile's embedded synthetic model; ``synthetic-tiny``/``-full``; else an id or path."""
    spec = spec or f"synthetic-{default_size}"
    if spec in ("synthetic-tiny", "synthetic-full"):
        return ModelSource("synthetic", spec.removeprefix("synthetic-"), spec)
    # A hub id is "owner/name"; anything else is a folder.
    looks_like_path = spec.startswith((".", "/", "~")) or spec.count("/") != 1
    path = Path(spec).expanduser()
    if path.exists() or looks_like_path:
        if not path.is_dir():
            raise SuiteError(f"--model {spec}: no such folder; give a FLUX.1-dev diffusers folder or a hub id")
        if not (path / "model_index.json").is_file():
            raise SuiteError(
                f"--model {spec}: not a diffusers pipeline folder (no model_index.json); give the folder that "
                "holds model_index.json (FluxPipeline.save_pretrained's output) or a hub id"
            )
        try:
            index = json.loads((path / "model_index.json").read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SuiteError(
                f"--model {spec}: model_index.json is not valid JSON ({exc}); copy the folder again"
            ) from None
        if index.get("_class_name") != "FluxPipeline":
            raise SuiteError(
                f"--model {spec}: is a {index.get('_class_name')!r}, not a FluxPipeline; give a FLUX.1-dev "
                "diffusers folder or a hub id"
            )
        return ModelSource("pretrained", "full", str(path.resolve()))
    if hub_file(spec, "model_index.json") is None:
        from huggingface_hub.constants import HF_HUB_CACHE

        raise SuiteError(
            f"--model {spec}: no such folder, and not in the local Hugging Face cache ({HF_HUB_CACHE}); the suite "
            f"loads hub models from the cache: download it first (hf download {spec}) or give a local FLUX.1-dev "
            "diffusers folder"
        )
    return ModelSource("pretrained", "full", spec)


def hub_file(repo_id: str, filename: str) -> Path | None:
    """``filename`` of hub model ``repo_id`` in the local Hugging Face cache, or None; never the network."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename)
    return Path(found) if isinstance(found, str) else None


def transformer_step_inputs(config: dict[str, Any], image_tokens: int, text_tokens: int, device: str = "cpu",
                            dtype: torch.dtype = torch.bfloat16) -> dict[str, Any]:
    """Random inputs of one denoising step (batch 1) for a FLUX transformer of ``config``, for probes and tests
    that call the transformer alone."""
    kw = {"device": device, "dtype": dtype}
    return {
        "hidden_states": torch.randn(1, image_tokens, config["in_channels"], **kw),
        "encoder_hidden_states": torch.randn(1, text_tokens, config["joint_attention_dim"], **kw),
        "pooled_projections": torch.randn(1, config["pooled_projection_dim"], **kw),
        "timestep": torch.tensor([0.5], **kw),
        "guidance": torch.tensor([3.5], **kw),
        "img_ids": torch.zeros(image_tokens, 3, device=device),
        "txt_ids": torch.zeros(text_tokens, 3, device=device),
        "return_dict": False,
    }


def synthetic_tokenizers():
    """CLIP and T5 tokenizers built offline: byte-level characters, no merges. Real ids, no hub."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in bytes_to_unicode().values():
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -1.0)]
    pieces += [(chr(c), -2.0) for c in range(33, 127)]
    return compat.clip_tokenizer(vocab, model_max_length=77), compat.t5_tokenizer(pieces, model_max_length=512)


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_synthetic_pipeline(
    size: str, dtype: torch.dtype, device: str | torch.device = "cpu", init_device: str | torch.device | None = None
):
    """A FluxPipeline of FLUX.1-dev's architecture with seeded random weights (default inits: never zeros).

    Each component is initialized on ``init_device`` (default ``device``) and moved to ``device`` before the next
    one is made: random init of 12 B parameters takes seconds on a GPU and minutes on a CPU, so a pipeline meant
    for the CPU (offload, quantize-then-place on a 24 GB card) is still made on the GPU, one component at a
    time, and never needs more GPU memory than its largest component."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    cfg = CONFIGS[size]
    clip_tok, t5_tok = synthetic_tokenizers()
    clip_vocab = FULL_VOCAB["clip"] if size == "full" else len(clip_tok)
    t5_vocab = FULL_VOCAB["t5"] if size == "full" else len(t5_tok)
    init_device = init_device or device

    def made(seed_offset: int, make):
        with _default_dtype(dtype), torch.device(init_device):
            torch.manual_seed(SYNTHETIC_SEED + seed_offset)
            return make().to(device)

    transformer = made(0, lambda: FluxTransformer2DModel(**cfg["transformer"]))
    vae = made(1, lambda: AutoencoderKL(**cfg["vae"]))
    text_encoder = made(2, lambda: CLIPTextModel(
        CLIPTextConfig(vocab_size=clip_vocab, bos_token_id=0, eos_token_id=1, pad_token_id=1, **cfg["clip"])
    ))
    text_encoder_2 = made(3, lambda: T5EncoderModel(T5Config(vocab_size=t5_vocab, **cfg["t5"])))
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG), vae=vae, text_encoder=text_encoder,
        tokenizer=clip_tok, text_encoder_2=text_encoder_2, tokenizer_2=t5_tok, transformer=transformer,
    )
    return pipe.to(dtype=dtype)


def synthetic_tiny_folder(cache: Path) -> Path:
    """The tiny synthetic model in diffusers format under the cache, written once (atomically)."""
    return build_once(
        cache / "models" / f"synthetic-tiny-v{SYNTHETIC_VERSION}", "model_index.json",
        lambda staging: build_synthetic_pipeline("tiny", torch.float32).save_pretrained(staging),
    )


def load_pipeline(source: ModelSource, dtype: torch.dtype, device: str, cache: Path, staged: bool = False):
    """The pipeline of ``source`` in ``dtype`` on ``device``; with ``staged``, left in CPU memory for the builder
    to quantize and place part by part (a 24 GB card cannot hold the bf16 pipeline at once)."""
    from diffusers import FluxPipeline

    if source.location == "synthetic-full":
        return build_synthetic_pipeline("full", dtype, "cpu" if staged else device, init_device=device)
    synthetic = source.location == "synthetic-tiny"
    where = synthetic_tiny_folder(cache) if synthetic else source.location
    # The synthetic tokenizers are made, not read back: a folder saved under transformers 5 (tokenizer.json only)
    # is then loadable under transformers 4 too, whose T5Tokenizer would need sentencepiece files, and whose
    # diffusers refuses a fast tokenizer passed where the folder names the Python one (perf.build.compat).
    names = ("tokenizer", "tokenizer_2") if synthetic else ()
    try:
        pipe = FluxPipeline.from_pretrained(where, torch_dtype=dtype, **dict.fromkeys(names))
        pipe.register_modules(**dict(zip(names, synthetic_tokenizers() if synthetic else (), strict=True)))
    except (OSError, ValueError) as exc:
        raise SuiteError(
            f"could not load the Flux pipeline {source.location!r}: {exc}. Without network access, give a local "
            "folder or a model already in the Hugging Face cache (HF_HOME)"
        ) from exc
    return pipe if staged else pipe.to(device)
