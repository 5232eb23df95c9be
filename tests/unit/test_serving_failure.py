"""A serving scenario the libraries cannot run ends as a recorded failure naming the error and the versions, with
the traceback's end on the terminal once: the scenario is not run again by each test that asks (on a GPU it
compiles for minutes), and an interrupt still stops the run."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from perf.build.builder import HOTSWAP_ADAPTER, build_pipeline
from perf.run import case as case_module
from perf.run import serving
from perf.run.swap_probe import lora_modules
from perf.spec.recipes import get_recipe


def test_a_library_error_becomes_the_scenarios_failed_result(monkeypatch):
    def broken(built, **_):
        raise RuntimeError("FakeTensor has no attribute 'tensor_impl'\nsecond line")

    monkeypatch.setitem(serving.SCENARIOS, "two", broken)
    lines = []
    result = serving.serve_scenario("two", SimpleNamespace(device_type="cpu", recipe=get_recipe("no_fa3_fp8")),
                                    lines.append)
    assert result.failure == "RuntimeError: FakeTensor has no attribute 'tensor_impl'"
    assert result.requests == () and result.finding.startswith("two: failed with RuntimeError: FakeTensor")
    assert "torch " in result.finding and "diffusers " in result.finding
    assert "Traceback" in lines[0] or "RuntimeError" in lines[0]


def test_an_interrupt_still_stops_the_run(monkeypatch):
    def interrupted(built, **_):
        raise KeyboardInterrupt

    monkeypatch.setitem(serving.SCENARIOS, "scale", interrupted)
    with pytest.raises(KeyboardInterrupt):
        serving.serve_scenario("scale", SimpleNamespace(device_type="cpu", recipe=get_recipe("no_fa3_fp8")), print)


@pytest.fixture(scope="module")
def compiled(tiny_spec):
    return build_pipeline(tiny_spec, get_recipe("no_fa3_fp8"))


def wreck(built) -> None:
    """What a failed scenario can leave: another adapter loaded and active beside the slot, new graphs compiled,
    and the slot's scaling tensors unreadable (meta tensors here; under CUDA graphs, outputs of an overwritten
    replay), which peft's next hot-swap reads."""
    built.pipe.load_lora_weights(str(built.spec.pool.adapters[2].path), adapter_name="left_over")
    built.pipe.set_adapters(["left_over"])
    built.serve(num_images_per_prompt=2)
    for module in lora_modules(built.pipe.transformer, HOTSWAP_ADAPTER).values():
        module.scaling[HOTSWAP_ADAPTER] = torch.empty((), device="meta")


def test_a_failed_scenario_leaves_the_pipeline_serving_as_built(compiled):
    """After a scenario's error the next scenario must find the pipeline as the case built it: the same image as
    before, bit for bit, and hot-swaps that work; the wreck alone makes the next hot-swap fail (the control)."""
    before, state = compiled.generate(), serving.AsBuilt.take(compiled)
    wreck(compiled)
    with pytest.raises(Exception):  # noqa: B017 -- peft reads the unreadable scaling: any error shows the wreck
        compiled.load_adapter(compiled.spec.pool.adapters[1])
    assert serving.recover(compiled, state) is None
    assert set(compiled.pipe.transformer.peft_config) == {HOTSWAP_ADAPTER}
    np.testing.assert_array_equal(compiled.generate(), before)
    compiled.load_adapter(compiled.spec.pool.adapters[1])
    assert np.abs(compiled.generate() - before).mean() > 1e-3, "the hot-swap after recovery changed nothing"
    compiled.load_adapter(compiled.first)


def test_a_pipeline_that_cannot_be_put_back_runs_no_further_scenario(monkeypatch):
    """One failure that leaves the pipeline unusable is reported once; each later scenario is recorded as not run
    with the reason, and never served on the wreck (the libraries' errors it would raise are not findings)."""
    def broken(built, **_):
        raise RuntimeError("accessing tensor output of CUDAGraphs that has been overwritten by a subsequent run")

    def never(built, **_):
        raise AssertionError("a scenario ran on an unusable pipeline")

    monkeypatch.setitem(serving.SCENARIOS, "scale", broken)
    monkeypatch.setitem(serving.SCENARIOS, "batches", never)
    monkeypatch.setattr(case_module, "recover", lambda built, before: "RuntimeError: still broken")
    monkeypatch.setattr(case_module.AsBuilt, "take", classmethod(lambda cls, built: None))
    monkeypatch.setattr(case_module.Case, "swap_reference", property(lambda self: None))
    built = SimpleNamespace(device_type="cpu", recipe=get_recipe("no_fa3_fp8"))
    case, lines = case_module.Case(built, None, None), []
    assert case.serving("scale", [], lines.append).failure.startswith("RuntimeError: accessing tensor output")
    later = case.serving("batches", [], lines.append)
    assert later.failure == "not run: the pipeline could not be put back after scale failed: RuntimeError: still broken"
    assert later.requests == () and "batches: not run" in later.finding
    assert sum("could not be put back" in line for line in lines) == 1


def test_the_documented_failure_is_told_apart_from_any_other():
    """The CUDA-graph scale failure is a finding on CUDA-graph recipes only, and only with its own error."""
    error = ("InternalTorchDynamoError: RuntimeError: Error: accessing tensor output of CUDAGraphs that has been "
             "overwritten by a subsequent run")
    assert serving.known_failure("scale", get_recipe("optimized_fast_cudagraphs"), error) is not None
    assert serving.known_failure("scale", get_recipe("optimized_fullgraph_defaults"), error) is None
    assert serving.known_failure("scale", get_recipe("optimized_fast_cudagraphs"), "ValueError: other") is None
    assert serving.known_failure("batches", get_recipe("optimized_fast_cudagraphs"), error) is None
    assert serving.expects_failure("scale", get_recipe("optimized_fast_cudagraphs")) is not None
