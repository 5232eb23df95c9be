"""``dynamic=True`` (``resolutions_dynamic``) compiled 2 graphs on the H200 where 1 was documented: FLUX.1-dev's
1024² has 4096 image tokens, T5's width. Dynamo's duck shaping gives equal sizes one symbol and the context
embedder's weight fixes it, so the first graph is static in its tokens and the next shape compiles a second. The
documented count says so wherever the first shape's tokens equal another input size; these requests make the tiny
model's do."""

import dataclasses

import pytest
import torch.fx.experimental._config as fx_config

from perf.build.builder import build_pipeline
from perf.run.serving import shapes
from perf.spec.recipes import get_recipe

T5_WIDTH = ((32, 32), (48, 80))  # 64 image tokens: the tiny T5's width; then 240
TEXT_TOKENS = ((16, 32), (48, 80))  # 32 image tokens: the tiny text tokens, CLIP's pooled width and blocks' width


def built(tiny_spec, compile_: str):
    recipe = dataclasses.replace(get_recipe("no_fa3_fp8"), name=f"no_fa3_fp8_{compile_}", compile=compile_)
    pipeline = build_pipeline(tiny_spec, recipe)
    pipeline.generate()  # the case's warm-up
    return pipeline


@pytest.fixture(scope="module")
def full(tiny_spec):
    return built(tiny_spec, "full")


def dynamic(pipeline, monkeypatch, requests):
    monkeypatch.setitem(shapes.SHAPES, "tiny", requests)
    return shapes.shape_mode("resolutions_dynamic")(pipeline)


def test_tokens_equal_to_t5s_width_compile_a_second_graph_as_documented(full, monkeypatch):
    result = dynamic(full, monkeypatch, T5_WIDTH)
    assert [r.first_recompiles for r in result.requests] == [1, 1]
    assert result.transformer_recompiles == result.expected_recompiles == 2
    assert "64 image tokens equal T5's width (joint_attention_dim)" in result.finding


def test_the_second_graph_is_duck_shapings(full, monkeypatch):
    """The negative control of the rule: the same requests with duck shaping off compile one graph, not the two
    documented, so the check fails."""
    with fx_config.patch(use_duck_shape=False):
        result = dynamic(full, monkeypatch, T5_WIDTH)
    assert (result.transformer_recompiles, result.expected_recompiles) == (1, 2)


def test_on_a_regional_compile_the_blocks_sizes_count_on_each_graph_held(tiny_spec, monkeypatch):
    result = dynamic(built(tiny_spec, "regional"), monkeypatch, TEXT_TOKENS)
    assert result.transformer_recompiles == result.expected_recompiles == 2 * 2
    assert "32 image tokens equal the blocks' width and the text tokens" in result.finding
