"""The serving checks' tolerance stands on a noise floor measured in each run (an A/A control: the reference's state
against itself, every scaling off by one part in a million): on the CPU it is that part in a million and the
tolerance is the calibrated ``EFFECT_TOLERANCE``; where FP8 roundings make every change read as about 2% of the
adapter's effect (the H200), the tolerance follows the floor instead of failing every correct request."""

import pytest

from perf.build.builder import build_pipeline
from perf.judge.serving_record import ServingResult
from perf.judge.tolerances import EFFECT_TOLERANCE, FLOOR_MARGIN, FLOOR_PERTURBATION, serving_tolerance
from perf.run.case import _fresh_reference
from perf.run.serving import noise_floor
from perf.run.watchers import RecompileWatcher
from perf.spec.recipes import get_recipe


@pytest.fixture(scope="module")
def compiled(tiny_spec):
    built = build_pipeline(tiny_spec, get_recipe("no_fa3_fp8"))
    built.generate()
    return built


def test_the_floor_on_the_cpu_is_the_perturbation_and_compiles_nothing(tiny_spec, compiled):
    _, reference = _fresh_reference(tiny_spec, compiled.recipe, compiled.spec.pool.adapters[1])
    with RecompileWatcher() as watcher:
        floor = noise_floor(compiled, reference)
    assert watcher.count == 0
    assert 0 < floor < 10 * FLOOR_PERTURBATION, floor
    assert serving_tolerance(floor) == EFFECT_TOLERANCE


def test_the_tolerance_follows_a_floor_above_the_calibrated_one():
    assert serving_tolerance(None) == EFFECT_TOLERANCE
    assert serving_tolerance(0.0226) == pytest.approx(FLOOR_MARGIN * 0.0226)
    result = ServingResult("scale", (), errors={"scale 0.6": 0.0245}, controls={"scale 1.2 served 5% off": 0.0488},
                           noise_floor=0.0226)
    assert max(result.errors.values()) <= result.tolerance < min(result.controls.values())
