"""peft's hot-swap scaling, probed and calibrated. The probe names a hot-swap that ignores rank_pattern and
alpha_pattern and finds nothing where peft scales each module by its own rank and alpha. On the tiny hotswap_eager
case, swapping back to the pool's first adapter (per-module ranks) is an expected failure naming the finding and
the measured figure while the probe finds the bug; without the finding the same wrong swap fails the check
(negative control); where peft scales right, the probe finds nothing and the check passes (false alarms: none).

peft is made to scale one way or the other by its pattern lookup in ``peft.utils.hotswap``, so these tests mean
the same whichever peft is installed."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
from pathlib import Path

import peft.utils.hotswap
import pytest

from perf.run.case import open_case
from perf.run.hotswap_scaling import SUBJECT, hotswap_scaling_finding, measure_hotswap_scaling
from perf.spec.recipes import get_recipe

PERF_TESTS = Path(__file__).resolve().parents[1] / "perf" / "test_hotswap.py"
look_up = peft.utils.hotswap.get_pattern_key


def by_module(keys, key):
    """The lookup as upstream fixed it (huggingface/peft#3752): a parameter's module name against the patterns."""
    return look_up(keys, key.split(".lora_")[0])


def by_nothing(keys, key):
    """The lookup as peft 0.21.2 ends up: no pattern matches, every module gets the default r and lora_alpha."""
    return key


@contextlib.contextmanager
def peft_lookup(lookup):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(peft.utils.hotswap, "get_pattern_key", lookup)
        hotswap_scaling_finding.cache_clear()
        try:
            yield
        finally:
            hotswap_scaling_finding.cache_clear()


def test_the_probe_names_a_hotswap_that_ignores_the_patterns():
    with peft_lookup(by_nothing):
        finding = measure_hotswap_scaling()
    assert finding.subject == SUBJECT
    assert "lin1 2 where its config gives 4, lin2 2 where its config gives 0.5" in finding.problem
    assert "the patterns are ignored" in finding.problem
    assert set(finding.versions) == {"peft", "torch"}


def test_the_probe_finds_nothing_where_peft_scales_by_module():
    with peft_lookup(by_module):
        assert measure_hotswap_scaling() is None


def swap_back_check():
    """``test_swapping_back_restores_the_first_adapter`` of the perf suite, as users run it."""
    spec = importlib.util.spec_from_file_location("perf_test_hotswap", PERF_TESTS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.test_swapping_back_restores_the_first_adapter


def hotswap_case(tiny_spec, lookup):
    with peft_lookup(lookup):
        return open_case(tiny_spec, get_recipe("hotswap_eager"), progress=lambda message: None)


def test_a_wrong_swap_back_is_an_expected_failure_with_the_finding_and_fails_without_it(tiny_spec, monkeypatch):
    case = hotswap_case(tiny_spec, by_nothing)
    check = swap_back_check()
    assert SUBJECT in {f.subject for f in case.record.lora_findings}
    with pytest.raises(pytest.xfail.Exception, match=rf"swapping back to peft_all: {case.swap_back_error:.2%} .*"
                       r"known finding: peft's hot-swap .*lin1 2 where its config gives 4.*\(peft "):
        check(case)
    monkeypatch.setattr(case, "measured", dataclasses.replace(case.measured, lora_findings=()))
    with pytest.raises(AssertionError, match=r"swapping back to peft_all changed its step by"):
        check(case)
    case.release()


def test_where_peft_scales_by_module_there_is_no_finding_and_the_swap_back_passes(tiny_spec):
    case = hotswap_case(tiny_spec, by_module)
    assert SUBJECT not in {f.subject for f in case.record.lora_findings}
    swap_back_check()(case)
    assert case.swap_back_error <= case.effect_tolerance
    case.release()


def test_quality_failures_are_expected_only_on_adapters_the_finding_explains(tiny_spec, monkeypatch):
    """Negative control of the quality check's expected failure: a failing image of an adapter with one rank
    (xlabs), or any failure once the finding is gone, gates; only per-module-rank adapters under the finding pass
    as expected failures."""
    case = hotswap_case(tiny_spec, by_nothing)
    psnr = ["PSNR vs baseline row 17.6 dB < tolerance 28.00 dB"]
    assert "known finding: peft's hot-swap" in case.known_quality_cause({"peft_all": psnr})
    assert case.known_quality_cause({"peft_all": psnr, "xlabs": psnr}) is None
    monkeypatch.setattr(case, "measured", dataclasses.replace(case.measured, lora_findings=()))
    assert case.known_quality_cause({"peft_all": psnr}) is None
    case.release()
