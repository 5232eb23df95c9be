"""FlashAttention-3, bf16 and FP8, as the suite wires it: a torch custom op in diffusers' FA3 slots, checked against
float32 before use. CPU CI has no FA3, so a stand-in ``fa3_fwd_interface`` takes the kernel's place: FA3's
signature, layout and FP8 numerics (q, k, v dequantized with their (batch, head) descales, softmax probabilities
rounded to e4m3, bf16 out), and a variant with each descale bug the FP8 check must catch."""

from __future__ import annotations

import dataclasses
import importlib.machinery
import sys
import types

import pytest
import torch
from diffusers.models.attention_dispatch import _AttentionBackendRegistry, dispatch_attention_fn

from perf.build.attention import (
    E4M3_MAX,
    FA3_BACKEND,
    FA3_FP8_BACKEND,
    MAX_REL_ERROR_FP8,
    QK_NORMS,
    AttentionCheckFailed,
    check_inputs,
    choose_attention,
    fa3_installed,
    fa3_module,
    qk_bound,
    quantize_e4m3_bounded,
    reference,
    rel_error,
)
from perf.build.builder import build_pipeline
from perf.spec.models import transformer_step_inputs
from perf.spec.profiles import ActiveProfile, DeviceInfo, get_profile
from perf.spec.recipes import get_recipe, unsupported_reason

SHAPE = (1, 64, 4, 16)  # (batch, seq, heads, head_dim); four heads, so a scale read for the wrong one shows
HOPPER = DeviceInfo("NVIDIA H100 80GB HBM3", "cuda", 79.2, (9, 0))
DESCALE_BUGS = {
    "descale omitted": lambda descale: None,
    "descale of another head": lambda descale: descale.flip(-1),
    "descale of another batch element": lambda descale: descale.flip(0),
}
CALLS: list[dict] = []  # what the stand-in kernel was given


def _dequantize(x: torch.Tensor, descale: torch.Tensor | None) -> torch.Tensor:
    return x.float() if descale is None else x.float() * descale[:, None, :, None]


def _stand_in(descale_bug=None):
    """FA3's ``flash_attn_func``: (batch, seq, heads, head_dim) in, a tensor out (fa3-fwd's convention); FP8 in,
    bf16 out. Like a kernel's Python that dynamo cannot trace, it breaks a graph (``fullgraph=True`` refuses)."""

    def flash_attn_func(q, k, v, softmax_scale=None, causal=False, qv=None, q_descale=None, k_descale=None,
                        v_descale=None, **_):
        torch._dynamo.graph_break()
        CALLS.append({"dtype": q.dtype, "descales": [d if d is None else (d.shape, d.dtype)
                                                     for d in (q_descale, k_descale, v_descale)]})
        if q.dtype != torch.float8_e4m3fn:
            return reference(q, k, v).to(q.dtype)
        descales = [descale_bug(d) if descale_bug else d for d in (q_descale, k_descale, v_descale)]
        q, k, v = (_dequantize(t, d).transpose(1, 2) for t, d in zip((q, k, v), descales, strict=True))
        scores = q @ k.transpose(-1, -2) * softmax_scale
        p = torch.exp(scores - scores.amax(-1, keepdim=True))
        out = (p.to(torch.float8_e4m3fn).float() @ v) / p.sum(-1, keepdim=True)
        return out.transpose(1, 2).to(torch.bfloat16)

    return flash_attn_func


def _module(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    module.__dict__.update(attrs)
    return module


@pytest.fixture(autouse=True)
def keep_active_backend():
    """``set_attention_backend`` also sets diffusers' process-wide default; later tests must not inherit FA3."""
    active = _AttentionBackendRegistry._active_backend
    yield
    _AttentionBackendRegistry._active_backend = active


@pytest.fixture
def install_fa3(monkeypatch):
    """Install a stand-in ``fa3_fwd_interface`` (the official package hidden, whatever this machine has)."""

    def install(flash_attn_func=None) -> None:
        monkeypatch.setitem(sys.modules, "flash_attn_interface", None)
        stand_in = _module("fa3_fwd_interface", flash_attn_func=flash_attn_func or _stand_in())
        monkeypatch.setitem(sys.modules, "fa3_fwd_interface", stand_in)
        CALLS.clear()

    return install


@pytest.fixture
def no_fa3(monkeypatch):
    for name in ("flash_attn_interface", "fa3_fwd_interface"):
        monkeypatch.setitem(sys.modules, name, None)


# --- without FA3 -------------------------------------------------------------------------------------------------


def test_fa3_is_reported_missing_without_either_package(no_fa3):
    assert not fa3_installed() and fa3_module() is None


def test_fa3_row_falls_back_without_fa3(no_fa3):
    assert choose_attention("fa3", "cpu", SHAPE).backend == "native"


def test_fp8_attention_is_refused_not_replaced_without_fa3(no_fa3):
    with pytest.raises(AttentionCheckFailed, match=r"not installed \(pip install '\.\[fa3\]'\)"):
        choose_attention("fa3_fp8", "cpu", SHAPE)


@pytest.mark.parametrize("row", ["optimized_fa3_fp8attn", "optimized_fast"])
def test_fp8_attention_rows_skip_with_the_install_hint_without_fa3(row, cpu_profile, monkeypatch):
    monkeypatch.setattr("perf.build.attention.fa3_installed", lambda: False)
    attention_only = dataclasses.replace(get_recipe(row), fp8=False)  # FP8 weights need torchao, not here
    assert "Hopper" in unsupported_reason(attention_only, cpu_profile)
    hopper = ActiveProfile(get_profile("h100"), HOPPER, False)
    assert "FlashAttention-3, which is not installed (pip install '.[fa3]')" in unsupported_reason(
        attention_only, hopper
    )
    monkeypatch.setattr("perf.build.attention.fa3_installed", lambda: True)
    assert unsupported_reason(attention_only, hopper) is None


# --- with the stand-in -------------------------------------------------------------------------------------------


def test_fa3_row_runs_the_installed_fa3_after_its_check(install_fa3):
    install_fa3()
    choice = choose_attention("fa3", "cpu", SHAPE)
    assert choice.backend == FA3_BACKEND and choice.kernel == "FlashAttention-3 (fa3_fwd_interface)"
    assert choice.rel_errors[FA3_BACKEND] < 1e-2
    assert CALLS and CALLS[0]["dtype"] == torch.bfloat16 and CALLS[0]["descales"] == [None, None, None]


def test_fa3_that_fails_its_check_is_not_used_and_the_record_says_why(install_fa3):
    install_fa3(lambda q, k, v, **_: torch.zeros_like(q))  # a broken kernel
    choice = choose_attention("fa3", "cpu", SHAPE)
    assert choice.backend == "native"
    assert "FlashAttention-3 not used, it failed its check: _flash_3: relative error 1" in choice.kernel


def test_fp8_attention_quantizes_per_batch_and_head_and_passes_its_check(install_fa3):
    install_fa3()
    choice = choose_attention("fa3_fp8", "cpu", SHAPE)
    assert choice.backend == FA3_FP8_BACKEND and "FP8 e4m3 (fa3_fwd_interface)" in choice.kernel
    assert 0.01 < choice.rel_errors[FA3_FP8_BACKEND] < MAX_REL_ERROR_FP8  # FP8-sized, yet within the bound
    batch, _, heads, _ = SHAPE
    descale = (torch.Size([max(batch, 2), heads]), torch.float32)  # the check runs two batch elements
    assert CALLS[0] == {"dtype": torch.float8_e4m3fn, "descales": [descale] * 3}


@pytest.mark.parametrize("bug", DESCALE_BUGS)
def test_fp8_check_rejects_a_kernel_with_a_descale_bug(bug, install_fa3):
    """Negative controls of the FP8 check: each bug lands far above ``MAX_REL_ERROR_FP8`` (0.69 and up here)."""
    install_fa3(_stand_in(DESCALE_BUGS[bug]))
    with pytest.raises(AttentionCheckFailed, match="relative error"):
        choose_attention("fa3_fp8", "cpu", SHAPE)


def test_the_stand_in_breaks_a_full_graph_when_called_bare():
    """Negative control of the tests below: without the custom op, ``fullgraph=True`` refuses the kernel."""
    compiled = torch.compile(_stand_in(), fullgraph=True, backend="aot_eager")
    with pytest.raises(torch._dynamo.exc.Unsupported):
        compiled(*check_inputs(SHAPE, "cpu"))


@pytest.mark.parametrize("backend", [FA3_BACKEND, FA3_FP8_BACKEND])
def test_fa3_stays_inside_one_full_graph_with_fp8_quantization_beside_it(backend, install_fa3):
    """The kernel is one opaque node of the graph; FP8's amax and e4m3 cast are ordinary nodes around it, which
    Inductor can fuse into the ops that produce q, k and v."""
    install_fa3()
    graphs = []

    def capture(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    q, k, v = check_inputs(SHAPE, "cpu")
    eager = dispatch_attention_fn(q, k, v, backend=backend)
    compiled = torch.compile(lambda *t: dispatch_attention_fn(*t, backend=backend), fullgraph=True, backend=capture)
    torch.testing.assert_close(compiled(q, k, v), eager)
    assert len(graphs) == 1
    code = graphs[0].code
    assert code.count("flux_lora_perf.flash_attn_3") == 1
    assert code.count("float8_e4m3fn") == (3 if backend == FA3_FP8_BACKEND else 0)
    assert rel_error(eager, reference(q, k, v)) < (MAX_REL_ERROR_FP8 if backend == FA3_FP8_BACKEND else 1e-2)


# --- the recipe fields reach the builder -----------------------------------------------------------------------


def test_fp8_attention_and_compiled_vae_fields_reach_the_pipeline(install_fa3, tiny_spec):
    install_fa3()
    recipe = dataclasses.replace(get_recipe("optimized_fast"), fp8=False, compile="none")  # no FP8 weights here
    assert recipe.attention == "fa3_fp8" and recipe.compile_vae
    built = build_pipeline(tiny_spec, recipe)
    processors = [m.processor for m in built.pipe.transformer.modules() if hasattr(m, "processor")]
    assert processors and all(p._attention_backend == FA3_FP8_BACKEND for p in processors)
    assert built.attention.backend == FA3_FP8_BACKEND

    decoder = built.pipe.vae.decoder
    assert decoder._compiled_call_impl is not None and "compiled fullgraph=True" in built.facts["vae"]
    assert decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    latent = torch.randn(1, built.pipe.vae.config.latent_channels, 8, 8)
    assert torch._dynamo.explain(decoder.forward)(latent).graph_break_count == 0  # fullgraph=True will hold


def test_a_recipe_without_compile_vae_leaves_the_vae_eager(tiny_spec):
    """Negative control of the test above: the compiled VAE comes from the field, not from the builder."""
    built = build_pipeline(tiny_spec, get_recipe("hotswap_eager"))
    assert built.pipe.vae.decoder._compiled_call_impl is None and "vae" not in built.facts


# --- FP8 attention with static q/k scales (issue 25, lead 2) ----------------------------------------------------


def _flux_qk_maxima(transformer: torch.nn.Module, monkeypatch) -> list[float]:
    """The largest |q| and |k| each attention call of ``transformer`` received (after its RMSNorm and rope)."""
    from diffusers.models.transformers import transformer_flux

    seen = []
    dispatch = transformer_flux.dispatch_attention_fn

    def recording(query, key, value, *args, **kwargs):
        seen.append(float(torch.maximum(query.abs().max(), key.abs().max())))
        return dispatch(query, key, value, *args, **kwargs)

    monkeypatch.setattr(transformer_flux, "dispatch_attention_fn", recording)
    return seen


def test_no_q_or_k_of_a_flux_transformer_passes_the_bound_of_its_norm_weights(tiny_spec, monkeypatch):
    """``qk_bound`` caps every q and k element FLUX feeds attention, whatever the input: here norm weights drawn
    from 0.1-3, inputs scaled up 1000x, rope at random positions, and the pool's first adapter (every
    projection) changing what reaches the norms."""
    built = build_pipeline(tiny_spec, get_recipe("hotswap_eager"))
    transformer = built.pipe.transformer
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, module in transformer.named_modules():
            if name.rsplit(".", 1)[-1] in QK_NORMS:
                module.weight.copy_(0.1 + 2.9 * torch.rand(module.weight.shape, generator=generator))
    bound = qk_bound(transformer)
    seen = _flux_qk_maxima(transformer, monkeypatch)
    inputs = transformer_step_inputs(dict(transformer.config), 64, 16, dtype=transformer.dtype)
    inputs["img_ids"] = torch.randint(0, 64, (64, 3), generator=generator).float()
    with torch.no_grad():
        for scale in (1.0, 1000.0):
            transformer(**{k: v * scale if k in ("hidden_states", "encoder_hidden_states") else v
                           for k, v in inputs.items()})
    assert seen and max(seen) <= bound
    assert max(seen) > bound / 4  # a bound, not a guess far above what arrives


def test_bounded_e4m3_keeps_e4m3_precision_and_hands_fa3_a_constant_descale():
    x = torch.randn(2, 32, 3, 16) * 3
    bound = float(x.abs().max())
    quantized, descale = quantize_e4m3_bounded(x, bound)
    assert quantized.dtype == torch.float8_e4m3fn and descale.shape == (2, 3)
    assert torch.all(descale == bound / E4M3_MAX)
    assert float(quantized.float().abs().max()) == E4M3_MAX  # the bound maps to e4m3's largest value
    back = quantized.float() * descale[:, None, :, None]
    normal = x.abs() > bound * 2.0**-6
    assert float(((back - x).abs() / x.abs())[normal].max()) <= 2.0**-4  # e4m3's 3 mantissa bits


def test_static_qk_attention_passes_its_check_and_reaches_the_builder(install_fa3, tiny_spec):
    install_fa3()
    recipe = dataclasses.replace(get_recipe("optimized_fast_static_qk"), fp8=False, compile="none",
                                 compile_vae=False, compile_mode=None)  # the tiny model on CPU: no FP8 weights
    built = build_pipeline(tiny_spec, recipe)
    bound = qk_bound(built.pipe.transformer)
    assert f"q and k at one static scale (bound {bound:.4g}" in built.attention.kernel
    assert 0.01 < built.attention.rel_errors[FA3_FP8_BACKEND] < MAX_REL_ERROR_FP8
    CALLS.clear()
    built.generate()
    descales = [call["descales"] for call in CALLS]
    assert descales and all(d[0] == d[1] == (torch.Size([1, built.pipe.transformer.config.num_attention_heads]),
                                             torch.float32) for d in descales)
    dynamic = build_pipeline(tiny_spec, dataclasses.replace(recipe, fp8_attention_qk="dynamic"))
    assert "dynamic per-(batch, head) amax scales" in dynamic.attention.kernel  # the field, not the default


def test_static_qk_scales_need_fp8_attention():
    with pytest.raises(ValueError, match="needs attention='fa3_fp8'"):
        dataclasses.replace(get_recipe("optimized_fast"), attention="fa3", fp8_attention_qk="static")


def test_static_qk_leaves_one_amax_in_the_graph_for_v_alone(install_fa3):
    """Negative control beside the full-graph test above: with dynamic scales the graph holds three amax
    reductions (q, k, v); with static q/k scales one (v), q and k being a pointwise scale and cast."""
    install_fa3()
    q, k, v = check_inputs(SHAPE, "cpu")
    counts = {}
    for static_qk in (None, 10.0):
        graphs = []

        def capture(graph_module, example_inputs, graphs=graphs):
            graphs.append(graph_module)
            return graph_module.forward

        choose_attention("fa3_fp8", "cpu", SHAPE, static_qk)
        torch._dynamo.reset()
        compiled = torch.compile(lambda *t: dispatch_attention_fn(*t, backend=FA3_FP8_BACKEND), fullgraph=True,
                                 backend=capture)
        compiled(q, k, v)
        counts[static_qk] = graphs[0].code.count(".amax(")
    choose_attention("fa3_fp8", "cpu", SHAPE)  # dynamic again for the tests after
    assert counts == {None: 3, 10.0: 1}
