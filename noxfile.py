"""Version gating: the tests CI runs, the oldest supported stack, and the upgrade gate.

Sessions (``nox --list``):

- ``nox -s tests`` -- what CI runs (``.ci/run`` does the same without nox): ``pytest`` after
  ``pip install -c constraints/known-good.txt -e .[dev]`` (the complete lock of the CPU CI environment, the one
  the CPU baselines were recorded with). ``nox -s tests -- tests/unit -q`` narrows it.
- ``nox -s floor`` -- the CPU suite under ``constraints/floor-lora-fast.txt`` and ``constraints/floor.txt`` (the
  oldest versions the gate supports), each overlaid on the ``tests`` environment (no second torch):
  ``python -m perf.gate --candidate-only``.
- ``nox -s upgrade_gate -- [gate options] [pytest options]`` -- ``python -m perf.gate`` in the environment nox runs
  in (no virtualenv: on a GPU box that is the machine's CUDA torch): the perf suite under
  ``constraints/known-good.txt`` and under ``constraints/candidate.txt``, each side's differing pins overlaid on
  the machine's packages (``perf/gate/stacks.py``), then one verdict table from both sides' records. Offline:
  ``-- --wheelhouse .whl --offline``. ``python -m perf.gate --help`` lists the options.
- ``nox -s bisect -- ...`` -- the same gate with ``--bisect``: on a regression it names the package (or pair).

Profile: ``cpu`` unless ``--profile NAME`` is given, e.g.
``nox -s upgrade_gate -- --profile h200 --recipes optimized_fast --no-churn --no-cold-start --rounds 3``.
Negative control: ``-- --inject-delay 2`` slows every candidate generation by 2 s (``tests/gate_slowdown.py``);
``--inject-if NAME==VERSION`` ties it to one package's version.
"""

from __future__ import annotations

import sys

import nox

nox.needs_version = ">=2025.2.9"
nox.options.sessions = ["tests"]  # bare `nox` runs what CI runs, never the heavy perf suites

PYTHON = "3.11"  # the constraint sets were checked to install on 3.11
KNOWN_GOOD = "constraints/known-good.txt"  # the complete lock of the CPU CI environment; .ci/run installs with it too
FLOORS = ("constraints/floor-lora-fast.txt", "constraints/floor.txt")  # transformers 4 era, transformers 5


@nox.session(python=PYTHON, reuse_venv=True)
def tests(session: nox.Session) -> None:
    """CI's test command: pytest from the repo root; exit 5 (nothing collected) passes, as in .ci/run."""
    session.install("-c", KNOWN_GOOD, "-e", ".[dev]")
    session.run("pytest", *session.posargs, success_codes=[0, 5])


@nox.session(python=PYTHON, reuse_venv=True)
def floor(session: nox.Session) -> None:
    """The CPU suite on the oldest stacks the gate supports, each overlaid on the known-good environment: the
    lora-fast era (transformers 4) and floor.txt (transformers 5), the two sides of perf/build/compat.py."""
    session.install("-c", KNOWN_GOOD, "-e", ".[dev]")
    for floor in FLOORS:
        session.run("python", "-m", "perf.gate", "--candidate", floor, "--candidate-only", *session.posargs)


@nox.session(python=False)
def upgrade_gate(session: nox.Session) -> None:
    """Known-good vs candidate on this machine's environment; the verdict table; non-zero on a regression."""
    session.run(sys.executable, "-m", "perf.gate", *session.posargs, external=True)


@nox.session(python=False)
def bisect(session: nox.Session) -> None:
    """The upgrade gate, and on a regression the package (or pair) that reproduces it."""
    session.run(sys.executable, "-m", "perf.gate", "--bisect", *session.posargs, external=True)
