"""The pytest face of the library: options, hardware markers, and hooks, each forwarding to the one
``perf.session.PerfSession`` that owns the run's state, its verdict and its summary (pytest-benchmark's shape).

Loaded by the root ``conftest.py``. Each perf test is parametrized over (profile, recipe) pairs of every
profile, marked with the profile's marker, so ``pytest --collect-only -m h100`` lists the H100 rows anywhere
and a run skips the rows that are not for the device it found, saying what it needs and what it found.
"""

from __future__ import annotations

import pytest

from perf.session import PerfSession
from perf.spec.profiles import HARDWARE_MARKERS, PROFILES
from perf.spec.recipes import RECIPES
from perf.spec.run_spec import add_run_options
from perf.spec.validate import positive_int, positive_seconds
from perf.workers import is_controller, recipe_scheduler, worker_index

SESSION = pytest.StashKey[PerfSession]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup(
        "flux-lora-perf", "flux-lora-perf: LoRA hot-swap performance gate (exit status 6: the library stack failed the "
        "check run before any test, perf/run/stack_check.py; 4: a mistake in the options; 1: failed tests or, with "
        "--fail-on-regression, a regression)")
    add_run_options(group.addoption)
    group.addoption(
        "--profile", choices=sorted(PROFILES), default=None,
        help="hardware profile to run (default: detected from the device). A smaller profile on a bigger GPU is "
        "emulated: memory capped to its budget, FA3 off, records marked emulated.",
    )
    group.addoption(
        "--recipes", default=None, metavar="NAME,NAME",
        help="run only these recipes (comma-separated exact names, e.g. baseline,optimized); others are "
        "deselected. Use it to split a profile's matrix across several GPU jobs.",
    )
    group.addoption(
        "--rounds", type=positive_int, default=None,
        help="timed generations per recipe after warm-up (default: 5 on the tiny model, 3 at full size).",
    )
    group.addoption(
        "--results-dir", default=".results", metavar="DIR",
        help="where each recipe's record and thumbnails are written, under DIR/<profile>/ (default: .results).",
    )
    group.addoption(
        "--baselines-dir", default="baselines", metavar="DIR",
        help="stored baselines, one folder per profile (default: baselines).",
    )
    group.addoption(
        "--fail-on-regression", action="store_true",
        help="exit non-zero when the verdict table (this run against the stored baselines) shows a regression, an "
        "unreadable baseline, or compared nothing (no baseline of this profile, pool, model or settings); with "
        "--update-baselines, comparing nothing is a first recording and passes.",
    )
    group.addoption(
        "--update-baselines", action="store_true",
        help="write this run's records into the baselines folder (atomically).",
    )
    group.addoption(
        "--overwrite-foreign-baselines", action="store_true",
        help="with --update-baselines: allow replacing a baseline of another run (device, model source, settings "
        "or LoRA pool); its thumbnails go with it.",
    )
    group.addoption(
        "--clear-perf-cache", action="store_true",
        help="delete the cache folder before the run (everything is rebuilt on demand).",
    )
    group.addoption(
        "--no-churn", action="store_true",
        help="skip the LoRA churn (20 hot-swaps, each with a generation, and its fresh reference image) of compiled "
        "hot-swap recipes.",
    )
    group.addoption(
        "--no-serving", action="store_true",
        help="skip the serving scenarios of compiled hot-swap recipes (LoRA scale per request, resolutions, "
        "batches, resident adapters, two adapters at once: perf/run/serving/).",
    )
    group.addoption(
        "--serving", default=None, metavar="NAME,NAME",
        help="serve only these scenarios (comma-separated: scale, batches, resident, two, named, resolutions, "
        "resolutions_static, resolutions_dynamic; default: all); the others' tests skip. On a GPU each scenario "
        "compiles for minutes: split them across jobs, and join their records with python -m perf.report ... "
        "--serving-records.",
    )
    group.addoption(
        "--no-cold-start", action="store_true",
        help="skip the cold/warm start measurement of compiled hot-swap recipes (two extra processes per recipe, "
        "each compiling: the cold one from an empty compile cache, the warm one from the cache it filled).",
    )
    group.addoption(
        "--compile-budget", type=positive_seconds, default=None, metavar="SECONDS",
        help="longest a compiling first generation may take before the recipe fails with its elapsed time "
        "(default: the profile's: cpu 300, h100/h200 900, rtx4090 1200).",
    )
    group.addoption(
        "--clip-model", default=None, metavar="ID_OR_PATH",
        help="CLIP model for the CLIP score (e.g. openai/clip-vit-large-patch14 from the local cache); default: "
        "an embedded tiny CLIP, a smoke signal only.",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    for marker in HARDWARE_MARKERS:
        config.addinivalue_line("markers", f"{marker}: runs on the {marker} profile (skipped elsewhere)")
    config.addinivalue_line("markers", "slow: builds and compiles pipelines")
    config.stash[SESSION] = PerfSession.configure(config)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    perf = session.config.stash[SESSION]
    perf.start()
    if is_controller(session.config):  # xdist's controller collects nothing: check every case --recipes keeps
        names = perf.wanted_recipes
        params = [p.values[0] for p in case_params() + case_params(memory_controls=True)]
        perf.validate([p for p in params if names is None or p[1] in names])


def case_param(item: pytest.Item) -> tuple[str, str] | None:
    """The (profile, recipe) a test runs: its shared case's, or its memory control's; None for other tests."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    return params.get("case") or params.get("control")


def scenarios_together(items: list[pytest.Item]) -> None:
    """Every serving test of a case's scenario in one run, right after the scenario is served, so a GPU run cut
    off by its time limit has judged every scenario it served. Made here, not left to pytest's grouping by a
    module-scoped parameter: pytest 9.2 groups tests that take different lists of scenarios, 9.1 (the H200 image's)
    ran the tests over every scenario first and each scenario's own tests after. The serving tests keep their
    places in ``items``; among them, cases keep their order, scenarios the order they were parametrized in."""
    slots = [i for i, item in enumerate(items) if "scenario" in getattr(getattr(item, "callspec", None), "params", {})]
    serving = [items[i] for i in slots]
    cases: dict = {}
    scenarios: dict = {}
    for position, item in enumerate(serving):
        cases.setdefault(case_param(item), position)
        scenarios.setdefault(item.callspec.params["scenario"], position)
    serving.sort(key=lambda item: (cases[case_param(item)], scenarios[item.callspec.params["scenario"]]))
    for slot, item in zip(slots, serving, strict=True):
        items[slot] = item


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """--recipes deselects every other recipe's tests; the serving tests are ordered a scenario at a time."""
    names = config.stash[SESSION].wanted_recipes
    if names is not None:
        keep, drop = [], []
        for item in items:
            param = case_param(item)
            (drop if param is not None and param[1] not in names else keep).append(item)
        if drop:
            config.hook.pytest_deselected(items=drop)
            items[:] = keep
    scenarios_together(items)


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    """The input checked for the tests selected (xdist workers leave it to their controller)."""
    if worker_index() is None and not session.config.option.collectonly:
        session.config.stash[SESSION].validate({p for p in map(case_param, session.items) if p is not None})


def pytest_report_header(config: pytest.Config) -> list[str]:
    return config.stash[SESSION].header()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    report = yield
    item.config.stash[SESSION].record_check(item, report)
    return report


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int):
    """Around pytest-benchmark's (which saves its timings before it yields): an interrupted run drops the timing
    of the recipe cut off before that save, so no timing is stored without its record."""
    perf = session.config.stash.get(SESSION, None)
    if perf is not None:
        perf.finish(session, exitstatus)
    return (yield)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    perf = config.stash.get(SESSION, None)
    if perf is not None:
        perf.display(terminalreporter)


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_json(config: pytest.Config, benchmarks, output_json: dict) -> None:
    config.stash[SESSION].update_benchmark_json(output_json)


@pytest.hookimpl(optionalhook=True, wrapper=True)
def pytest_benchmark_compare_machine_info(config: pytest.Config, benchmarksession, machine_info: dict,
                                          compared_benchmark: dict):
    """pytest-benchmark's own warning about another machine names its storage relative to the working directory,
    and raises instead (an INTERNALERROR, exit 3) when the stored timings lie outside it: a --baselines-dir
    elsewhere, compared on a machine whose CPU or Python differs from the one that stored them. The warning is
    given here then, naming the folder; the verdict judges the records, whose device it checks itself."""
    try:
        return (yield)
    except ValueError as exc:
        if "is not in the subpath of" not in str(exc):
            raise
        benchmarksession.logger.warning(
            f"Benchmark machine_info is different from that of the stored timings in {benchmarksession.storage}")
        return []


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """Under ``-n N`` (xdist's ``load`` or ``loadgroup``), all tests of a recipe run on one worker."""
    if config.getoption("dist") not in ("load", "loadgroup"):
        return None
    return recipe_scheduler(config, log, {p.id for p in case_params() + case_params(memory_controls=True)})


@pytest.fixture(scope="session")
def suite(pytestconfig: pytest.Config) -> PerfSession:
    """The session object: tests reach the run's cases, options and measurements through it."""
    return pytestconfig.stash[SESSION]


def case_params(memory_controls: bool = False) -> list:
    """Every (profile, recipe) pair, marked with its hardware markers, as pytest params with readable ids (the
    id is also the pytest-xdist scope: a recipe's tests share one built pipeline, so one worker). Memory controls
    (recipes that must not fit) get their own test instead of the shared case."""
    params = []
    for recipe in RECIPES.values():
        if recipe.memory_control != memory_controls:
            continue
        for profile in recipe.profiles:
            marks = [getattr(pytest.mark, profile)] + ([] if profile == "cpu" else [pytest.mark.gpu])
            params.append(pytest.param((profile, recipe.name), marks=marks, id=f"{profile}-{recipe.name}"))
    return params
