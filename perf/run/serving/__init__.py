"""The serving operations a LoRA server runs on a compiled hot-swap pipeline all day, beyond one swap at the
default request: a LoRA scale per request, other resolutions and aspect ratios, batches, adapters kept resident in
RAM (hot-swapped from memory) or loaded under their own names and switched with ``set_adapters``, and two adapters
at once with weights.

Each scenario is a function over a ``BuiltPipeline`` returning a ``perf.judge.serving_record.ServingResult``:
every kind of request is served once (first: what it costs to compile for it) and, once all kinds were served,
again (steady: must compile nothing). Where an adapter acts, the one-step swap check of ``perf.run.swap_probe``
measures it, beside negative controls it must fail. A scenario that compiles graphs after its first requests on
this stack says so in ``finding`` with the versions; ``KNOWN_RECOMPILES`` holds the counts each is expected to
compile and why, so a test can assert the count instead of hiding it.

One module per scenario; what they share is in ``requests``, what the current stack is documented to do
in ``known``, how a broken pipeline is put back in ``recovery``.

Scenarios run one after another on the case's pipeline; each ends by dropping the graphs it compiled and compiling
the default request again (``torch.compiler.reset``), so the next starts from the state the case built (warm on the
default request only, the hot-swap slot holding its adapter) and its counts do not depend on the order run.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable

from perf.build.builder import BuiltPipeline
from perf.judge.serving_record import ServingResult
from perf.run.measure import free_memory
from perf.run.serving.batches import run_batches
from perf.run.serving.known import (
    KNOWN_FAILURES,
    KNOWN_RECOMPILES,
    expects_failure,
    known_failure,
    stack_versions,
)
from perf.run.serving.named import run_named
from perf.run.serving.recovery import AsBuilt, not_run, recover
from perf.run.serving.requests import error_line, noise_floor
from perf.run.serving.resident import run_resident
from perf.run.serving.scale import SCALE_DEFECT, run_scale
from perf.run.serving.shapes import SHAPE_MODES, run_resolutions, shape_mode
from perf.run.serving.two import run_two

__all__ = ["KEEPS_RESIDENT", "KNOWN_FAILURES", "KNOWN_RECOMPILES", "SCALE_DEFECT", "SCENARIOS", "AsBuilt",
           "expects_failure", "known_failure", "noise_floor", "not_run", "recover", "run_batches", "serve_scenario"]


def serve_scenario(scenario: str, built: BuiltPipeline, progress: Callable[[str], None] = print,
                   **inputs) -> ServingResult:
    """``scenario`` run on ``built``; an error the libraries raise ends it as a failed result (the error's first
    line and the versions, as its finding, with the reason where ``KNOWN_FAILURES`` documents it; the traceback's
    end goes to ``progress``), recorded once and never run again by the next test that asks: on a GPU a scenario
    compiles for minutes. An interrupt still ends the run. A scenario the recipe's kind cannot serve by design
    (``KnownFailure.served`` False) is not run: its result is that failure, with the reason."""
    known = expects_failure(scenario, built.recipe)
    if known is not None and not known.served:
        error = f"{known.error}: {built.recipe.name} does not serve {scenario}"
        return ServingResult(scenario, (), failure=error,
                             finding=f"{scenario}: {error}: {known.why} [{stack_versions()}]")
    try:
        return SCENARIOS[scenario](built, **inputs)
    except Exception as exc:  # any library error is the scenario's outcome: recorded and reported, not a crash
        progress("".join(traceback.format_exception(exc)[-6:]).rstrip())
        free_memory(built.device_type)
        error = error_line(exc, 500)
        known = known_failure(scenario, built.recipe, error)
        because = f": {known.why}" if known else ""
        return ServingResult(scenario, (), failure=error,
                             finding=f"{scenario}: failed with {error}{because} [{stack_versions()}]")


KEEPS_RESIDENT = frozenset({"resident", "named"})
"""The scenarios that take the resident adapters (``serve_scenario``'s ``resident``): only for them are the churn
pool's adapters made, a minute of CPU at full size that a run of the other scenarios does not wait for."""

SCENARIOS: dict[str, Callable[..., ServingResult]] = {
    "scale": run_scale, "batches": run_batches, "resident": run_resident, "two": run_two, "named": run_named,
    "resolutions": run_resolutions, **{scenario: shape_mode(scenario) for scenario in SHAPE_MODES},
}
"""In the order a run serves them (pytest's order of the parameters): on a GPU each new graph is a full-graph
compile of minutes, and the shape modes compile the most, so a run cut off by its time limit has recorded the others
first."""
