"""The pytest session of the suite: one object that owns the run's state, opens and closes each recipe's case, and
ends with the verdict and the terminal summary. ``perf.plugin`` declares the options and hooks and forwards each
hook here (pytest-benchmark's shape: its ``plugin.py`` over its ``BenchmarkSession``).

Its options are resolved once (``configure``) and checked once before any test runs (``validate``), so the cases
never meet a user's mistake: that is one ``pytest.UsageError`` (exit 4).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import pytest

from perf.errors import SuiteError
from perf.judge import benchmark_storage
from perf.judge.baseline_files import (
    UnreadableRecord,
    atomic_write_bytes,
    comparable,
    now_iso,
    read_record,
    read_records,
    record_path,
    refuse_foreign,
)
from perf.judge.record import COMPLETED, Outcome, PeakMemory, RunRecord
from perf.judge.serving_record import ServingResult
from perf.judge.stack_record import BROKEN_STACK_EXIT, StackCheck
from perf.run.case import Case, CaseFailed, WrongAdapterCheck, keep_record, open_case
from perf.run.checks import over_budget
from perf.run.churn import ChurnResult, churn_pool, churn_sequence
from perf.run.cold_start import ColdStart, measure_cold_start
from perf.run.measure import assert_no_leak
from perf.run.quality import QualityResult, load_clip_scorer
from perf.run.recording import identity
from perf.run.serving import KEEPS_RESIDENT, SCENARIOS
from perf.run.stack_check import LIBRARIES, check_imports, check_stack, write_check
from perf.spec.cache import cache_dir, clear_cache
from perf.spec.loras import LoraAdapter, LoraPool, synthetic_pool
from perf.spec.models import resolve_source
from perf.spec.profiles import ActiveProfile, apply_memory_cap, resolve_profile
from perf.spec.recipes import Recipe, get_recipe, unsupported_reason
from perf.spec.run_spec import RUN_OPTIONS, RunSpec, resolve_run
from perf.spec.validate import recipe_names, serving_scenarios, validate_paths, validate_run
from perf.workers import is_controller, pin_worker_gpu, session_id

DEFAULT_ROUNDS = {"tiny": 5, "full": 3}
LEAK_SLACK_GIB = 1.0  # allocator rounding and cuBLAS/cuDNN workspaces; a leaked pipeline is tens of GiB
DEFAULT_BENCHMARK_STORAGE = "file://./.benchmarks"


@dataclass(frozen=True)
class MemoryControl:
    """The memory budget's negative control: how the recipe that must not fit ended, and its peak."""

    outcome: Outcome
    budget_gib: float | None
    peak: PeakMemory | None
    over_budget: str | None  # why the completed run's peak broke the budget; None: it fit (or did not complete)


def verdict_lines(stored: tuple[Mapping[str, RunRecord], list[UnreadableRecord]],
                  finished: Mapping[str, RunRecord], folder: Path, first_recording: bool,
                  torn: Iterable[benchmark_storage.TornPair] = ()) -> tuple[list[str], bool]:
    """This run's records against the stored baselines of the same profile in ``folder``: table lines, and whether
    the gate fails (``perf.judge.compare.gate_problem``: a regression, a recipe of this run whose baseline file
    cannot be read, or no recipe compared at all, unless this run records them with --update-baselines). A
    baseline out of step with its stored timing (``torn``) is a row saying so and how to mend it."""
    from perf.judge.compare import compare_records, format_table, gate_problem

    records, unreadable = stored
    baselines = {name: records[name] for name in finished if name in records}
    broken = [record for record in unreadable if record.recipe in finished]
    verdicts = compare_records(baselines, finished, unreadable=broken,
                               torn=[pair for pair in torn if pair.recipe in finished])
    problem = gate_problem(verdicts, folder, first_recording)
    return format_table(verdicts).splitlines() + ([problem] if problem else []), problem is not None


def check_name(item: pytest.Item) -> str:
    """A test's key in its case's ``checks``: the function's name, with its parameters other than the case where
    it has any (``test_x[scale]``), so one scenario's failure is not overwritten by the next scenario's pass."""
    callspec = getattr(item, "callspec", None)
    params = [str(value) for name, value in (callspec.params.items() if callspec else ()) if name != "case"]
    name = getattr(item, "originalname", None) or item.name.split("[")[0]
    return f"{name}[{'-'.join(params)}]" if params else name


def stop_on_broken_stack(check: StackCheck, results_dir: Path, profile: str) -> None:
    """A stack that fails ``perf.run.stack_check`` ends the run before any test: its record, one message, exit
    ``BROKEN_STACK_EXIT`` (6). A passing full check is recorded too, so a verdict knows the check ran."""
    if check.ok and not check.recipes:
        return  # the early import check: the full one records the outcome
    path = write_check(results_dir / profile, check)
    if not check.ok:
        pytest.exit(f"flux-lora-perf: {check.message()} Record: {path}", returncode=BROKEN_STACK_EXIT)


def _quiet_libraries() -> None:
    """No download/loading progress bars, and no per-load "no LoRA keys for the text encoder" warning (the
    suite's adapters are transformer-only by design): the suite prints its own progress."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


@dataclass
class PerfSession:
    """The session's resolved options and state: builds the model source, LoRA pool and cases on demand, keeps
    each finished recipe's record, and judges them against the baselines as they were when the session started."""

    config: pytest.Config
    active: ActiveProfile | None
    finished: dict[str, RunRecord] = field(default_factory=dict)  # recipe name -> its record, as each is saved
    started: float = field(default_factory=time.perf_counter)
    compare_note: str | None = None  # what a bare --benchmark-compare compares against
    verdict: list[str] = field(default_factory=list)
    stopped: str | None = None  # interrupted: what was kept; a case torn down now is cut off and not saved

    @classmethod
    def configure(cls, config: pytest.Config) -> PerfSession:
        """The session of ``config``'s options: the profile resolved (emulated when asked), the memory cap set,
        pytest-benchmark's storage pointed at the profile's baselines, compiled artifacts kept in the suite's
        cache folder (warm starts; one folder to clear). A bad option is a ``pytest.UsageError``."""
        pin_worker_gpu()  # before anything starts CUDA in a pytest-xdist worker
        session_id()
        try:
            validate_paths(*(Path(config.getoption(name)) for name in ("--results-dir", "--baselines-dir")),
                           config.getoption("--update-baselines"), config.getoption("--perf-cache"),
                           config.getoption("--clip-model"), config.rootpath)
            recipe_names(config.getoption("--recipes"))
            serving_scenarios(config.getoption("--serving"), tuple(SCENARIOS), config.getoption("--no-serving"))
            active = resolve_profile(config.getoption("--profile"))
            budget = config.getoption("--compile-budget")
            if active is not None and budget:
                active = dataclasses.replace(active, profile=dataclasses.replace(active.profile,
                                                                                  compile_budget_s=budget))
        except SuiteError as exc:
            raise pytest.UsageError(str(exc)) from None
        stop_on_broken_stack(check_imports(LIBRARIES), Path(config.getoption("--results-dir")),
                             active.name if active else "no-profile")
        _quiet_libraries()
        if config.getoption("--clear-perf-cache"):
            removed = clear_cache(config.getoption("--perf-cache"))
            print(f"flux-lora-perf: removed cache {removed}", file=sys.stderr)
        session = cls(config, active)
        if active is not None:
            apply_memory_cap(active)
            session.use_profile_benchmark_storage()
        cache = cache_dir(config.getoption("--perf-cache"))
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache / "inductor"))
        os.environ.setdefault("TRITON_CACHE_DIR", str(cache / "triton"))
        return session

    def option(self, name: str):
        return self.config.getoption(name)

    # --- the run's input --------------------------------------------------------------------------------------

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
    def stored_baselines(self) -> tuple[dict[str, RunRecord], list[UnreadableRecord]]:
        """The baselines as they were when the session started: the verdict judges this run against them, also
        when --update-baselines replaces them as each recipe finishes."""
        return read_records(self.baselines_dir, self.active.name)

    @cached_property
    def stored_torn(self) -> list[benchmark_storage.TornPair]:
        """The stored baselines out of step with their stored pytest-benchmark timings when the session started
        (a run killed between writing the two): rows of the verdict, with the fix, for the recipes this run has."""
        return benchmark_storage.torn_pairs(self.baselines_dir, self.active.name, self.stored_baselines[0])

    @property
    def rounds(self) -> int:
        rounds = self.option("--rounds")
        return DEFAULT_ROUNDS[self.spec.source.size] if rounds is None else rounds

    @property
    def results_dir(self) -> Path:
        return Path(self.option("--results-dir"))

    @property
    def baselines_dir(self) -> Path:
        return Path(self.option("--baselines-dir"))

    @property
    def baselines_to_update(self) -> Path | None:
        """The baselines folder when ``--update-baselines`` asks for records to be written there."""
        return self.baselines_dir if self.option("--update-baselines") else None

    @property
    def first_recording(self) -> bool:
        """--update-baselines: this run records the baselines, so comparing nothing is expected, not a failure."""
        return bool(self.option("--update-baselines"))

    @property
    def wanted_recipes(self) -> set[str] | None:
        """The recipe names ``--recipes`` keeps (validated in ``configure``), or None: all."""
        names = recipe_names(self.option("--recipes"))
        return None if names is None else set(names)

    def skip_reason(self, profile: str, recipe: Recipe) -> str | None:
        if self.active is None:
            from perf.spec.profiles import detect_device

            return f"needs {profile}, found {detect_device().name} (no profile for it; pass --profile)"
        if self.active.name != profile:
            return f"needs {profile}, found {self.active.describe()}"
        if recipe.opt_in and recipe.name not in (self.option("--recipes") or "").split(","):
            return f"opt-in row ({recipe.note}); run it with --recipes {recipe.name}"
        return unsupported_reason(recipe, self.active)

    def validate(self, params: Iterable[tuple[str, str]]) -> None:
        """A mistake in the model, the LoRA pool or the options for the (profile, recipe) cases of ``params`` that
        will run stops the run once (exit 4, one ``ERROR:`` line), before any test (nothing to check when none
        will run: ``pytest tests/unit`` stays fast)."""
        if self.active is None:
            return
        running = [get_recipe(name) for profile, name in params
                   if self.skip_reason(profile, get_recipe(name)) is None]
        if running:
            try:
                spec = self.spec
                validate_run(spec.source, spec.pool, spec.max_rank, any(r.hotswap for r in running))
                if self.baselines_to_update and not self.option("--overwrite-foreign-baselines"):
                    refuse_foreign(self.baselines_to_update, (identity(recipe, spec) for recipe in running))
            except SuiteError as exc:
                raise pytest.UsageError(str(exc)) from None
            stop_on_broken_stack(self.check_stack(running), self.results_dir, self.active.name)

    def check_stack(self, recipes: list[Recipe]) -> StackCheck:
        """The library stack against ``recipes``' kinds of pipeline, on the tiny model on this run's device."""
        spec = self.spec
        return check_stack(lambda: dataclasses.replace(spec, source=resolve_source("synthetic-tiny", "tiny"),
                                                       pool=synthetic_pool("tiny", spec.cache), max_rank=None),
                           recipes)

    # --- cases ------------------------------------------------------------------------------------------------

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
        case.cold_start = cold_start
        case.save(self.results_dir, None, overwrite_foreign=True)  # now, so a job cut off later still has it
        return case

    def close_case(self, case: Case) -> None:
        """Save the case's record, release its pipeline, and check its memory came back."""
        if self.stopped:
            case.release()
            return
        case.save(self.results_dir, self.baselines_to_update, self.option("--overwrite-foreign-baselines"))
        self.save_timings()
        record = case.record
        self.finished[record.name] = record
        device = case.built.device_type
        case.release()
        assert_no_leak(record.memory_at_start_gib, device, LEAK_SLACK_GIB)

    def save_timings(self) -> None:
        """With --update-baselines, pytest-benchmark's stored timings are saved right after each recipe's record
        (its own ``handle_saving``, into the session's one file: ``benchmark_storage.save_atomically``), not only
        when the session ends: a job killed later (a time limit, the out-of-memory killer) leaves every finished
        recipe's record and timing in step. A kill between the two writes leaves a pair that the next run reports
        (``benchmark_storage.torn_pairs``)."""
        timing = getattr(self.config, "_benchmarksession", None)
        if self.baselines_to_update and timing is not None and timing.save and not timing.disabled \
                and timing.benchmarks:
            timing.handle_saving()

    def keep(self, record: RunRecord, images: dict) -> None:
        keep_record(record, images, self.results_dir, self.baselines_to_update,
                    self.option("--overwrite-foreign-baselines"))
        self.finished[record.name] = record

    def runs_churn(self, recipe: Recipe) -> bool:
        return recipe.serves_hotswap and not self.option("--no-churn")

    def runs_serving(self, recipe: Recipe) -> bool:
        return recipe.serves_hotswap and not self.option("--no-serving")

    def left_out(self, scenario: str) -> str | None:
        """Why ``--serving`` leaves ``scenario`` out of this run, or None where it is served."""
        wanted = serving_scenarios(self.option("--serving"), tuple(SCENARIOS))
        return None if wanted is None or scenario in wanted else f"--serving {','.join(wanted)} leaves {scenario} out"

    def serve(self, case: Case, scenario: str) -> ServingResult:
        """``case``'s serving scenario ``scenario`` (run once), its record rewritten in the results folder as soon as
        it is done: on a GPU each scenario compiles graphs for minutes, and a job cut off at its time limit keeps
        every scenario it finished."""
        fresh = scenario not in case.serving_results
        resident = self.resident_adapters() if scenario in KEEPS_RESIDENT else []
        result = case.serving(scenario, resident, self.progress)
        if fresh:
            case.save(self.results_dir, None, overwrite_foreign=True)
        return result

    def resident_adapters(self) -> list[LoraAdapter]:
        """The candidates for the resident scenarios' eight adapters: the main pool's, then the churn's (every one a
        subset of the first adapter's targets); the scenario keeps those peft hot-swaps (``perf.run.serving``)."""
        return list(dict.fromkeys((*self.spec.pool.adapters, *self.churn_pool.adapters)))

    def churn(self, case: Case) -> ChurnResult:
        """The LoRA churn of ``case`` over the session's churn pool (run once per case)."""
        return case.churn(churn_sequence(self.churn_pool), self.progress)

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

    def memory_control(self, param: tuple[str, str]) -> MemoryControl:
        """Run the recipe that must not fit the budget (bf16, no offload) through its whole case: how it ended,
        and, if it completed, whether its peak broke the budget."""
        budget = self.active.profile.memory_budget_gib if self.active else None
        try:
            case = self.open_case(param)
        except CaseFailed as failed:
            return MemoryControl(failed.record.outcome, budget, failed.record.peak_memory, None)
        try:
            peak = case.scenario.peak
            return MemoryControl(COMPLETED, budget, peak, over_budget(peak, budget, self.active.name))
        finally:
            self.close_case(case)

    # --- image quality ----------------------------------------------------------------------------------------

    def stored_baseline(self, case: Case) -> tuple[RunRecord | None, str | None]:
        """The stored record of the case's (profile, recipe), or None with the reason it cannot serve."""
        try:
            stored = read_record(record_path(self.baselines_dir, self.active.name, case.recipe.name))
        except SuiteError as exc:
            return None, str(exc)
        reason = comparable(stored, case.measured)
        return (None, reason) if reason else (stored, None)

    def assess_quality(self, case: Case) -> dict[str, QualityResult]:
        """The case's images against the stored baseline (when comparable) and this run's baseline row."""
        stored, _ = self.stored_baseline(case)
        scorer = load_clip_scorer(self.option("--clip-model"), self.spec.cache)
        row_dir = self.results_dir / self.active.name if "baseline" in self.finished else None
        return case.assess_quality(scorer, stored, self.baselines_dir / self.active.name, row_dir)

    def wrong_adapter_quality(self, case: Case) -> WrongAdapterCheck | str:
        """The quality gate's negative control on ``case``, or why it cannot run (the skip reason)."""
        stored, why = self.stored_baseline(case)
        if stored is None:
            return f"no usable stored baseline to compare against: {why}"
        scorer = load_clip_scorer(self.option("--clip-model"), self.spec.cache)
        check = case.wrong_adapter_quality(scorer, stored, self.baselines_dir / self.active.name)
        return check or f"{case.recipe.name} has fewer than two adapters' references stored"

    def progress(self, message: str) -> None:
        """A line on the terminal now, past pytest's output capture, with the seconds since the session started: GPU
        rows take minutes each, and a log cut off by a job's limit still says where the time went."""
        message = f"[{time.perf_counter() - self.started:4.0f} s] {message}"
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        capture = self.config.pluginmanager.get_plugin("capturemanager")
        if reporter is None or capture is None:
            print(message, file=sys.stderr)
            return
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"  {message}")

    # --- hooks ------------------------------------------------------------------------------------------------

    def use_profile_benchmark_storage(self) -> None:
        """pytest-benchmark's storage is the profile's stored baselines (``perf.judge.benchmark_storage``), unless
        the user names another with --benchmark-storage; --update-baselines saves there, and a bare
        --benchmark-compare is pointed at the newest stored file, or says in one line that there is none."""
        option = self.config.option
        if not hasattr(option, "benchmark_storage"):
            return  # pytest-benchmark is not loaded (-p no:benchmark)
        profile = self.active.name
        folder = benchmark_storage.benchmarks_folder(self.option("--baselines-dir"), profile)
        updating = self.option("--update-baselines")
        if option.benchmark_storage == DEFAULT_BENCHMARK_STORAGE and (updating or folder.is_dir()):
            option.benchmark_storage = f"file://{folder}"  # pytest-benchmark creates it: only where it is written
        if updating and not option.benchmark_save:
            option.benchmark_save = benchmark_storage.SAVE_NAME
        if option.benchmark_compare is True and option.benchmark_storage in (DEFAULT_BENCHMARK_STORAGE,
                                                                             f"file://{folder}"):
            latest = benchmark_storage.latest_baseline(folder)
            if latest is None:
                self.compare_note = (
                    f"--benchmark-compare: nothing to compare against: no stored {profile} timings under {folder} "
                    "(record them with --update-baselines)"
                )
            else:
                option.benchmark_compare = str(latest)
                self.compare_note = f"--benchmark-compare: against {latest}"

    def update_benchmark_json(self, output_json: dict) -> None:
        """A stored baseline keeps the recipes this run did not time (the newest file is always complete)."""
        if not self.option("--update-baselines"):
            return
        folder = benchmark_storage.benchmarks_folder(self.baselines_dir, self.active.name)
        stored, unreadable = benchmark_storage.read_stored(folder)
        for path in unreadable:
            self.progress(f"flux-lora-perf: {path} cannot be read (cut short?): left out of the new stored timings")
        output_json.update(benchmark_storage.merged_with_stored(output_json, stored.values()))

    def start(self) -> None:
        """The session starts: the clock, and the baselines read before --update-baselines rewrites them."""
        self.started = time.perf_counter()
        benchmark_storage.save_atomically(getattr(getattr(self.config, "_benchmarksession", None), "storage", None))
        if self.active is not None:
            self.stored_torn  # noqa: B018 - read now (with the records): --update-baselines rewrites them

    def record_check(self, item: pytest.Item, report: pytest.TestReport) -> None:
        """Each test of a recipe's case leaves its outcome in the record's ``checks`` (passed, failed, skipped or
        xfailed): what a check concluded comes from pytest's report, never from a flag a test wrote by hand."""
        case = getattr(item, "funcargs", {}).get("case")
        if report.when == "call" and isinstance(case, Case):
            xfailed = report.skipped and hasattr(report, "wasxfail")  # pytest reports an expected failure as skipped
            case.checks[check_name(item)] = "xfailed" if xfailed else report.outcome

    def header(self) -> list[str]:
        if self.active is None:
            return ["flux-lora-perf: no profile for this device; hardware tests skip (pass --profile)"]
        lines = [f"flux-lora-perf: profile {self.active.describe()}"]
        if self.active.emulated:
            lines.append(f"flux-lora-perf: emulated, memory capped to {self.active.profile.memory_budget_gib} GiB")
        return lines

    def session_records(self) -> dict[str, RunRecord]:
        """The records this run wrote (by any worker), by recipe name."""
        found, _ = read_records(self.results_dir, self.active.name)  # an unreadable file is no known session's
        return {name: record for name, record in found.items() if record.session == session_id()}

    def write_summary(self, exitstatus: int) -> None:
        """The whole run's wall time beside its records: what a GPU job costs matters as much as each row."""
        folder = self.results_dir / self.active.name if self.active else None
        if folder is None or not folder.is_dir():
            return
        worker = os.environ.get("PYTEST_XDIST_WORKER")
        summary = {
            "wall_seconds": time.perf_counter() - self.started,
            "exit_status": int(exitstatus),
            "profile": self.active.describe(),
            "command": " ".join(sys.argv),
            "date": now_iso(),
            "worker": worker,
        }
        path = folder / "sessions" / f"session-{summary['date'].replace(':', '')}{'-' + worker if worker else ''}.json"
        atomic_write_bytes(path, json.dumps(summary, indent=1).encode())

    def finish(self, session: pytest.Session, exitstatus: int) -> None:
        """The run's summary file, then the verdict of every recipe this run finished (the workers', on the xdist
        controller); with --fail-on-regression a regression or an unreadable baseline fails the run."""
        self.write_summary(exitstatus)
        if self.active is not None and is_controller(self.config):
            self.finished.update(self.session_records())  # the workers ran the recipes
        if exitstatus == pytest.ExitCode.INTERRUPTED and self.active is not None:
            self.stopped = self.interrupted()
            timings = getattr(getattr(self.config, "_benchmarksession", None), "benchmarks", [])
            # the recipe cut off has no record: its timing (no rounds, or only some) is not saved either
            timings[:] = [bench for bench in timings if bench.stats.data and bench.extra_info.get("recipe") in
                          self.finished]
        if not self.finished:
            return
        lines, failed = verdict_lines(self.stored_baselines, self.finished, self.baselines_dir / self.active.name,
                                      self.first_recording, self.stored_torn)
        if failed and self.option("--fail-on-regression"):
            lines.append("failing the run (--fail-on-regression)")
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        self.verdict = lines

    def interrupted(self) -> str:
        """What an interrupted run kept, in one line: each finished recipe's record (and, when updating, its
        baseline and timing) was written whole; the recipe cut off and those not reached were not."""
        done = sorted(self.finished)
        kept = f"kept the records of {', '.join(done)} in {self.results_dir}" if done else "kept no record"
        if done and self.baselines_to_update:
            kept += f" and as baselines (with their timings) in {self.baselines_to_update}"
        return f"flux-lora-perf: interrupted: {kept}; the recipe cut off and those not reached were not saved"

    def findings(self) -> list[str]:
        """What the libraries cannot do with LoRA adapters, as this run's records name it, each finding once."""
        found = {(f.subject, f.problem): f for record in self.finished.values() for f in record.lora_findings}
        serving = {f"{name} (serving): {result.finding}": None for name, record in sorted(self.finished.items())
                   for result in record.serving.values() if result.finding}
        return [f"{f.subject}: {f.problem} ({', '.join(f'{name} {v}' for name, v in f.versions.items())})"
                for f in found.values()] + list(serving)

    def display(self, terminalreporter) -> None:
        findings = self.findings()
        if findings:
            terminalreporter.section("flux-lora-perf findings (in the records' lora_findings and serving)")
            for line in findings:
                terminalreporter.write_line(f"- {line}")
        if self.stopped:
            terminalreporter.write_line(self.stopped)
        if self.compare_note:
            terminalreporter.write_line(f"flux-lora-perf: {self.compare_note}")
        if self.verdict:
            terminalreporter.section(f"flux-lora-perf verdict vs {self.baselines_dir}/{self.active.name}")
            for line in self.verdict:
                terminalreporter.write_line(line)
