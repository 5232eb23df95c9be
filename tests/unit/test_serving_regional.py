"""A regional compile (``compile_repeated_blocks``: the RTX 4090 rows, ``optimized``) holds a graph per repeated
block class, each with guards of its own, where a full-graph compile holds one: a request that fails the guards
recompiles each of them. On the H200 ``rtx4090_optimized`` held 3 and compiled 3 for batch 2 against the documented
1. The documented count is per graph held; ``scale``, applied outside the compiled blocks, compiles none; and
dynamo's recompile limit counts each block's graphs apart."""

import dataclasses

import pytest
import torch

from perf.build.builder import build_pipeline
from perf.judge.serving_record import NamedFigures
from perf.run import serving
from perf.run.case import _fresh_reference
from perf.run.serving.known import KNOWN_RECOMPILES
from perf.run.serving.named import _named_finding
from perf.run.watchers import graphs_by_forward
from perf.spec.recipes import get_recipe


@pytest.fixture(scope="module")
def regional(tiny_spec):
    torch.compiler.reset()  # as a case starts: graphs are counted per code object, every instance's together
    recipe = dataclasses.replace(get_recipe("no_fa3_fp8"), name="no_fa3_fp8_regional", compile="regional")
    built = build_pipeline(tiny_spec, recipe)
    built.generate()  # the case's warm-up: the scenario starts from graphs for the default request
    return built


@pytest.fixture(scope="module")
def reference(tiny_spec, regional):
    return _fresh_reference(tiny_spec, regional.recipe, regional.spec.pool.adapters[1])[1]


def test_a_regional_compile_holds_a_graph_per_repeated_block_class(regional):
    assert graphs_by_forward(regional.pipe.transformer) == {"FluxTransformerBlock": 1,
                                                             "FluxSingleTransformerBlock": 1}


def test_a_new_batch_compiles_the_documented_count_on_each_graph_held(regional):
    result = serving.run_batches(regional)
    assert result.transformer_recompiles == result.expected_recompiles == 2 * KNOWN_RECOMPILES["batches"].count
    assert result.steady_recompiles == 0
    assert "on each of the 2 graphs a regional compile holds" in result.finding


def test_a_scale_applied_outside_the_compiled_blocks_compiles_nothing(regional, reference):
    result = serving.SCENARIOS["scale"](regional, reference=reference)
    assert result.transformer_recompiles == result.expected_recompiles == 0
    assert result.finding is None


def test_the_recompile_limit_is_shown_on_the_fullest_block(regional, reference):
    """The limit lowered to the graphs the fullest block holds fails the next switch (lowered to the transformer's
    own forward, which a regional compile never compiles, it read 0 and failed any compile at all)."""
    result = serving.SCENARIOS["named"](regional, reference=reference,
                                        resident=list(regional.spec.pool.adapters))
    figures = result.named
    assert result.transformer_recompiles == result.expected_recompiles == 2 * len(figures.recompiles_per_switch)
    assert figures.held_by_forward == {"FluxTransformerBlock": 1, "FluxSingleTransformerBlock": 1}
    assert figures.limit_shown.recompile_limit_set_to == 1 + sum(figures.recompiles_per_switch) // 2  # each block
    assert "FailOnRecompileLimitHit" in figures.limit_shown.error
    assert f"so {figures.recompile_limit - 1} named adapters fit" in result.finding


def test_the_adapters_that_fit_are_counted_on_the_block_that_reaches_the_limit_first():
    """FLUX.1-dev's sizes: the single-stream block holds 2 graphs (its first call's strides), the double-stream 1;
    a switch recompiles each graph, so the single-stream block gains 2 a switch and stops the 4th switch at 8."""
    figures = NamedFigures(("resident_0",), ("resident_0",), 8, 1.0, 0, 1.0, 2, (3,), {"resident_0": 1.0},
                           held_by_forward={"FluxTransformerBlock": 1, "FluxSingleTransformerBlock": 2})
    assert "so 3 named adapters fit and the switch to adapter 4 passes the limit" in _named_finding(figures)
