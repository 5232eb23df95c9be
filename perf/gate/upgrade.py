"""The upgrade gate: the perf suite under the known-good stack and under the candidate, on this machine, in one
command, and one verdict table judged from the records both sides wrote (``perf.judge.compare``).

``python -m perf.gate`` (``nox -s upgrade_gate`` runs it); options it does not know go to pytest. Each side's
stack is the machine's environment with the pinned packages that differ overlaid (``perf.gate.stacks``). The
table always comes: a check the candidate failed, a recipe it left without a record, and a candidate whose stack
fails the suite's stack check are ``regressed`` rows naming what failed; a known-good side that cannot run is a
usage error (exit 4), since then nothing can be judged. ``--bisect``: on a regression, which package did it
(``perf.gate.bisect``).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from perf.gate.stacks import (
    DEFAULT_KEEP,
    GateError,
    OverlayStore,
    PackageSource,
    Stack,
    canonical,
    describe,
    differences,
    machine_versions,
    parse_requirement,
    plan,
    python_path,
    read_pins,
    safe_name,
)
from perf.judge.baseline_files import atomic_write_bytes
from perf.judge.compare import Verdict, any_error, any_regression, compare_folders, format_table
from perf.judge.stack_record import BROKEN_STACK_EXIT
from perf.workers import SESSION_ENV

ROOT = Path(__file__).resolve().parents[2]
INJECT_DELAY_ENV = "FLUX_LORA_PERF_INJECT_DELAY_S"  # read by tests/gate_slowdown.py
INJECT_IF_ENV = "FLUX_LORA_PERF_INJECT_IF"  # NAME==VERSION: the plugin slows only where that version runs
USAGE_EXIT = 4


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


def check_known_good(run: SideRun, profile: str) -> None:
    """Nothing can be judged against a known-good stack that does not run."""
    stack_record = run.root / profile / "stack" / "stack_check.json"
    if run.broken:
        check = json.loads(stack_record.read_text())
        raise GateError(f"the known-good stack is broken: {check['step']} failed in {check['package']}: "
                        f"{check['error']}. Fix constraints/known-good.txt (or --known-good) first")
    if not any((run.root / profile).glob("*.json")):
        raise GateError(f"the known-good suite wrote no record (pytest exit {run.exit_code}): see its output above")


def run_gate(gate: Gate) -> int:
    known_pins = dict(read_pins(gate.known_good), **dict(gate.extra))
    candidate_pins = dict(read_pins(gate.candidate), **dict(gate.extra))
    machine = machine_versions(gate.python)
    known_good, candidate = plan(known_pins, candidate_pins, machine, gate.source, gate.keep)
    moved = differences(known_good, candidate)
    if gate.candidate_only:
        gate.say("\n".join(["upgrade gate: the candidate stack alone:", *describe(known_good, candidate)]))
        code = run_side(gate, candidate, "candidate", gate.recipes, slowed(gate, candidate, candidate=True)).exit_code
        return 0 if code == 5 else code  # nothing collected passes, as in .ci/run
    if not moved:
        raise GateError(f"{gate.known_good} and {gate.candidate} give the same stack on this machine (every change "
                        "kept or unavailable): nothing to gate")
    gate.say("upgrade gate: stacks (known-good -> candidate; [machine] = this environment's, [overlay] = installed "
             "for the gate):")
    for line in describe(known_good, candidate):
        gate.say(line)
    base = run_side(gate, known_good, "known-good", gate.recipes, slowed(gate, known_good, candidate=False))
    check_known_good(base, gate.profile)
    cand = run_side(gate, candidate, "candidate", gate.recipes, slowed(gate, candidate, candidate=True))
    verdicts = judge(gate, base, cand)
    gate.say(f"\nupgrade gate verdict ({gate.profile}): {base.root} -> {cand.root}")
    gate.say(format_table(verdicts))
    status = 2 if any_error(verdicts) else 1 if any_regression(verdicts) else 0
    gate.say(f"upgrade gate: {'REGRESSED' if status == 1 else 'ERROR' if status else 'ok'}: "
             f"{', '.join(moved)} moved")
    if gate.bisect and any(v.verdict == "regressed" for v in verdicts):  # a reported (not gated) one too: on the
        from perf.gate.bisect import bisect  # cpu profile latency never gates, yet its culprit is still worth naming

        bisect(gate, base, known_good, candidate, moved, verdicts)
    return status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m perf.gate",
        description="Gate a library upgrade on this machine: the perf suite under the known-good and the candidate "
        "constraints, then one verdict table from both sides' records. Options not listed here go to pytest "
        "(e.g. --rounds 3 --no-churn --no-cold-start). Exit status: 0 ok, 1 regression (a failed check, a broken "
        "candidate stack and a recipe left without a record included), 2 a record unreadable, 4 a usage error "
        "(bad option, a stack that cannot be formed, a broken known-good stack). Inside the suite, exit 6 means "
        "its stack failed the stack check; the gate turns that into regressed rows.",
        epilog="pytest options commonly passed through: --rounds N, --no-churn, --no-cold-start, --perf-cache DIR, "
        "-q. Example on a GPU box, offline: python -m perf.gate --wheelhouse .whl --offline --with fa3-fwd==0.0.3 "
        "--profile h200 --recipes optimized_fast --no-churn --no-cold-start --rounds 3")
    parser.add_argument("--known-good", type=Path, default=ROOT / "constraints" / "known-good.txt", metavar="FILE")
    parser.add_argument("--candidate", type=Path, default=ROOT / "constraints" / "candidate.txt", metavar="FILE")
    parser.add_argument("--profile", default="cpu", help="hardware profile of both suites (default cpu)")
    parser.add_argument("--recipes", default=None, metavar="NAME,NAME", help="passed to both suites")
    parser.add_argument("--python", default=sys.executable,
                        help="the interpreter whose environment is the base of both stacks (default: this one)")
    parser.add_argument("--wheelhouse", type=Path, default=os.environ.get("GATE_WHEELHOUSE") or None, metavar="DIR",
                        help="local folder of wheels pip may use (--find-links); env GATE_WHEELHOUSE")
    parser.add_argument("--offline", action="store_true", default=os.environ.get("GATE_OFFLINE") == "1",
                        help="install from the wheelhouse only (--no-index); env GATE_OFFLINE=1")
    parser.add_argument("--keep", default=",".join(DEFAULT_KEEP), metavar="NAME,NAME",
                        help="packages taken from the machine on both sides whatever the pins say (default: torch, "
                        "the machine's CUDA build; --keep '' to gate a torch upgrade)")
    parser.add_argument("--with", dest="extra", action="append", default=[], metavar="NAME==VERSION",
                        help="a package both sides get at this version (e.g. fa3-fwd==0.0.3); repeatable")
    parser.add_argument("--results", type=Path, default=ROOT / ".results" / "gate", metavar="DIR",
                        help="records of both sides (DIR/known-good, DIR/candidate, DIR/bisect-*)")
    parser.add_argument("--store", type=Path, default=ROOT / ".nox" / "gate-overlays", metavar="DIR",
                        help="installed package folders, one per version, reused across runs")
    parser.add_argument("--inject-delay", type=float, default=None, metavar="SECONDS",
                        help="negative control: every generation sleeps this long, on the candidate side only, or "
                        "wherever --inject-if's version runs (tests/gate_slowdown.py)")
    parser.add_argument("--inject-if", default=None, metavar="NAME==VERSION",
                        help="with --inject-delay: slow only the runs where this package is at this version")
    parser.add_argument("--candidate-only", action="store_true",
                        help="run the suite under the candidate stack alone and exit with pytest's status (CI's "
                        "floor check: --candidate constraints/floor.txt)")
    parser.add_argument("--reuse", action="store_true",
                        help="reuse a side's records from an earlier run of the same stack and command (and the "
                        "same suite code: yours to vouch for) instead of running it again")
    parser.add_argument("--bisect", action="store_true",
                        help="on a regression, re-run the regressed recipes with one changed package (then pairs) "
                        "moved to the candidate, and name the one that reproduces it")
    return parser


def parse(argv: Sequence[str] | None) -> Gate:
    args, rest = build_parser().parse_known_args(argv)
    rest = [a for a in rest if a != "--"]
    for path in (args.known_good, args.candidate):
        if not Path(path).is_file():
            raise GateError(f"no constraints file {path}")
    if args.offline and not args.wheelhouse:
        raise GateError("--offline needs --wheelhouse DIR (or GATE_WHEELHOUSE): pip has nowhere to install from")
    if args.wheelhouse and not Path(args.wheelhouse).is_dir():
        raise GateError(f"--wheelhouse {args.wheelhouse} is not a folder")
    if args.inject_if and not args.inject_delay:
        raise GateError("--inject-if needs --inject-delay SECONDS")
    return Gate(
        known_good=args.known_good, candidate=args.candidate, profile=args.profile, python=args.python,
        source=PackageSource(Path(args.wheelhouse).resolve() if args.wheelhouse else None, args.offline),
        keep=tuple(canonical(k) for k in args.keep.split(",") if k.strip()),
        extra=tuple(parse_requirement(e) for e in args.extra), results=args.results.resolve(),
        store=args.store.resolve(), pytest_args=tuple(rest), recipes=args.recipes,
        inject_delay=args.inject_delay, inject_if=parse_requirement(args.inject_if) if args.inject_if else None,
        bisect=args.bisect, candidate_only=args.candidate_only, reuse=args.reuse,
    )


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return run_gate(parse(argv))
    except GateError as exc:
        print(f"upgrade gate: error: {exc}", file=sys.stderr)
        return USAGE_EXIT
