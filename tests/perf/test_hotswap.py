"""What a recipe must keep doing after any library upgrade: swap adapters without recompiling, produce the
image a fresh pipeline would, and stay as fast as its baseline (timed by pytest-benchmark)."""

import itertools

import pytest

from perf.checks import SEPARATION, cudagraph_problem, image_diff, output_tolerance
from perf.measure import synchronize, time_rounds
from perf.watch import RecompileWatcher


def test_hotswap_never_recompiles_after_warmup(case):
    if not (case.recipe.compiled and case.recipe.hotswap):
        pytest.skip(f"{case.recipe.name} is not a compiled hot-swap recipe: nothing could recompile")
    steps = case.scenario.steps
    assert len(steps) >= 3 and len({s.rank for s in steps}) >= 2, "the scenario must swap across ranks"
    case.add_check("zero_recompiles", case.scenario.recompiles_after_warmup == 0)
    assert case.scenario.recompiles_after_warmup == 0, f"recompiled after hot-swap: {steps}"


def test_watcher_catches_recompiles_without_hotswap(case):
    """Negative control: the seed's baseline_compile row (unload + load, no hot-swap) must be seen recompiling,
    or the zero-recompile test above proves nothing."""
    if not case.recipe.expects_recompiles:
        pytest.skip(f"{case.recipe.name} is not compiled without hot-swap")
    case.add_check("recompiles_detected", case.scenario.recompiles_after_warmup > 0)
    assert case.scenario.recompiles_after_warmup > 0, f"no recompile seen: {case.scenario.steps}"


def test_cudagraphs_recorded_once_and_replayed_across_swaps(case):
    """Recipes compiled with CUDA graphs run as CUDA graphs: none skipped, all recorded in warm-up, none recorded
    again after a swap. That the replayed graphs use the swapped adapter is the image test below."""
    if not case.recipe.cudagraphs:
        pytest.skip(f"{case.recipe.name} is not compiled with CUDA graphs")
    scenario = case.scenario
    problem = cudagraph_problem(scenario.warmup_cudagraphs, scenario.cudagraphs_recorded_after_warmup,
                                scenario.cudagraphs_skipped)
    case.add_check("cudagraphs_replayed", problem is None, recorded_in_warmup=scenario.warmup_cudagraphs,
                   recorded_after_warmup=scenario.cudagraphs_recorded_after_warmup,
                   skipped=scenario.cudagraphs_skipped)
    assert problem is None, f"{case.recipe.name}: {problem}"


def test_hotswapped_image_matches_fresh_pipeline(case):
    if not case.recipe.hotswap:
        pytest.skip(f"{case.recipe.name} does not hot-swap")
    adapter = case.built.pool.adapters[1].name  # the scenario's first swap
    fresh = case.fresh_images[adapter]
    tolerance = output_tolerance(case.recipe, case.built.active.profile.dtype)
    swapped = image_diff(case.scenario.images[adapter], fresh)
    other = image_diff(case.scenario.warmup_image, fresh)
    case.add_check("matches_fresh_pipeline", swapped.mean_abs <= tolerance, adapter=adapter,
                   tolerance=tolerance, swapped=swapped.to_dict(), other_adapter=other.to_dict())
    assert other.mean_abs >= SEPARATION * tolerance, (
        f"adapters barely change the image ({other.mean_abs:.2e} vs tolerance {tolerance:.1e}): check is vacuous"
    )
    assert swapped.mean_abs <= tolerance, (
        f"after hot-swapping to {adapter} the image differs from a fresh pipeline with {adapter} by "
        f"{swapped.mean_abs:.2e} (mean abs; tolerance {tolerance:.1e})"
    )


def test_swapping_back_restores_the_first_adapter(case):
    if not case.recipe.hotswap:
        pytest.skip(f"{case.recipe.name} does not hot-swap")
    first = case.built.first.name
    tolerance = output_tolerance(case.recipe, case.built.active.profile.dtype)
    diff = image_diff(case.scenario.images[first], case.scenario.warmup_image)
    case.add_check("swap_back_restores_first", diff.mean_abs <= tolerance, diff=diff.to_dict())
    assert diff.mean_abs <= tolerance, f"swapping back to {first} changed its image by {diff.mean_abs:.2e}"


def test_generation_latency(benchmark, case, suite):
    """Times full pipeline calls after warm-up. Hot-swap recipes swap to the next adapter before every timed
    round (untimed), so the timing also proves a swap costs no recompile; others keep their adapter."""
    built = case.built
    device = built.device_type
    rotation = itertools.cycle(built.pool.adapters)

    def next_adapter():
        built.load_adapter(next(rotation))
        synchronize(device)

    benchmark.extra_info.update(
        recipe=case.recipe.name, profile=built.active.name, emulated=built.active.emulated,
        device=built.active.device.name, model_source=built.source.label, attention=built.attention.kernel,
        compile_warmup_s=case.scenario.warmup_seconds, versions=case.record["versions"],
        peak_memory=case.record["peak_memory"],
    )
    setup = next_adapter if case.recipe.hotswap else None
    with RecompileWatcher() as watcher:
        if benchmark.disabled:  # pytest-benchmark is off under pytest-xdist: the suite times the same rounds
            case.add_latency(time_rounds(built.generate, setup, suite.rounds, device), timer="suite")
        else:
            benchmark.pedantic(built.generate, setup=setup, rounds=suite.rounds, iterations=1, warmup_rounds=0)
            case.add_latency(list(benchmark.stats.stats.data), timer="pytest-benchmark")
    if case.recipe.compiled and case.recipe.hotswap:
        assert watcher.count == 0, f"{watcher.count} recompiles while timing hot-swapped generations"
    if case.recipe.cudagraphs:
        assert watcher.cudagraphs_recorded == 0 and watcher.cudagraphs_skipped == 0, (
            f"CUDA graphs recorded {watcher.cudagraphs_recorded}, skipped {watcher.cudagraphs_skipped} while timing"
        )
