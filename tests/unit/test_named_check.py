"""The named scenario's swap check on the tiny model, eager on the CPU (``perf.run.serving.named``): a
``set_adapters`` switch to the reference's adapter reads 0, and every defect of the switch fails it, another adapter
left acting beside the target included (the reference is the target acting alone)."""

from __future__ import annotations

import pytest

from perf.build.builder import CachedLora, build_pipeline
from perf.judge.tolerances import EFFECT_TOLERANCE
from perf.run.serving.named import named_swap_check
from perf.run.swap_probe import capture_first_step, reference_step
from perf.spec.recipes import get_recipe

RECIPE = "hotswap_eager"


@pytest.fixture(scope="module")
def reference(tiny_spec):
    """A fresh eager pipeline with kohya loaded directly: its first step, what the check compares against."""
    kohya = tiny_spec.pool.adapters[1]
    fresh = build_pipeline(tiny_spec, get_recipe(RECIPE).eager_reference(), first=kohya)
    with capture_first_step(fresh.pipe.transformer) as captured:
        fresh.generate()
    return reference_step(fresh.pipe, captured[0], kohya.name)


@pytest.fixture(scope="module")
def named(tiny_spec):
    """The hot-swap row with peft_all in its slot and two adapters loaded under their own names."""
    built = build_pipeline(tiny_spec, get_recipe(RECIPE))
    for name, adapter in (("resident_0", tiny_spec.pool.adapters[0]), ("resident_1", tiny_spec.pool.adapters[1])):
        CachedLora.read(adapter).load(built.pipe, adapter_name=name)
    return built


def switch(built, *names: str):
    return names[0], lambda: built.pipe.set_adapters(list(names))


def test_a_switch_to_the_reference_adapter_reads_zero_and_its_controls_fail(named, reference):
    errors, controls, recompiles = named_swap_check(named, reference, switch(named, "resident_1"),
                                                    switch(named, "resident_0"))
    assert errors == {"set_adapters to resident_1": 0.0}
    assert min(controls.values()) > EFFECT_TOLERANCE, controls
    assert recompiles == 0


def test_another_adapter_left_acting_beside_the_target_fails_the_check(named, reference):
    """Negative control: the switch makes both named adapters active; the target's own state is right, so only a
    reference with the others at no effect sees it."""
    errors, _, _ = named_swap_check(named, reference, switch(named, "resident_1", "resident_0"),
                                    switch(named, "resident_0"))
    assert errors["set_adapters to resident_1"] > EFFECT_TOLERANCE, errors


def test_the_check_puts_every_adapter_back(named, reference):
    """The others are zeroed only while the reference is taken: the hot-swap slot and the other named adapter
    serve as before after the check."""
    slot = named.pipe.transformer
    before = {n: p.detach().clone() for n, p in slot.named_parameters() if ".lora_" in n}
    named_swap_check(named, reference, switch(named, "resident_1"), switch(named, "resident_0"))
    after = dict(slot.named_parameters())
    assert all(after[n].equal(tensor) for n, tensor in before.items())
