"""Version gating: the tests CI runs, the perf suite under each pinned stack, and the upgrade gate.

Sessions (``nox --list``); arguments after ``--`` go to pytest in every session of the run:

- ``nox -s tests`` -- what CI runs (``.ci/run`` does the same without nox): ``pytest`` after
  ``pip install -c constraints/known-good.txt -e .[dev]`` (the complete lock of the CPU CI environment, the one
  the CPU baselines were recorded with). ``nox -s tests -- tests/unit -q`` narrows it.
- ``nox -s "suite(pins='known-good')"``, ``nox -s "suite(pins='candidate')"`` (``nox -s suite``: both) --
  ``pytest tests/perf`` with the versions pinned in ``constraints/<pins>.txt``. Records land in
  ``.results/<pins>/<profile>/`` and stay there (each run first clears only that folder, so a gate never
  judges a stale record).
- ``nox -s upgrade_gate`` -- runs both suite sessions first (``requires=``: each in its own virtualenv, and the
  gate is aborted if either suite fails), then ``python -m perf.report`` into ``.results/upgrade-gate-report/``
  and ``python -m perf.judge.compare .results/known-good .results/candidate --profile <profile>``, which prints the
  verdict table and makes the session (and nox) exit non-zero on a regression.

Profile: ``cpu`` (the tiny synthetic model) unless ``--profile NAME`` is among the pytest arguments, e.g.
``nox -s upgrade_gate -- --profile h100`` on an H100, or ``-- --profile rtx4090 --recipes baseline,optimized``.
GPU profiles also install the ``gpu`` extra (torchao, bitsandbytes).

Cheap re-runs: virtualenvs live in ``.nox/`` and are reused (``reuse_venv=True``), so a second run only
re-checks the installs; ``nox -R -s upgrade_gate`` skips the installs too; ``nox -s upgrade_gate --no-dependencies``
re-judges the records already in ``.results/`` without re-running the suites.

Injected slowdown (proves the gate catches one): ``GATE_INJECT_CANDIDATE_DELAY_S=0.05 nox -s upgrade_gate``
loads the test plugin ``tests/gate_slowdown.py`` (``-p tests.gate_slowdown``) into the candidate suite only, with
``FLUX_LORA_PERF_INJECT_DELAY_S=0.05``, so every candidate generation sleeps 50 ms and the gate must exit non-zero
(the library itself has no injection code). An environment variable rather than a ``--`` flag because nox
hands the same posargs to every session of the run, and pytest would reject a gate-only flag. The known-good
suite always runs with the injection removed, even if the caller exported ``FLUX_LORA_PERF_INJECT_DELAY_S``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nox

nox.needs_version = ">=2025.2.9"  # session requires= (the gate's prerequisites)
nox.options.sessions = ["tests"]  # bare `nox` runs what CI runs, never the heavy perf suites

PYTHON = "3.11"  # the constraint sets were checked to install on 3.11
PINS = ("known-good", "candidate")  # one constraints/<pins>.txt each
KNOWN_GOOD = "constraints/known-good.txt"  # the complete lock of the CPU CI environment; .ci/run installs with it too
DEFAULT_PROFILE = "cpu"
RESULTS = Path(".results")
GATE_REPORT = RESULTS / "upgrade-gate-report"  # under the git-ignored .results/
INJECT_ENV = "FLUX_LORA_PERF_INJECT_DELAY_S"  # read by the tests.gate_slowdown plugin: sleeps in every generation
GATE_INJECT_ENV = "GATE_INJECT_CANDIDATE_DELAY_S"  # caller's knob: candidate side only


def profile_from(posargs: list[str]) -> str:
    """The profile the pytest arguments ask for, so the gate compares the folder the suites wrote."""
    for i, arg in enumerate(posargs):
        if arg == "--profile" and i + 1 < len(posargs):
            return posargs[i + 1]
        if arg.startswith("--profile="):
            return arg.split("=", 1)[1]
    return DEFAULT_PROFILE


@nox.session(python=PYTHON, reuse_venv=True)
def tests(session: nox.Session) -> None:
    """CI's test command: pytest from the repo root; exit 5 (nothing collected) passes, as in .ci/run."""
    session.install("-c", KNOWN_GOOD, "-e", ".[dev]")
    session.run("pytest", *session.posargs, success_codes=[0, 5])


@nox.session(python=PYTHON, reuse_venv=True)
@nox.parametrize("pins", list(PINS))
def suite(session: nox.Session, pins: str) -> None:
    """The perf suite under one pinned stack; its records stay in .results/<pins>/ for the gate."""
    profile = profile_from(session.posargs)
    extras = ".[dev]" if profile == DEFAULT_PROFILE else ".[gpu,dev]"
    session.install("-c", f"constraints/{pins}.txt", "torch", "-e", extras)
    session.run("python", "-c", "import diffusers, torch; print('torch', torch.__version__, '| diffusers', "
                "diffusers.__version__)")
    session.env[INJECT_ENV] = None  # None removes it: known-good never inherits a slowdown
    delay = os.environ.get(GATE_INJECT_ENV)
    inject = []
    if pins == "candidate" and delay:
        session.warn(f"{GATE_INJECT_ENV}={delay}: injecting a {delay}s slowdown into every candidate generation")
        session.env[INJECT_ENV] = delay
        inject = ["-p", "tests.gate_slowdown"]
    shutil.rmtree(RESULTS / pins / profile, ignore_errors=True)
    args = list(session.posargs)
    if not any(a == "--profile" or a.startswith("--profile=") for a in args):
        args += ["--profile", profile]
    if not any(a.startswith("-m") for a in args):
        args += ["-m", profile]  # deselect other profiles' rows instead of listing them as skips
    session.run("python", "-m", "pytest", "tests/perf", *inject, "--results-dir", str(RESULTS / pins), *args)


@nox.session(python=PYTHON, reuse_venv=True, requires=[f"suite(pins='{p}')" for p in PINS])
def upgrade_gate(session: nox.Session) -> None:
    """Known-good vs candidate on this machine: the report, then the verdict table; non-zero on a regression.

    The verdict only reads JSON records, but perf.report.report imports the recipe table (and so torch): this venv
    gets the whole package under the known-good pins, the trusted stack judging the new one.
    """
    profile = profile_from(session.posargs)
    session.install("-c", KNOWN_GOOD, "-e", ".[dev]")
    baseline, candidate = (RESULTS / p for p in PINS)
    session.run("python", "-m", "perf.report", str(candidate / profile), "--out", str(GATE_REPORT),
                "--baselines", str(baseline))
    session.run("python", "-m", "perf.judge.compare", str(baseline), str(candidate), "--profile", profile)
