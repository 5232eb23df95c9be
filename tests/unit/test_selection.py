"""Which rows a run takes: the profile's rows, capability gaps skipped with their reason, opt-in rows only when
named (a full-graph FP8 compile that did not finish in 9.5 minutes must not hang a nightly job)."""

import re

from suite_run import run_pytest

from perf.build.builder import staged
from perf.plugin import case_params, scenarios_together
from perf.run.serving import SCENARIOS
from perf.session import PerfSession
from perf.spec.profiles import PROFILES, ActiveProfile, DeviceInfo
from perf.spec.recipes import RECIPES

H100 = ActiveProfile(PROFILES["h100"], DeviceInfo("NVIDIA H100 80GB HBM3", "cuda", 79.1, (9, 0)), emulated=False)


class Options:
    def __init__(self, recipes: str | None = None):
        self.values = {"--recipes": recipes}

    def getoption(self, name: str):
        return self.values.get(name)


def test_a_row_of_another_profile_says_what_it_needs_and_what_was_found():
    reason = PerfSession(Options(), H100).skip_reason("rtx4090", RECIPES["rtx4090_offload"])
    assert reason == "needs rtx4090, found h100 on NVIDIA H100 80GB HBM3"


def test_an_opt_in_row_skips_unless_named_in_recipes():
    row = RECIPES["optimized_fullgraph"]
    assert "run it with --recipes optimized_fullgraph" in PerfSession(Options(), H100).skip_reason("h100", row)
    named = PerfSession(Options("baseline,optimized_fullgraph"), H100).skip_reason("h100", row)
    assert named is None or "opt-in" not in named  # past the opt-in gate (torchao may still be missing here)


def test_the_seed_rows_are_not_opt_in():
    assert PerfSession(Options(), H100).skip_reason("h100", RECIPES["no_fa3_fp8"]) is None


def test_the_memory_control_has_its_own_test_and_no_shared_case():
    """``rtx4090_bf16`` must not fit: it runs only in the budget's negative-control test, never as a case that
    every other test would then report as an error."""
    case_ids = {p.id for p in case_params()}
    control_ids = {p.id for p in case_params(memory_controls=True)}
    assert control_ids == {"rtx4090-rtx4090_bf16"}
    assert not case_ids & control_ids


def test_consumer_rows_are_staged_on_the_cpu_and_the_memory_control_is_not():
    """The rows built to fit 24 GB never hold the bf16 pipeline on the GPU whole; the control does, as a user
    who skipped offload and quantization would."""
    consumer = [r for r in RECIPES.values() if "rtx4090" in r.profiles]
    assert {r.name for r in consumer if staged(r)} == {r.name for r in consumer if not r.memory_control}
    assert not staged(RECIPES["rtx4090_bf16"])


def test_recipes_option_deselects_the_memory_control_too(tmp_path):
    """``--recipes`` names the rows to run; the memory control is a row like any other."""
    done = run_pytest("--collect-only", "-m", "rtx4090", "--recipes", "rtx4090_offload", cache=tmp_path)
    assert "rtx4090-rtx4090_offload" in done.stdout, done.stdout + done.stderr
    assert "rtx4090_bf16" not in done.stdout


def test_each_serving_scenarios_tests_run_together(tmp_path):
    """A GPU run cut off by its time limit has judged every scenario it served: all tests of a scenario follow
    one another (negative control: with the scenario parametrized per function, each test ran over every
    scenario first, and a cut-off run left the swap checks of every scenario unrun)."""
    done = run_pytest("--collect-only", "-m", "cpu", "--recipes", "optimized", cache=tmp_path)
    order = re.findall(r"test_serving\.py::\w+\[cpu-optimized-(\w+)\]", done.stdout)
    runs = [scenario for i, scenario in enumerate(order) if i == 0 or order[i - 1] != scenario]
    assert sorted(runs) == sorted(SCENARIOS), runs
    assert order.count("scale") >= 6, order  # the scale-only tests are in its run too


class Item:
    def __init__(self, test: str, case: tuple[str, str] | None = None, scenario: str | None = None):
        self.test = test
        self.callspec = type("CallSpec", (), {"params": {"case": case, **({"scenario": scenario} if scenario else {})}})


def test_serving_tests_are_ordered_a_scenario_at_a_time_whatever_order_pytest_collected():
    """The order pytest 9.1 (the H200 image's) collected: every test over all scenarios first, each scenario's own
    tests after (negative control: a run cut off on the H200 judged only each scenario's first tests). Other tests
    keep their places, and cases their order."""
    a, b = ("h200", "a"), ("h200", "b")
    collected = [(test, case, scenario) for case in (a, b) for test in ("warm", "count", "check")
                 for scenario in ("scale", "batches", "two") if test != "check" or scenario != "batches"]
    items = [Item("perf", a), *(Item(*test) for test in collected), Item("other")]
    scenarios_together(items)
    order = [(item.test, item.callspec.params["case"], item.callspec.params.get("scenario")) for item in items]
    assert order == [("perf", a, None),
                     *((test, case, scenario) for case in (a, b) for scenario in ("scale", "batches", "two")
                       for test in ("warm", "count", "check") if test != "check" or scenario != "batches"),
                     ("other", None, None)]


def test_every_row_has_the_eager_forms_a_gpu_session_builds_before_its_tests():
    """The stack check's kind and the swap check's reference of every row in the table, whatever its fields: a
    field the eager forms keep where an eager recipe refuses it ended the H200 session of 2026-12-01 in an
    INTERNALERROR before any test (the multi-kernel row's Inductor options)."""
    from perf.run.stack_check import pipeline_kinds

    kinds = pipeline_kinds(RECIPES.values())
    assert kinds and not any(kind.compiled for kind in kinds)
    assert not any(recipe.eager_reference().compiled for recipe in RECIPES.values())
