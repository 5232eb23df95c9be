"""perf.build.compat: each branch for the releases the gate supports is reached. The main venv has today's libraries
(transformers 5, diffusers 0.42, peft 0.21); the older releases' side is reached with fakes here, and for real by
CI's floor step (constraints/floor-lora-fast.txt)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import transformers
from diffusers.models.attention_processor import FluxAttnProcessor2_0

from perf.build import attention, compat
from perf.spec.models import synthetic_tokenizers


@pytest.fixture
def transformers_4(monkeypatch):
    monkeypatch.setattr(compat, "transformers_major", lambda: 4)


def test_tokenizers_on_transformers_5_take_the_vocabulary_itself():
    clip, t5 = synthetic_tokenizers()
    assert (type(clip).__name__, type(t5).__name__) == ("CLIPTokenizer", "T5Tokenizer")
    assert clip("a cat")["input_ids"] == [0, 131, 134, 130, 169, 1]  # bos, a</w> c a t</w>, eos
    assert t5("a cat")["input_ids"] == [3, 68, 3, 70, 68, 87, 1]  # ▁ a ▁ c a t </s>


def test_clip_tokenizer_on_transformers_4_is_converted_from_vocab_and_merges_files(transformers_4, monkeypatch):
    seen = {}

    def fast(vocab_file, merges_file, model_max_length):
        seen.update(vocab=json.loads(Path(vocab_file).read_text()), merges=Path(merges_file).read_text(),
                    length=model_max_length)
        return "clip"

    monkeypatch.setattr(transformers, "CLIPTokenizerFast", fast, raising=False)
    assert compat.clip_tokenizer({"<|startoftext|>": 0, "a</w>": 1}, model_max_length=77) == "clip"
    assert seen == {"vocab": {"<|startoftext|>": 0, "a</w>": 1}, "merges": "#version: 0.2\n", "length": 77}


def test_t5_tokenizer_on_transformers_4_gets_transformers_5s_tokenizers_pipeline(transformers_4, monkeypatch):
    """The pipeline handed to T5TokenizerFast encodes as transformers 5's T5Tokenizer does: same ids."""
    monkeypatch.setattr(transformers, "T5TokenizerFast", lambda tokenizer_object, **kw: (tokenizer_object, kw),
                        raising=False)
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -1.0)] + [(chr(c), -2.0) for c in range(33, 127)]
    backend, kwargs = compat.t5_tokenizer(pieces, model_max_length=512)
    assert backend.encode("a cat").ids == [3, 68, 3, 70, 68, 87, 1]
    assert kwargs == {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>", "extra_ids": 0,
                      "model_max_length": 512}


def test_clip_image_processor_is_the_pil_one_where_it_exists_else_clip_image_processor(monkeypatch):
    assert type(compat.clip_image_processor()).__name__ == "CLIPImageProcessorPil"
    monkeypatch.setitem(sys.modules, "transformers", SimpleNamespace(CLIPImageProcessor=lambda **kw: ("4", kw)))
    assert compat.clip_image_processor(size=8) == ("4", {"size": 8})


class Recorder:
    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return lambda *args, **kwargs: self.calls.append((name, args, kwargs))


def test_native_attention_is_the_native_backend_or_before_backends_fluxs_sdpa_processor(monkeypatch):
    transformer = Recorder()
    compat.set_native_attention(transformer)
    monkeypatch.setattr(compat, "has_attention_backends", lambda: False)
    compat.set_native_attention(transformer)
    (first, args, _), (second, (processor,), _) = transformer.calls
    assert (first, args, second) == ("set_attention_backend", ("native",), "set_attn_processor")
    assert type(processor) is type(FluxAttnProcessor2_0())  # diffusers 0.42 makes its successor, FluxAttnProcessor


def test_without_backends_fa3_runs_sdpa_saying_why_and_kernels_asked_by_name_are_refused(monkeypatch):
    monkeypatch.setattr(compat, "has_attention_backends", lambda: False)
    choice = attention.choose_attention("fa3", "cuda", (1, 8, 2, 16))
    assert choice.backend == "native"
    assert "fa3 not used: diffusers" in choice.kernel and "set_attention_backend, diffusers 0.35+" in choice.kernel
    for named in ("fa4", "fa3_fp8"):
        with pytest.raises(attention.AttentionCheckFailed, match=f"{named} cannot be set: diffusers"):
            attention.choose_attention(named, "cuda", (1, 8, 2, 16))
    assert attention.choose_attention("sdpa", "cuda", (1, 8, 2, 16)).backend == "native"


def test_regional_compile_without_compile_repeated_blocks_compiles_each_flux_block():
    compiled = []

    def block(name: str):
        return type(name, (torch.nn.Module,), {"compile": lambda self, **kw: compiled.append((name, kw))})()

    transformer = torch.nn.Module()
    transformer.blocks = torch.nn.ModuleList([block("FluxTransformerBlock"), block("FluxSingleTransformerBlock"),
                                              block("Other")])
    compat.compile_repeated_blocks(transformer, fullgraph=True)
    assert compiled == [(name, {"fullgraph": True}) for name in ("FluxTransformerBlock", "FluxSingleTransformerBlock")]
    with pytest.raises(ValueError, match="no FluxTransformerBlock or FluxSingleTransformerBlock"):
        compat.compile_repeated_blocks(torch.nn.Linear(1, 1))


def fake_pipe(state: dict, seen: list):
    """A pipeline whose transformer records the key order it is handed and the swap_tensors in effect."""
    def load_lora_adapter(state_dict, adapter_name, hotswap):
        seen.append((list(state_dict), torch.utils.swap_tensors))

    transformer = SimpleNamespace(load_lora_adapter=load_lora_adapter)

    def load_lora_weights(path, adapter_name, hotswap):
        pipe.transformer.load_lora_adapter(dict(state), adapter_name=adapter_name, hotswap=hotswap)

    pipe = SimpleNamespace(transformer=transformer, load_lora_weights=load_lora_weights)
    return pipe


@pytest.mark.parametrize("needs_lora_b_last", [False, True])
@pytest.mark.parametrize("swaps_in_smaller", [False, True])
@pytest.mark.parametrize("from_memory", [False, True])
def test_hotswap_fixes_work_around_only_the_bugs_found(monkeypatch, needs_lora_b_last, swaps_in_smaller,
                                                       from_memory):
    """From a file (``load_lora_weights``) or from memory (the transformer's ``load_lora_adapter``, as a server's
    cached adapter is loaded), the transformer gets the order and the copy path each release needs."""
    monkeypatch.setattr(compat, "hotswap_needs_lora_b_last", lambda: needs_lora_b_last)
    monkeypatch.setattr(compat, "eager_hotswap_swaps_in_smaller_rank", lambda: swaps_in_smaller)
    state = {"a.lora_A.weight": 0, "a.lora_B.weight": 0, "b.lora_B.weight": 0, "b.lora_A.weight": 0}
    seen = []
    pipe = fake_pipe(state, seen)
    with compat.hotswap_fixes(pipe):
        if from_memory:
            pipe.transformer.load_lora_adapter(dict(state), adapter_name="default_0", hotswap=True)
        else:
            pipe.load_lora_weights("x.safetensors", adapter_name="default_0", hotswap=True)
    [(keys, swap_tensors)] = seen
    assert keys[-1] == ("b.lora_B.weight" if needs_lora_b_last else "b.lora_A.weight")
    assert sorted(keys) == sorted(state)
    refuses = swap_tensors is not torch.utils.swap_tensors or swaps_in_smaller
    if swaps_in_smaller:
        with pytest.raises(RuntimeError):
            swap_tensors(torch.zeros(1), torch.zeros(1))
    assert refuses == swaps_in_smaller
    assert torch.utils.swap_tensors(torch.zeros(1), torch.zeros(2)) is None  # restored after the call


def test_probes_find_neither_bug_on_todays_diffusers_and_peft():
    """Measured True with diffusers 0.34.0 (the first) and peft 0.16.0/0.17.1 (the second) by the floor step."""
    assert not compat.hotswap_needs_lora_b_last()
    assert not compat.eager_hotswap_swaps_in_smaller_rank()
