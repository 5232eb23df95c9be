"""``Recipe.merge_lora`` (issue 25): the hot-swapped adapter merged into the weights on every swap, peft's LoRA path
off in the forward. On the tiny model in float32 a merged row serves what the LoRA layers serve; a swap compiles
nothing; the swap check reads a correct swap as 0 and fails each defect written into the slot, because every write
of the slot's state is merged; the scenarios that act through the LoRA path are declared not served."""

import dataclasses

import pytest
import torch

from perf.build.builder import build_pipeline
from perf.judge.tolerances import EFFECT_TOLERANCE
from perf.run import serving
from perf.run.case import _fresh_reference, open_case
from perf.run.checks import image_diff
from perf.run.swap_probe import run_controls
from perf.run.watchers import RecompileWatcher
from perf.spec.recipes import get_recipe

PLAIN = get_recipe("no_fa3_fp8")
MERGED = dataclasses.replace(PLAIN, name="no_fa3_fp8_merged", merge_lora=True)


@pytest.fixture(scope="module")
def merged(tiny_spec):
    torch.compiler.reset()  # graphs are counted per code object, every instance's together
    built = build_pipeline(tiny_spec, MERGED)
    built.generate()  # the case's warm-up: the compile
    return built


def test_the_merged_forward_runs_no_lora_path(merged):
    layers = merged.merged.layers
    assert layers and all(layer.disable_adapters for layer in layers.values())


def test_a_merged_row_serves_the_image_the_lora_layers_serve(tiny_spec, merged):
    plain = build_pipeline(tiny_spec, PLAIN)
    adapter = tiny_spec.pool.adapters[1]
    plain.load_adapter(adapter)
    merged.load_adapter(adapter)
    assert image_diff(merged.generate(), plain.generate()).max_abs < 1e-4


def test_swaps_compile_nothing_and_the_swap_check_fails_every_defect(tiny_spec, merged):
    target = tiny_spec.pool.adapters[2]
    _, reference = _fresh_reference(tiny_spec, MERGED, target)
    merged.load_adapter(tiny_spec.pool.adapters[0])
    with RecompileWatcher() as watcher:
        controls = run_controls(merged, reference, target)
    assert watcher.count == controls.recompiles == 0
    assert controls.correct < EFFECT_TOLERANCE
    assert min(controls.defects().values()) > EFFECT_TOLERANCE
    assert controls.scale[0.01] > EFFECT_TOLERANCE / 2  # strength 1% off: half the tolerance on this row too
    assert all(layer.disable_adapters for layer in merged.merged.layers.values())  # a hot-swap leaves it off


@pytest.mark.parametrize("scenario", ["scale", "two", "named"])
def test_what_acts_through_the_lora_path_is_declared_not_served(merged, scenario):
    with RecompileWatcher() as watcher:
        result = serving.serve_scenario(scenario, merged)
    assert watcher.count == 0 and result.requests == ()
    assert result.failure.startswith("NotServed: no_fa3_fp8_merged does not serve")
    assert serving.known_failure(scenario, MERGED, result.failure) is not None
    assert serving.expects_failure(scenario, PLAIN) is None


def test_a_merge_needs_the_hot_swap_slot_and_its_reference_merges_nothing():
    with pytest.raises(ValueError, match="merge_lora merges the hot-swap slot"):
        dataclasses.replace(MERGED, hotswap=False)
    assert MERGED.eager_reference().merge_lora is False


def test_the_case_runs_on_a_merged_row_and_its_record_says_so(tiny_spec):
    case = open_case(tiny_spec, MERGED, progress=lambda _: None)
    assert case.scenario.recompiles_after_warmup == 0
    assert case.measured.swap_check.swap == case.controls.correct == 0.0
    assert case.record.applied.lora.startswith("merged into the weights of")


@pytest.mark.parametrize("scenario", ["resolutions", "batches"])
def test_what_does_not_act_through_the_lora_path_is_served_and_compiles_nothing_once_warm(merged, scenario):
    """A new shape or batch on a merged row compiles as on the LoRA row (the documented count), then nothing."""
    result = serving.serve_scenario(scenario, merged)
    assert result.failure is None and result.requests
    assert result.transformer_recompiles == result.expected_recompiles, result.finding
    assert all(request.steady_recompiles == 0 for request in result.requests)
