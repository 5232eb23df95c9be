"""The adapter pool in the formats people download: each file, loaded through ``FluxPipeline.load_lora_weights``,
acts as the adapter it was written from (every module's delta, alpha and bias); a conversion that drops a module or
mis-scales one is caught (negative controls); the pool covers every Linear family of the transformer, its first
adapter covers the others (or the pool is reordered, or refused when no order works); diffusers' gaps are findings
with versions, never silent."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch

from perf.errors import LoraIncompatibleError
from perf.run.churn import churn_specs
from perf.spec.lora_formats import conversion_errors, loaded_deltas, write_lora
from perf.spec.loras import (
    LoraPool,
    SyntheticLoraSpec,
    check_pool,
    family,
    format_findings,
    order_for_hotswap,
    synthetic_meant,
    synthetic_specs,
    transformer_linear_shapes,
)
from perf.spec.models import CONFIGS, build_synthetic_pipeline

SHAPES = transformer_linear_shapes(CONFIGS["tiny"]["transformer"])
SPECS = {spec.name: spec for spec in (*synthetic_specs("tiny"), *churn_specs("tiny"))}


@pytest.fixture(scope="module")
def pipe():
    return build_synthetic_pipeline("tiny", torch.float32)


def loaded(pipe, path, name: str) -> dict[str, torch.Tensor]:
    """What ``pipe`` holds for the adapter after loading ``path`` through diffusers (then unloaded again)."""
    pipe.load_lora_weights(str(path), adapter_name=name)
    try:
        return loaded_deltas(pipe.transformer, name)
    finally:
        pipe.delete_adapters(name)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_each_format_loads_as_the_adapter_it_was_written_from(pipe, name, tmp_path):
    meant = synthetic_meant(SPECS[name], "tiny")
    path = write_lora(meant, SPECS[name].format, tmp_path / "lora.safetensors")
    assert conversion_errors(meant, loaded(pipe, path, name)) == {}


def test_a_peft_file_with_a_lora_b_bias_loads_as_written(pipe, tmp_path):
    """The bias path the pool leaves out (peft's FP8 layers refuse it): every module's delta and bias as meant."""
    spec = dataclasses.replace(SPECS["peft_all"], bias=True)
    meant = synthetic_meant(spec, "tiny")
    path = write_lora(meant, "peft", tmp_path / "lora.safetensors")
    assert all(lo.bias is not None for lo in meant.values())
    assert conversion_errors(meant, loaded(pipe, path, "biased")) == {}


def test_a_conversion_that_drops_a_module_is_caught(pipe, tmp_path):
    """Negative control: the kohya file without one module's keys, judged against the adapter that has it."""
    meant = synthetic_meant(SPECS["kohya"], "tiny")
    dropped = "transformer_blocks.0.ff.net.2"
    path = write_lora({m: lo for m, lo in meant.items() if m != dropped}, "kohya", tmp_path / "lora.safetensors")
    assert conversion_errors(meant, loaded(pipe, path, "dropped")) == {dropped: "not loaded"}


@pytest.mark.parametrize("fmt", ["kohya", "ai_toolkit", "peft"])
def test_a_conversion_that_mis_scales_a_module_is_caught(pipe, fmt, tmp_path):
    """Negative control: one module's alpha written 10% off (kohya bakes it, ai-toolkit reads ``.alpha``, PEFT
    reads the metadata's alpha_pattern): that module, and only it, is named."""
    spec = dataclasses.replace(SPECS["kohya" if fmt == "kohya" else "ai_toolkit_reordered"], format=fmt)
    meant = synthetic_meant(spec, "tiny")
    wrong = "transformer_blocks.0.attn.to_out.0" if fmt == "kohya" else sorted(meant)[0]
    off = {**meant, wrong: dataclasses.replace(meant[wrong], alpha=meant[wrong].alpha * 1.1)}
    path = write_lora(off, fmt, tmp_path / "lora.safetensors")
    errors = conversion_errors(meant, loaded(pipe, path, "off"))
    assert set(errors) == {wrong} and re.fullmatch(r"delta off by (9\.[5-9]|10\.[0-4])%", errors[wrong])


def test_the_pool_covers_every_linear_of_the_transformer_with_mixed_ranks_and_alphas(tiny_pool):
    first, others = tiny_pool.adapters[0], tiny_pool.adapters[1:]
    assert first.modules == set(SHAPES), "the first adapter adapts every Linear (so all others hot-swap into it)"
    beyond_the_first = {family(m) for a in others for m in a.modules}
    listed = {family(m) for m in SHAPES if not m.startswith(("time_text_embed.", "norm_out."))}
    assert beyond_the_first >= listed, "the real-world formats between them reach every family the issue lists"
    assert len({layer.rank for layer in first.layers}) > 1 and not first.bias_modules  # FP8 layers refuse a bias
    formats = {spec.format for spec in synthetic_specs("tiny")}
    assert {"peft", "kohya", "xlabs", "reordered"} <= formats


def test_diffusers_gaps_are_findings_with_versions_and_left_out_of_the_files(tiny_pool):
    """On the tiny model diffusers' kohya converter cannot split a single block's linear1 (it assumes FLUX.1-dev's
    3072/12288 widths), drops the top-level kohya keys, and does not convert BFL lora_A/lora_B files at all."""
    findings = {(f.format, f.families): f for f in tiny_pool.findings}
    assert all("diffusers" in f.versions and "peft" in f.versions for f in findings.values())
    kohya = next(a for a in tiny_pool.adapters if a.name == "kohya")
    left_out = {fam for (fmt, families) in findings if fmt == "kohya" for fam in families}
    assert not {family(m) for m in kohya.modules} & left_out
    assert format_findings("peft", SHAPES) == () and format_findings("xlabs", SHAPES) == ()


def test_the_pool_is_ordered_so_the_covering_adapter_comes_first(tiny_pool):
    reversed_pool = LoraPool(tuple(reversed(tiny_pool.adapters)))
    assert order_for_hotswap(reversed_pool).adapters[0].name == tiny_pool.adapters[0].name
    check_pool(order_for_hotswap(reversed_pool), tiny_pool.max_rank)


def test_a_pool_no_order_can_hot_swap_is_refused_with_one_message(tiny_pool):
    """kohya and the ai-toolkit file each target modules the other lacks, and neither has the first's bias."""
    pool = order_for_hotswap(LoraPool(tiny_pool.adapters[1:]))
    with pytest.raises(LoraIncompatibleError, match="no order of the LoRA pool can be hot-swapped"):
        check_pool(pool, tiny_pool.max_rank)


def test_a_spec_mixing_what_a_format_cannot_hold_is_refused(tmp_path):
    """XLabs has no alpha and one lora down per fused q/k/v: a writer asked for more must not write a file that
    means something else."""
    spec = SyntheticLoraSpec("x", "xlabs", (4,), (8.0,), 0, "")
    with pytest.raises(ValueError, match="alpha must equal the rank"):
        write_lora(synthetic_meant(spec, "tiny"), "xlabs", tmp_path / "x.safetensors")
