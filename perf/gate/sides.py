"""One side of the upgrade gate: the perf suite run under one stack into its own records folder, and the verdict of
one side's records against another's. The gate runs the known-good side and the candidate side with it, and the
bisect the mixes between them (``perf.gate.bisect``)."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from perf.gate.stacks import (
    OverlayStore,
    PackageSource,
    Stack,
    python_path,
    safe_name,
)
from perf.judge.baseline_files import atomic_write_bytes
from perf.judge.compare import Verdict, compare_folders
from perf.judge.stack_record import BROKEN_STACK_EXIT
from perf.workers import SESSION_ENV

ROOT = Path(__file__).resolve().parents[2]
INJECT_DELAY_ENV = "FLUX_LORA_PERF_INJECT_DELAY_S"  # read by tests/gate_slowdown.py
INJECT_IF_ENV = "FLUX_LORA_PERF_INJECT_IF"  # NAME==VERSION: the plugin slows only where that version runs


@dataclass(frozen=True)
class Gate:
    """Everything a run of the gate needs, from the command line."""

    known_good: Path
    candidate: Path
    profile: str
    python: str
    source: PackageSource
    keep: tuple[str, ...]
    extra: tuple[tuple[str, str], ...]
    results: Path
    store: Path
    pytest_args: tuple[str, ...]
    recipes: str | None = None
    inject_delay: float | None = None
    inject_if: tuple[str, str] | None = None
    bisect: bool = False
    candidate_only: bool = False
    reuse: bool = False
    say: object = field(default=functools.partial(print, flush=True), compare=False)  # in order with pytest's

    @property
    def overlays(self) -> OverlayStore:
        return OverlayStore(self.store, self.python, self.source)


@dataclass(frozen=True)
class SideRun:
    """One suite run under one stack: where its records are and how pytest exited."""

    stack: Stack
    root: Path  # records under root/<profile>/
    exit_code: int

    @property
    def broken(self) -> bool:
        return self.exit_code == BROKEN_STACK_EXIT


def suite_command(gate: Gate, root: Path, recipes: str | None, inject: bool) -> list[str]:
    args = [gate.python, "-m", "pytest", "tests/perf", "-p", "no:cacheprovider", "--results-dir", str(root),
            "--profile", gate.profile, "-m", gate.profile, *gate.pytest_args,
            "--baselines-dir", str(gate.results / "no-stored-baselines")]  # the gate judges side against side
    if recipes:
        args += ["--recipes", recipes]
    if inject:
        args += ["-p", "tests.gate_slowdown"]
    return args


def slowed(gate: Gate, stack: Stack, candidate: bool) -> bool:
    """Whether ``--inject-delay`` applies to a run of ``stack``: where ``--inject-if``'s version runs, or without
    it on the candidate side only."""
    if not gate.inject_delay:
        return False
    if gate.inject_if is None:
        return candidate
    name, version = gate.inject_if
    return any(p.name == name and p.version == version for p in stack.packages)


def run_side(gate: Gate, stack: Stack, folder: str, recipes: str | None = None, injected: bool = False) -> SideRun:
    """The suite under ``stack``; records land in ``results/<folder>/<profile>/``. A folder holding a finished run
    of the same stack and command is reused with ``--reuse`` (a bisect mix met again, a re-run after a candidate
    fix): only with it, since the suite's own code may have changed in between."""
    root = gate.results / folder
    command = suite_command(gate, root, recipes, injected)
    stamp = {"stack": stack.to_dict(), "command": command[1:],
             "inject": [gate.inject_delay, gate.inject_if] if injected else None}
    done = root / "stack.json"
    if gate.reuse and done.is_file():
        previous = json.loads(done.read_text())
        if {k: previous.get(k) for k in stamp} == stamp:
            gate.say(f"upgrade gate: {stack.name}: reusing the run in {root} (same stack and command)")
            return SideRun(stack, root, previous["exit_code"])
    shutil.rmtree(root, ignore_errors=True)  # a gate never judges a stale record
    folders = gate.overlays.ensure(stack, gate.say)
    env = {**os.environ, "PYTHONPATH": python_path(folders, ROOT),
           "TORCHINDUCTOR_CACHE_DIR": str(gate.results / "compile-cache" / safe_name(stack.key()) / "inductor"),
           "TRITON_CACHE_DIR": str(gate.results / "compile-cache" / safe_name(stack.key()) / "triton")}
    env.pop(SESSION_ENV, None)  # each side is a run of its own
    env.pop(INJECT_DELAY_ENV, None)  # only the gate's own --inject-delay slows a side
    if injected:
        env[INJECT_DELAY_ENV] = str(gate.inject_delay)
        if gate.inject_if:
            env[INJECT_IF_ENV] = "==".join(gate.inject_if)
    (gate.results / "no-stored-baselines").mkdir(parents=True, exist_ok=True)  # an empty --baselines-dir: it must exist
    gate.say(f"upgrade gate: {stack.name}: {' '.join(command[1:])}")
    code = subprocess.run(command, cwd=ROOT, env=env).returncode
    atomic_write_bytes(done, (json.dumps({**stamp, "exit_code": code}, indent=1) + "\n").encode())
    return SideRun(stack, root, code)


def judge(gate: Gate, baseline: SideRun, candidate: SideRun) -> list[Verdict]:
    """The verdict from records only; a recipe the candidate left without a record, when its suite failed, is a
    regression (a crash is not "not in this run")."""
    _, verdicts = compare_folders(baseline.root, candidate.root, gate.profile)
    if candidate.exit_code in (0, BROKEN_STACK_EXIT):
        return verdicts
    return [Verdict(v.recipe, "record", "regressed", None, None, None, None,
                    f"no record: the {candidate.stack.name} suite exited {candidate.exit_code} before writing it")
            if v.metric == "all" and v.reason == "not in this run" else v for v in verdicts]
