"""Every API difference between the library releases the gate supports, in one place.

The gate runs on the stacks teams upgrade *from* (the lora-fast era: diffusers 0.34, peft 0.16, transformers 4.5x)
as well as today's (diffusers 0.42, peft 0.21, transformers 5). Where those releases spell one thing differently,
the suite calls the function here, which takes the branch the installed release supports; no other module tests a
library version. Each branch is a feature of the installed library (an attribute, a constructor), not a guess from
a version string, except the tokenizers, whose constructors changed meaning with transformers 5.

This module imports no other part of the suite, so the spec, build and run stages can all use it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

FLUX_REPEATED_BLOCKS = ("FluxTransformerBlock", "FluxSingleTransformerBlock")
"""The blocks diffusers 0.35+ compiles regionally (``FluxTransformer2DModel._repeated_blocks``)."""
T5_UNK_ID = 2  # T5's vocabulary layout: <pad> 0, </s> 1, <unk> 2


def transformers_major() -> int:
    import transformers

    return int(transformers.__version__.split(".")[0])


def clip_tokenizer(vocab: dict[str, int], model_max_length: int):
    """A byte-level BPE CLIP tokenizer of ``vocab`` without merges, offline.

    transformers 5's ``CLIPTokenizer`` is backed by the tokenizers library and takes the vocabulary itself;
    transformers 4's ``CLIPTokenizer`` is the Python one and reads ``vocab.json``/``merges.txt``, so there the files
    are written and its ``CLIPTokenizerFast`` converts them (the same tokenizers pipeline transformers 5 builds)."""
    if transformers_major() >= 5:
        from transformers import CLIPTokenizer

        return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=model_max_length)
    from transformers import CLIPTokenizerFast

    with tempfile.TemporaryDirectory() as folder:
        vocab_file, merges_file = Path(folder) / "vocab.json", Path(folder) / "merges.txt"
        vocab_file.write_text(json.dumps(vocab))
        merges_file.write_text("#version: 0.2\n")  # the header line CLIP's merges file starts with; no merges
        return CLIPTokenizerFast(vocab_file=str(vocab_file), merges_file=str(merges_file),
                                 model_max_length=model_max_length)


def t5_tokenizer(pieces: list[tuple[str, float]], model_max_length: int):
    """A Unigram T5 tokenizer of ``pieces`` (``<pad>``, ``</s>``, ``<unk>`` first), without sentinel ids, offline.

    transformers 5's ``T5Tokenizer`` takes the pieces; transformers 4 reads them from a sentencepiece model (and
    needs the sentencepiece package to convert it), so there the tokenizers pipeline transformers 5 builds is built
    here and handed to ``T5TokenizerFast``."""
    if transformers_major() >= 5:
        from transformers import T5Tokenizer

        return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=model_max_length)
    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import Unigram
    from transformers import T5TokenizerFast

    backend = Tokenizer(Unigram(pieces, unk_id=T5_UNK_ID, byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
    ])
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    eos = pieces[1][0]
    backend.post_processor = processors.TemplateProcessing(
        single=["$A", eos], pair=["$A", eos, "$B", eos], special_tokens=[(eos, 1)])
    return T5TokenizerFast(tokenizer_object=backend, eos_token=eos, unk_token=pieces[T5_UNK_ID][0],
                           pad_token=pieces[0][0], extra_ids=0, model_max_length=model_max_length)


def clip_image_processor(**kwargs):
    """CLIP's PIL image processor: ``CLIPImageProcessorPil`` in transformers 5 (where ``CLIPImageProcessor`` needs
    torchvision), ``CLIPImageProcessor`` before."""
    import transformers

    return getattr(transformers, "CLIPImageProcessorPil", transformers.CLIPImageProcessor)(**kwargs)


def has_attention_backends() -> bool:
    """Whether this diffusers has attention backends (``set_attention_backend``, diffusers 0.35+)."""
    from diffusers import ModelMixin

    return hasattr(ModelMixin, "set_attention_backend")


def set_native_attention(transformer) -> None:
    """Native SDPA (``F.scaled_dot_product_attention``, torch choosing its kernel) in every attention layer:
    diffusers' ``native`` backend, or before backends existed (diffusers 0.34) Flux's SDPA processor, which is
    what that backend runs."""
    if has_attention_backends():
        transformer.set_attention_backend("native")
        return
    from diffusers.models.attention_processor import FluxAttnProcessor2_0

    transformer.set_attn_processor(FluxAttnProcessor2_0())


def compile_repeated_blocks(transformer, **compile_kwargs) -> None:
    """Regional compilation: each repeated block compiled on its own. diffusers 0.35+ has
    ``compile_repeated_blocks``; before, the same blocks are compiled here, as that method does."""
    if hasattr(transformer, "compile_repeated_blocks"):
        transformer.compile_repeated_blocks(**compile_kwargs)
        return
    blocks = [m for m in transformer.modules() if type(m).__name__ in FLUX_REPEATED_BLOCKS]
    if not blocks:
        raise ValueError(f"no {' or '.join(FLUX_REPEATED_BLOCKS)} in {type(transformer).__name__} to compile")
    for block in blocks:
        block.compile(**compile_kwargs)


@functools.cache
def hotswap_needs_lora_b_last() -> bool:
    """Whether diffusers' hot-swap loads only a state dict whose last key is a ``lora_B`` weight, measured once per
    process on a one-block Flux transformer (milliseconds): an adapter ending on a ``lora_A`` key is loaded, then
    hot-swapped onto itself.

    diffusers 0.34's ``load_lora_adapter(..., hotswap=True)`` renames the keys for peft with a stale loop variable
    (``k.endswith("lora_A.weight") or key.endswith("lora_B.weight")``, ``key`` being the state dict's last key), so
    when that last key is not a ``lora_B`` weight no ``lora_B`` key is renamed and peft refuses them all as
    unexpected keys: a file whose tensors end on a ``lora_A`` (ai-toolkit's reordered files) cannot be hot-swapped."""
    import torch
    from diffusers import FluxTransformer2DModel

    with torch.random.fork_rng(devices=[]):
        model = FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=0,
                                       attention_head_dim=8, num_attention_heads=1, joint_attention_dim=4,
                                       pooled_projection_dim=4, axes_dims_rope=(2, 2, 4))
    state = {"x_embedder.lora_A.weight": torch.ones(1, 4), "x_embedder.lora_B.weight": torch.ones(8, 1),
             "context_embedder.lora_B.weight": torch.ones(8, 1), "context_embedder.lora_A.weight": torch.ones(1, 4)}
    model.load_lora_adapter(dict(state), prefix=None, adapter_name="probe")
    try:
        model.load_lora_adapter(dict(state), prefix=None, adapter_name="probe", hotswap=True)
    except RuntimeError:
        return True
    return False


@contextlib.contextmanager
def hotswap_fixes(pipe) -> Iterator[None]:
    """Around a ``load_lora_weights(..., hotswap=True)``: where diffusers hot-swaps only a state dict ending on a
    ``lora_B`` weight (``hotswap_needs_lora_b_last``), the state dict reaches the transformer with one ``lora_B``
    weight moved last (the same tensors, alphas and metadata, in an order that release can rename); where peft
    swaps a smaller rank in eagerly (``eager_hotswap_swaps_in_smaller_rank``), it takes the padded copy. The record
    names each finding (``perf.run.recording.lora_findings``), so a user of that release knows that loading such a
    file directly fails."""
    with contextlib.ExitStack() as fixes:
        if hotswap_needs_lora_b_last():
            transformer = pipe.transformer
            fixes.enter_context(mock.patch.object(transformer, "load_lora_adapter",
                                                  _lora_b_last(transformer.load_lora_adapter)))
        if eager_hotswap_swaps_in_smaller_rank():
            fixes.enter_context(mock.patch("torch.utils.swap_tensors", side_effect=RuntimeError("padded copy")))
        yield


def _lora_b_last(load):
    """The transformer's ``load_lora_adapter`` handed a state dict that ends on a ``lora_B`` weight (moved in place:
    diffusers pops the keys it takes from the dict it is given). Both ways in reach it: a file through
    ``load_lora_weights`` and an adapter kept in memory (``perf.build.builder.CachedLora``)."""

    def lora_b_last(state, *args, **kwargs):
        if isinstance(state, dict):
            last = next((k for k in reversed(state) if k.endswith("lora_B.weight")), None)
            if last is not None:
                state[last] = state.pop(last)
        return load(state, *args, **kwargs)

    return lora_b_last


@functools.cache
def eager_hotswap_swaps_in_smaller_rank() -> bool:
    """Whether peft's hot-swap into layers padded for it (``enable_lora_hotswap``) but not compiled puts a smaller
    adapter's tensors in as they are instead of into the padded ones, measured once per process with peft alone on
    two Linears (milliseconds): padded to rank 4, hot-swapped to rank 2, the rank read back.

    peft 0.16-0.19 take ``torch.utils.swap_tensors`` whenever the model is not compiled, whatever the shapes: a layer
    whose ``lora_B`` the new adapter lacks keeps its padded (zeroed) ``lora_B`` beside the new, smaller ``lora_A``,
    and the next generation fails on the shapes (``mat1 and mat2 shapes cannot be multiplied``; the XLabs adapter on
    the tiny model). A compiled model (``swap_tensors`` refused) gets the smaller tensors copied into the padded
    ones, zeros beyond, which is what peft 0.20+ does in both cases. Where this is found, ``hotswap_fixes`` makes
    ``swap_tensors`` refuse so peft takes that path, and the record names the finding."""
    import torch
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils.hotswap import hotswap_adapter_from_state_dict, prepare_model_for_compiled_hotswap

    def model_of(rank: int):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=["0", "1"]),
                                           torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)))

    model = model_of(4)
    prepare_model_for_compiled_hotswap(model, target_rank=4)
    smaller = {k: v for k, v in model_of(2).state_dict().items() if "lora_" in k}
    hotswap_adapter_from_state_dict(model, smaller, "default", LoraConfig(r=2, lora_alpha=2, target_modules=["0", "1"]))
    return model[0].lora_A["default"].weight.shape[0] != 4  # not the padded rank any more
