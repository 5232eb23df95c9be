"""Which package of an upgrade caused its regression (asv's ``find``, over packages instead of commits).

The regressed recipes are re-run under the known-good stack with one changed package moved to its candidate
version, for each changed package; where none reproduces the regression alone, each pair. A mix reproduces it
when its verdict against the known-good records has a regressed row for a (recipe, metric) that regressed in the
candidate. Each mix's run is kept under ``<results>/bisect-<package>/`` and reused when met again.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

from perf.gate.sides import Gate, SideRun, judge, run_side, slowed
from perf.gate.stacks import Stack, safe_name
from perf.judge.compare import Verdict, format_table


def reproduces(found: Sequence[Verdict], regressed: set[tuple[str, str]]) -> list[Verdict]:
    """The rows of ``found`` that show one of the candidate's regressions."""
    return [v for v in found if v.verdict == "regressed" and (v.recipe, v.metric) in regressed]


def bisect(gate: Gate, known_good_run: SideRun, known_good: Stack, candidate: Stack, moved: list[str],
           verdicts: Sequence[Verdict]) -> list[tuple[str, ...]]:
    """Name the package (or pair) whose move alone reproduces the regression; print the rows that show it."""
    regressed = {(v.recipe, v.metric) for v in verdicts if v.verdict == "regressed"}
    recipes = ",".join(sorted({recipe for recipe, _ in regressed}))
    if len(moved) == 1:
        gate.say(f"bisect: only {moved[0]} moved: it is the cause")
        return [(moved[0],)]
    culprits: list[tuple[str, ...]] = []
    for size in (1, 2):
        for group in combinations(moved, size):
            mix = known_good
            for name in group:
                mix = mix.with_package(name, candidate)
            run = run_side(gate, mix, f"bisect-{safe_name('+'.join(group))}", recipes,
                           slowed(gate, mix, candidate=False))
            shown = reproduces(judge(gate, known_good_run, run), regressed)
            moves = ", ".join(f"{n} {known_good.placement(n).version} -> {candidate.placement(n).version}"
                              for n in group)
            gate.say(f"bisect: {moves}: {'REPRODUCES the regression' if shown else 'no regression'}")
            if shown:
                culprits.append(group)
                gate.say(format_table(shown))
        if culprits:
            break
    names = " | ".join(" + ".join(group) for group in culprits) or "none (the regression needs three or more together)"
    gate.say(f"bisect: caused by: {names}")
    return culprits
