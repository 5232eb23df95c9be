"""FlashAttention-4 as the suite wires it: a torch custom op in diffusers' FA4 slot, set on every attention
processor without diffusers' hub checks. CPU CI has no FA4, so a stand-in ``flash_attn.cute`` (SDPA, in FA4's
layout and return convention) takes the kernel's place: everything but the CUDA kernel itself is exercised."""

from __future__ import annotations

import dataclasses
import importlib.machinery
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from diffusers import FluxTransformer2DModel
from diffusers.models.attention_dispatch import dispatch_attention_fn

from perf.build.attention import FA4_BACKEND, fa4_installed, set_backend
from perf.spec.models import CONFIGS, transformer_step_inputs
from perf.spec.profiles import ActiveProfile, DeviceInfo, get_profile
from perf.spec.recipes import get_recipe, unsupported_reason

CALLS: list[tuple[int, ...]] = []  # shapes the stand-in kernel saw


def _stand_in_flash_attn_func(q, k, v, softmax_scale=None):
    """FA4's signature and layout: (batch, seq, heads, head_dim) in, (out, lse) back; like the CuTe DSL, it
    cannot be traced by dynamo (a graph break, which ``fullgraph=True`` refuses)."""
    torch._dynamo.graph_break()
    CALLS.append(tuple(q.shape))
    out = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)), scale=softmax_scale)
    return out.transpose(1, 2), None


def _module(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
    module.__path__ = []
    module.__dict__.update(attrs)
    return module


@pytest.fixture(scope="module")
def stand_in_fa4():
    cute = _module("flash_attn.cute", flash_attn_func=_stand_in_flash_attn_func)
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "flash_attn", _module("flash_attn", cute=cute))
        patch.setitem(sys.modules, "flash_attn.cute", cute)
        yield


def _qkv(shape=(1, 40, 2, 16)):
    generator = torch.Generator().manual_seed(0)
    return tuple(torch.randn(shape, generator=generator) for _ in range(3))


@pytest.fixture(scope="module")
def fa4_transformer(stand_in_fa4):
    """A tiny FLUX transformer switched to FA4 (which registers the backend), its inputs and its SDPA output."""
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(**CONFIGS["tiny"]["transformer"]).eval()
    inputs = transformer_step_inputs(CONFIGS["tiny"]["transformer"], 16, 8, dtype=torch.float32)
    with torch.inference_mode():
        expected = transformer(**inputs)[0]
    set_backend(transformer, FA4_BACKEND)  # no `kernels` package, no hub: the local kernel is used
    return transformer, inputs, expected


def test_fa4_is_reported_missing_without_its_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # not importable, whatever this machine has
    assert not fa4_installed()


def test_fa4_row_skips_with_its_reason_off_hopper_or_without_the_package(cpu_profile, monkeypatch):
    monkeypatch.setattr("perf.build.attention.fa4_installed", lambda: False)
    attention_only = dataclasses.replace(get_recipe("optimized_fa4"), fp8=False)
    assert "Hopper" in unsupported_reason(attention_only, cpu_profile)
    hopper = ActiveProfile(get_profile("h100"), DeviceInfo("NVIDIA H100 80GB HBM3", "cuda", 79.2, (9, 0)), False)
    assert "FlashAttention-4 is not installed" in unsupported_reason(attention_only, hopper)


def test_the_stand_in_breaks_a_full_graph_as_the_cute_dsl_does():
    """Negative control of the test below: called bare, the kernel is refused by ``fullgraph=True``."""
    compiled = torch.compile(lambda *t: _stand_in_flash_attn_func(*t)[0], fullgraph=True, backend="aot_eager")
    with pytest.raises(torch._dynamo.exc.Unsupported):
        compiled(*_qkv())


def test_every_attention_processor_of_a_flux_transformer_gets_fa4(fa4_transformer):
    transformer, inputs, expected = fa4_transformer
    assert fa4_installed()
    processors = [m.processor for m in transformer.modules() if hasattr(m, "processor")]
    assert processors and all(p._attention_backend == FA4_BACKEND for p in processors)
    CALLS.clear()
    with torch.inference_mode():
        got = transformer(**inputs)[0]
    assert len(CALLS) == transformer.config.num_layers + transformer.config.num_single_layers
    torch.testing.assert_close(got, expected)


def test_fa4_backend_computes_attention_through_the_kernel(fa4_transformer):
    q, k, v = _qkv()
    CALLS.clear()
    out = dispatch_attention_fn(q, k, v, backend=FA4_BACKEND)
    assert len(CALLS) == 1 and CALLS[0] == q.shape
    torch.testing.assert_close(out, dispatch_attention_fn(q, k, v, backend="native"))


def test_fa4_stays_inside_one_full_graph(fa4_transformer):
    """A custom op, not Python that dynamo would trace into: ``fullgraph=True`` compiles it without a break."""
    q, k, v = _qkv()
    compiled = torch.compile(lambda *t: dispatch_attention_fn(*t, backend=FA4_BACKEND), fullgraph=True,
                             backend="aot_eager")
    torch.testing.assert_close(compiled(q, k, v), dispatch_attention_fn(q, k, v, backend="native"))
