"""The pytest face of the library: options, hardware markers, profile skips, and the fixtures tests use.

Loaded by the root ``conftest.py``. Each perf test is parametrized over (profile, recipe) pairs of every
profile, marked with the profile's marker, so ``pytest --collect-only -m h100`` lists the H100 rows anywhere
and a run skips the rows that are not for the device it found, saying what it needs and what it found.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import pytest

from perf.errors import SuiteError
from perf.judge import benchmark_storage
from perf.judge.baseline_files import atomic_write_bytes, now_iso, read_records
from perf.run.case import Case, CaseFailed, keep_record, open_case
from perf.run.churn import churn_pool, churn_sequence
from perf.run.cold_start import ColdStart, measure_cold_start
from perf.run.measure import assert_no_leak
from perf.run.stack_check import BROKEN_STACK_EXIT, LIBRARIES, StackCheck, check_imports, check_stack, write_check
from perf.spec.cache import cache_dir, clear_cache
from perf.spec.loras import LoraPool, synthetic_pool
from perf.spec.models import resolve_source
from perf.spec.profiles import HARDWARE_MARKERS, PROFILES, ActiveProfile, apply_memory_cap, resolve_profile
from perf.spec.recipes import RECIPES, Recipe, get_recipe, unsupported_reason
from perf.spec.run_spec import RUN_OPTIONS, RunSpec, add_run_options, resolve_run
from perf.spec.validate import positive_int, validate_run
from perf.workers import is_controller, pin_worker_gpu, recipe_scheduler, session_id, worker_index

DEFAULT_ROUNDS = {"tiny": 5, "full": 3}
LEAK_SLACK_GIB = 1.0  # allocator rounding and cuBLAS/cuDNN workspaces; a leaked pipeline is tens of GiB


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
        "--results-dir", default=None, metavar="DIR",
        help="where each recipe's record and thumbnails are written, under DIR/<profile>/ (default: .results).",
    )
    group.addoption(
        "--baselines-dir", default="baselines", metavar="DIR",
        help="stored baselines, one folder per profile (default: baselines).",
    )
    group.addoption(
        "--fail-on-regression", action="store_true",
        help="exit non-zero when the verdict table (this run against the stored baselines) shows a regression.",
    )
    group.addoption(
        "--update-baselines", action="store_true",
        help="write this run's records into the baselines folder (atomically).",
    )
    group.addoption(
        "--overwrite-foreign-baselines", action="store_true",
        help="with --update-baselines: allow replacing a baseline recorded on another device or model source.",
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
        "--no-cold-start", action="store_true",
        help="skip the cold/warm start measurement of compiled hot-swap recipes (two extra processes per recipe, "
        "each compiling: the cold one from an empty compile cache, the warm one from the cache it filled).",
    )
    group.addoption(
        "--compile-budget", type=float, default=None, metavar="SECONDS",
        help="longest a compiling first generation may take before the recipe fails with its elapsed time "
        "(default: the profile's: cpu 300, h100/h200 900, rtx4090 1200).",
    )
    group.addoption(
        "--clip-model", default=None, metavar="ID_OR_PATH",
        help="CLIP model for the CLIP score (e.g. openai/clip-vit-large-patch14 from the local cache); default: "
        "an embedded tiny CLIP, a smoke signal only.",
    )


@dataclass
class Suite:
    """The session's resolved options; builds the model source, LoRA pool and cases on demand. ``validate``
    checks them once before any test runs (``pytest_collection_finish``, or the xdist controller's
    ``pytest_sessionstart``), so the cases never meet a user's mistake."""

    config: pytest.Config
    active: ActiveProfile | None
    finished: dict = field(default_factory=dict)  # recipe name -> its record, as each case is saved

    def option(self, name: str):
        return self.config.getoption(name)

    @cached_property
    def spec(self) -> RunSpec:
        """The run the options describe (``perf.spec.run_spec``): built once, on first use."""
        return resolve_run(self.active, *(self.option(name) for name in RUN_OPTIONS))

    @cached_property
    def churn_pool(self) -> LoraPool:
        """The churn's adapters: six synthetic ones of mixed ranks and targets, or the user's pool."""
        spec = self.spec
        return spec.pool if self.option("--lora") else churn_pool(spec.source.size, spec.cache)

    @cached_property
    def stored_baselines(self) -> tuple[dict[str, dict], list]:
        """The baselines as they were when the session started: the verdict judges this run against them, also
        when --update-baselines replaces them as each recipe finishes."""
        return read_records(self.baselines_dir, self.active.name)

    def churn_sequence(self) -> list:
        return churn_sequence(self.churn_pool)

    @property
    def rounds(self) -> int:
        rounds = self.option("--rounds")
        return DEFAULT_ROUNDS[self.spec.source.size] if rounds is None else rounds

    @property
    def results_dir(self) -> Path:
        return Path(self.option("--results-dir") or ".results")

    @property
    def baselines_dir(self) -> Path:
        return Path(self.option("--baselines-dir"))

    def skip_reason(self, profile: str, recipe: Recipe) -> str | None:
        if self.active is None:
            from perf.spec.profiles import detect_device

            return f"needs {profile}, found {detect_device().name} (no profile for it; pass --profile)"
        if self.active.name != profile:
            return f"needs {profile}, found {self.active.describe()}"
        if recipe.opt_in and recipe.name not in (self.option("--recipes") or "").split(","):
            return f"opt-in row ({recipe.note}); run it with --recipes {recipe.name}"
        return unsupported_reason(recipe, self.active)

    def validate(self, params: Iterable[tuple[str, str]]) -> list[Recipe]:
        """Raise ``SuiteError`` if the model, the LoRA pool or the options cannot serve the (profile, recipe)
        cases of ``params`` that will run (nothing to check when none will: ``pytest tests/unit`` stays fast).
        Returns the recipes that will run."""
        if self.active is None:
            return []
        running = [get_recipe(name) for profile, name in params
                   if self.skip_reason(profile, get_recipe(name)) is None]
        if running:
            spec = self.spec
            validate_run(spec.source, spec.pool, spec.max_rank, any(r.hotswap for r in running))
        return running

    def check_stack(self, recipes: list[Recipe]) -> StackCheck:
        """The library stack against ``recipes``' kinds of pipeline, on the tiny model on this run's device."""
        spec = self.spec
        return check_stack(lambda: dataclasses.replace(spec, source=resolve_source("synthetic-tiny", "tiny"),
                                                       pool=synthetic_pool("tiny", spec.cache), max_rank=None),
                           recipes)

    def open_case(self, param: tuple[str, str]) -> Case:
        """Skip with the reason, or run the recipe's case. An out-of-memory keeps its record (results, and
        baselines when updating) before the error reaches the tests."""
        profile, name = param
        recipe = get_recipe(name)
        reason = self.skip_reason(profile, recipe)
        if reason:
            pytest.skip(reason)
        references = (self.spec.pool.adapters[1],) if recipe.hotswap else ()
        if self.runs_churn(recipe):
            references += (churn_sequence(self.churn_pool)[-1],)
        cold_start = self.measure_cold_start(recipe) if recipe.serves_hotswap else None
        try:
            case = open_case(self.spec, recipe, self.progress, references)
        except CaseFailed as failed:
            self.keep(failed.record, {})
            raise
        case.add_cold_start(cold_start)
        case.save(self.results_dir, None, overwrite_foreign=True)  # now, so a job cut off later still has it
        return case

    def runs_churn(self, recipe: Recipe) -> bool:
        return recipe.serves_hotswap and not self.option("--no-churn")

    def measure_cold_start(self, recipe: Recipe) -> ColdStart | str | None:
        """Cold and warm start in child processes, before this recipe's pipeline exists in this one (the GPU
        holds one pipeline at a time). A failure is kept as its message for the cold-start test to report."""
        if self.option("--no-cold-start"):
            return None
        budget = self.active.profile.compile_budget_s
        options = {**{name: self.option(name) for name in RUN_OPTIONS}, "--perf-cache": self.spec.cache,
                   "--compile-budget": budget}
        try:
            return measure_cold_start(recipe.name, self.active.name, self.spec.cache, options,
                                      timeout_s=2 * (budget or 1800), progress=self.progress)
        except SuiteError as exc:
            return str(exc)

    @property
    def baselines_to_update(self) -> Path | None:
        """The baselines folder when ``--update-baselines`` asks for records to be written there."""
        return self.baselines_dir if self.option("--update-baselines") else None

    def close_case(self, case: Case) -> None:
        """Save the case's record, release its pipeline, and check its memory came back."""
        case.save(self.results_dir, self.baselines_to_update, self.option("--overwrite-foreign-baselines"))
        self.finished[case.recipe.name] = case.record
        device = case.built.device_type
        case.release()
        assert_no_leak(case.record["memory_at_start_gib"], device, LEAK_SLACK_GIB)

    def session_records(self) -> dict[str, dict]:
        """The records this run wrote (by any worker), by recipe name."""
        found, _ = read_records(self.results_dir, self.active.name)  # an unreadable file is no known session's
        return {name: record for name, record in found.items() if record.get("session") == session_id()}

    def keep(self, record: dict, images: dict) -> None:
        keep_record(record, images, self.results_dir, self.baselines_to_update,
                    self.option("--overwrite-foreign-baselines"))
        self.finished[record["recipe"]["name"]] = record

    def progress(self, message: str) -> None:
        """A line on the terminal now, past pytest's output capture: GPU rows take minutes each."""
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        capture = self.config.pluginmanager.get_plugin("capturemanager")
        if reporter is None or capture is None:
            print(message, file=sys.stderr)
            return
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"  {message}")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    pin_worker_gpu()  # before anything starts CUDA in a pytest-xdist worker
    session_id()
    for marker in HARDWARE_MARKERS:
        config.addinivalue_line("markers", f"{marker}: runs on the {marker} profile (skipped elsewhere)")
    config.addinivalue_line("markers", "slow: builds and compiles pipelines")
    if config.getoption("--clear-perf-cache"):
        removed = clear_cache(config.getoption("--perf-cache"))
        print(f"flux-lora-perf: removed cache {removed}", file=sys.stderr)
    try:
        active = resolve_profile(config.getoption("--profile"))
        if active is not None and config.getoption("--compile-budget"):
            budget = config.getoption("--compile-budget")
            active = dataclasses.replace(active, profile=dataclasses.replace(active.profile, compile_budget_s=budget))
        if config.getoption("--recipes"):
            for name in config.getoption("--recipes").split(","):
                if name.strip():
                    get_recipe(name.strip())
    except SuiteError as exc:
        raise pytest.UsageError(str(exc)) from None
    stop_on_broken_stack(check_imports(LIBRARIES), Path(config.getoption("--results-dir") or ".results"),
                         active.name if active else "no-profile")
    _quiet_libraries()
    if active is not None:
        apply_memory_cap(active)
        _benchmark_storage_per_profile(config, active.name)
    # Compiled artifacts live in the suite's cache folder too (warm starts; one folder to clear).
    cache = cache_dir(config.getoption("--perf-cache"))
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache / "inductor"))
    os.environ.setdefault("TRITON_CACHE_DIR", str(cache / "triton"))
    config.stash[SUITE] = Suite(config, active)


SUITE = pytest.StashKey[Suite]()


def _quiet_libraries() -> None:
    """No download/loading progress bars, and no per-load "no LoRA keys for the text encoder" warning (the
    suite's adapters are transformer-only by design): the suite prints its own progress."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
DEFAULT_BENCHMARK_STORAGE = "file://./.benchmarks"
COMPARE_NOTE = pytest.StashKey[str]()


def _benchmark_storage_per_profile(config: pytest.Config, profile: str) -> None:
    """pytest-benchmark's storage is the profile's stored baselines (``perf.judge.benchmark_storage``), unless the user
    names another with --benchmark-storage; --update-baselines saves there, and a bare --benchmark-compare is
    pointed at the newest stored file, or says in one line that there is none."""
    option = config.option
    if not hasattr(option, "benchmark_storage"):
        return  # pytest-benchmark is not loaded (-p no:benchmark)
    folder = benchmark_storage.benchmarks_folder(config.getoption("--baselines-dir"), profile)
    if option.benchmark_storage == DEFAULT_BENCHMARK_STORAGE:
        option.benchmark_storage = f"file://{folder}"
    if config.getoption("--update-baselines") and not option.benchmark_save:
        option.benchmark_save = benchmark_storage.SAVE_NAME
    if option.benchmark_compare is True and option.benchmark_storage == f"file://{folder}":
        latest = benchmark_storage.latest_baseline(folder)
        if latest is None:
            config.stash[COMPARE_NOTE] = (
                f"--benchmark-compare: nothing to compare against: no stored {profile} timings under {folder} "
                "(record them with --update-baselines)"
            )
        else:
            option.benchmark_compare = str(latest)
            config.stash[COMPARE_NOTE] = f"--benchmark-compare: against {latest}"


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_json(config: pytest.Config, benchmarks, output_json: dict) -> None:
    """A stored baseline keeps the recipes this run did not time (the newest file is always complete)."""
    if not config.getoption("--update-baselines"):
        return
    suite = config.stash[SUITE]
    folder = benchmark_storage.benchmarks_folder(suite.baselines_dir, suite.active.name)
    stored = [json.loads(path.read_text()) for path in benchmark_storage.stored_baselines(folder)]
    output_json.update(benchmark_storage.merged_with_stored(output_json, stored))


def verdict_lines(suite: Suite) -> tuple[list[str], bool]:
    """This run's records against the stored baselines of the same profile: table lines, and whether the gate
    fails (a regression, or a recipe of this run whose baseline file cannot be read: the other recipes are
    still judged, and the broken file is named with its fix)."""
    from perf.judge.compare import any_error, any_regression, compare_records, format_table

    stored, unreadable = suite.stored_baselines
    baselines = {name: stored[name] for name in suite.finished if name in stored}
    broken = [record for record in unreadable if record.recipe in suite.finished]
    if not baselines and not broken:
        return ["no stored baseline for the recipes run; record them with --update-baselines"], False
    verdicts = compare_records(baselines, {name: suite.finished[name] for name in baselines}, unreadable=broken)
    return format_table(verdicts).splitlines(), any_regression(verdicts) or any_error(verdicts)


def write_session_summary(session: pytest.Session, exitstatus: int) -> None:
    """The whole run's wall time beside its records: what a GPU job costs matters as much as each row."""
    suite = session.config.stash.get(SUITE, None)
    folder = suite.results_dir / suite.active.name if suite and suite.active else None
    if folder is None or not folder.is_dir():
        return
    summary = {
        "wall_seconds": time.perf_counter() - session.config.stash[STARTED],
        "exit_status": int(exitstatus),
        "profile": suite.active.describe(),
        "command": " ".join(sys.argv),
        "date": now_iso(),
    }
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    summary["worker"] = worker
    path = folder / "sessions" / f"session-{summary['date'].replace(':', '')}{'-' + worker if worker else ''}.json"
    atomic_write_bytes(path, json.dumps(summary, indent=1).encode())


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    write_session_summary(session, exitstatus)
    suite = session.config.stash.get(SUITE, None)
    if suite is not None and suite.active is not None and is_controller(session.config):
        suite.finished.update(suite.session_records())  # the workers ran the recipes
    if suite is None or not suite.finished:
        return
    lines, failed = verdict_lines(suite)
    session.config.stash[VERDICT] = lines
    if failed and session.config.getoption("--fail-on-regression"):
        lines.append("regression or unreadable baseline found: failing the run (--fail-on-regression)")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    note = config.stash.get(COMPARE_NOTE, None)
    if note:
        terminalreporter.write_line(f"flux-lora-perf: {note}")
    lines = config.stash.get(VERDICT, None)
    if lines:
        suite = config.stash[SUITE]
        terminalreporter.section(f"flux-lora-perf verdict vs {suite.baselines_dir}/{suite.active.name}")
        for line in lines:
            terminalreporter.write_line(line)


VERDICT = pytest.StashKey[list]()


def wanted_recipes(config: pytest.Config) -> set[str] | None:
    """The recipe names ``--recipes`` keeps (validated in pytest_configure), or None: all."""
    wanted = config.getoption("--recipes")
    return {n.strip() for n in wanted.split(",") if n.strip()} if wanted else None


def case_param(item: pytest.Item) -> tuple[str, str] | None:
    """The (profile, recipe) a test runs: its shared case's, or its memory control's; None for other tests."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    return params.get("case") or params.get("control")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    names = wanted_recipes(config)
    if names is None:
        return
    keep, drop = [], []
    for item in items:
        param = case_param(item)
        (drop if param is not None and param[1] not in names else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def validate_session(config: pytest.Config, params: Iterable[tuple[str, str]]) -> None:
    """A mistake in the run's input stops it once (exit 4, one ``ERROR:`` line), before any test runs; then a
    broken library stack stops it (``stop_on_broken_stack``)."""
    suite = config.stash[SUITE]
    try:
        running = suite.validate(params)
    except SuiteError as exc:
        raise pytest.UsageError(str(exc)) from None
    if running:
        stop_on_broken_stack(suite.check_stack(running), suite.results_dir, suite.active.name)


def stop_on_broken_stack(check: StackCheck, results_dir: Path, profile: str) -> None:
    """A stack that fails ``perf.run.stack_check`` ends the run before any test: its record, one message, exit
    ``BROKEN_STACK_EXIT`` (6). A passing full check is recorded too, so a verdict knows the check ran."""
    if check.ok and not check.recipes:
        return  # the early import check: the full one records the outcome
    path = write_check(results_dir / profile, check)
    if not check.ok:
        pytest.exit(f"flux-lora-perf: {check.message()} Record: {path}", returncode=BROKEN_STACK_EXIT)


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    """The input checked for the tests selected (xdist workers leave it to their controller)."""
    if worker_index() is None and not session.config.option.collectonly:
        validate_session(session.config, {p for p in map(case_param, session.items) if p is not None})


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[STARTED] = time.perf_counter()
    suite = session.config.stash[SUITE]
    if suite.active is not None:
        suite.stored_baselines  # noqa: B018 - read now: --update-baselines rewrites them as recipes finish
    if is_controller(session.config):  # xdist's controller collects nothing: check every case --recipes keeps
        names = wanted_recipes(session.config)
        params = [p.values[0] for p in case_params() + case_params(memory_controls=True)]
        validate_session(session.config, [p for p in params if names is None or p[1] in names])


STARTED = pytest.StashKey[float]()


def pytest_report_header(config: pytest.Config) -> list[str]:
    suite = config.stash[SUITE]
    if suite.active is None:
        return ["flux-lora-perf: no profile for this device; hardware tests skip (pass --profile)"]
    lines = [f"flux-lora-perf: profile {suite.active.describe()}"]
    if suite.active.emulated:
        lines.append(f"flux-lora-perf: emulated, memory capped to {suite.active.profile.memory_budget_gib} GiB")
    return lines


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    """Each test of a recipe's case leaves its outcome in the record's ``checks`` (passed, failed or skipped):
    what a check concluded comes from pytest's report, never from a flag a test wrote by hand."""
    report = yield
    case = getattr(item, "funcargs", {}).get("case")
    if report.when == "call" and isinstance(case, Case):
        case.record["checks"][item.name.split("[")[0]] = report.outcome
    return report


@pytest.fixture(scope="session")
def suite(pytestconfig: pytest.Config) -> Suite:
    return pytestconfig.stash[SUITE]


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """Under ``-n N`` (xdist's ``load`` or ``loadgroup``), all tests of a recipe run on one worker."""
    if config.getoption("dist") not in ("load", "loadgroup"):
        return None
    return recipe_scheduler(config, log, {p.id for p in case_params() + case_params(memory_controls=True)})


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
