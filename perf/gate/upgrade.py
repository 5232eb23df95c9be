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
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from perf.gate.bisect import bisect
from perf.gate.sides import ROOT, Gate, SideRun, judge, run_side, slowed
from perf.gate.stacks import (
    DEFAULT_KEEP,
    GateError,
    PackageSource,
    canonical,
    describe,
    differences,
    machine_versions,
    parse_requirement,
    plan,
    read_pins,
)
from perf.judge.compare import any_error, any_regression, format_table

USAGE_EXIT = 4


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
    # a reported (not gated) regression too: on the cpu profile latency never gates, yet its culprit is worth naming
    if gate.bisect and any(v.verdict == "regressed" for v in verdicts):
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
