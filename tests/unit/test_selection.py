"""Which rows a run takes: the profile's rows, capability gaps skipped with their reason, opt-in rows only when
named (a full-graph FP8 compile that did not finish in 9.5 minutes must not hang a nightly job)."""

from perf.plugin import Suite
from perf.profiles import PROFILES, ActiveProfile, DeviceInfo
from perf.recipes import RECIPES

H100 = ActiveProfile(PROFILES["h100"], DeviceInfo("NVIDIA H100 80GB HBM3", "cuda", 79.1, (9, 0)), emulated=False)


class Options:
    def __init__(self, recipes: str | None = None):
        self.values = {"--recipes": recipes}

    def getoption(self, name: str):
        return self.values.get(name)


def test_a_row_of_another_profile_says_what_it_needs_and_what_was_found():
    reason = Suite(Options(), H100).skip_reason("rtx4090", RECIPES["rtx4090_offload"])
    assert reason == "needs rtx4090, found h100 on NVIDIA H100 80GB HBM3"


def test_an_opt_in_row_skips_unless_named_in_recipes():
    row = RECIPES["optimized_fullgraph"]
    assert "run it with --recipes optimized_fullgraph" in Suite(Options(), H100).skip_reason("h100", row)
    named = Suite(Options("baseline,optimized_fullgraph"), H100).skip_reason("h100", row)
    assert named is None or "opt-in" not in named  # past the opt-in gate (torchao may still be missing here)


def test_the_seed_rows_are_not_opt_in():
    assert Suite(Options(), H100).skip_reason("h100", RECIPES["no_fa3_fp8"]) is None
