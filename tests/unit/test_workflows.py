"""The CI wiring, checked without a runner: a typo in a workflow, a renamed nox session or a deleted
``perf.X`` module would otherwise only show up on GitHub (or, for the nightly job, on a GPU box at 2 am)."""

from __future__ import annotations

import os
import re
import shlex
import stat
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml", reason="pyyaml is in the dev extra")

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
CI_SCRIPT = ROOT / ".ci" / "run"
CONSTRAINTS = ROOT / "constraints"
PROFILE_RUNNERS = {"h100": ["self-hosted", "h100"], "rtx4090": ["self-hosted", "rtx4090"]}


def load(name: str) -> dict[str, Any]:
    return yaml.safe_load((WORKFLOWS / name).read_text())


def triggers(workflow: dict[str, Any]) -> dict[str, Any]:
    """The ``on:`` block as a dict; YAML 1.1 reads the bare key ``on`` as the boolean True."""
    on = workflow.get("on", workflow.get(True))
    if isinstance(on, str):
        return {on: None}
    if isinstance(on, list):
        return dict.fromkeys(on)
    return on or {}


def steps(workflow: dict[str, Any]) -> list[dict[str, Any]]:
    return [step for job in workflow["jobs"].values() for step in job.get("steps", [])]


def shell_text(workflow: dict[str, Any]) -> str:
    return "\n".join(step["run"] for step in steps(workflow) if "run" in step)


def runner_labels(job: dict[str, Any]) -> list[list[str]]:
    """Every label set the job can run on, with ``runs-on: ${{ matrix.KEY }}`` expanded over the matrix."""
    runs_on = job["runs-on"]
    found = re.fullmatch(r"\$\{\{\s*matrix\.(\w+)\s*\}\}", runs_on) if isinstance(runs_on, str) else None
    if not found:
        return [[runs_on] if isinstance(runs_on, str) else list(runs_on)]
    matrix = job["strategy"]["matrix"]
    values = [entry[found[1]] for entry in matrix.get("include", []) if found[1] in entry]
    values += matrix.get(found[1], [])
    return [[v] if isinstance(v, str) else list(v) for v in values]


def nox_selectors(shell: str) -> list[str]:
    """Session names given to ``nox -s/-e/--session`` in shell text (stops at ``--``: those are posargs)."""
    selectors = []
    for line in shell.replace("\\\n", " ").splitlines():
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError:
            continue
        for i, token in enumerate(tokens):
            if token != "nox" and not token.endswith("/nox"):
                continue
            j = i + 1
            while j < len(tokens) and tokens[j] not in ("--", "&&", "||", ";", "|"):
                if tokens[j] in ("-s", "-e", "--session", "--sessions"):
                    j += 1
                    while j < len(tokens) and not tokens[j].startswith("-") and tokens[j] not in ("&&", "||", ";"):
                        selectors.append(tokens[j])
                        j += 1
                else:
                    j += 1
    return selectors


def perf_modules(text: str) -> set[str]:
    """``python -m perf.X`` in shell text, and ``"python", "-m", "perf.X"`` in the noxfile's session.run."""
    shell = re.findall(r"python3?\s+-m\s+(perf(?:\.\w+)+)", text)
    nox_run = re.findall(r"""["']-m["'],\s*["'](perf(?:\.\w+)+)["']""", text)
    return set(shell) | set(nox_run)


def nox_listing(*selectors: str) -> subprocess.CompletedProcess:
    """Ask nox itself whether selectors resolve: ``nox --list --json -s ...`` exits 3 on an unknown session.
    The public CLI, rather than nox's registry, also resolves parametrized names like ``suite(pins='x')``."""
    pytest.importorskip("nox", reason="nox is in the dev extra")
    return subprocess.run(
        [sys.executable, "-m", "nox", "--noxfile", str(ROOT / "noxfile.py"), "--list", "--json", "-s", *selectors],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )


def read_pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"{path.name}: {line!r} is not an exact pin (NAME==VERSION)"
            pins[name.strip().lower()] = version.strip()
    return pins


@pytest.mark.parametrize("name", ["ci.yml", "nightly-gpu.yml"])
def test_workflow_parses_with_triggers_and_jobs(name):
    workflow = load(name)
    assert triggers(workflow), f"{name} has no `on:` triggers"
    assert workflow.get("jobs"), f"{name} has no jobs"
    for job_id, job in workflow["jobs"].items():
        assert "runs-on" in job and job.get("steps"), f"{name}: job {job_id} needs runs-on and steps"


def test_ci_runs_the_ci_script_on_push_and_pull_request():
    workflow = load("ci.yml")
    assert {"push", "pull_request"} <= triggers(workflow).keys()
    (job,) = workflow["jobs"].values()
    assert job["runs-on"] == "ubuntu-latest"
    (setup,) = [s for s in job["steps"] if s.get("uses", "").startswith("actions/setup-python@")]
    assert str(setup["with"]["python-version"]) == "3.11"
    assert setup["with"]["cache"] == "pip"
    cache_paths = setup["with"]["cache-dependency-path"]
    assert "pyproject.toml" in cache_paths and "constraints/" in cache_paths
    assert any(re.search(r"(^|\s)(bash\s+)?\.ci/run(\s|$)", s.get("run", "")) for s in job["steps"])


def test_nightly_runs_each_profile_on_its_self_hosted_runner():
    workflow = load("nightly-gpu.yml")
    assert {"schedule", "workflow_dispatch"} <= triggers(workflow).keys()
    labels = [sorted(ls) for job in workflow["jobs"].values() for ls in runner_labels(job)]
    for profile, wanted in PROFILE_RUNNERS.items():
        assert sorted(wanted) in labels, f"no job runs on {wanted} ({profile}); found {labels}"
    env = {**workflow.get("env", {}), **next(iter(workflow["jobs"].values())).get("env", {})}
    assert "HF_HOME" in env, "HF_HOME must point at the runner's persistent model cache"


def test_nightly_gates_on_benchmarks_and_baselines_and_keeps_the_evidence():
    workflow = load("nightly-gpu.yml")
    shell = shell_text(workflow)
    for flag in ("--benchmark-autosave", "--benchmark-compare", "--benchmark-compare-fail=median:10%"):
        assert flag in shell
    for profile in PROFILE_RUNNERS:
        assert f"-m {profile}" in yaml.safe_dump(workflow), f"no pytest selection for {profile}"
    verdict = [s for s in steps(workflow) if "perf.judge.compare" in s.get("run", "")]
    assert verdict and not any(s.get("continue-on-error") for s in verdict), "a regression must fail the job"
    (upload,) = [s for s in steps(workflow) if s.get("uses", "").startswith("actions/upload-artifact@")]
    assert upload.get("if") == "always()"
    paths = upload["with"]["path"]
    for folder in (".benchmarks", ".results", "report"):
        assert folder in paths, f"artifact misses {folder}/"
    assert upload["with"].get("include-hidden-files") is True, "upload-artifact skips dot-folders without it"


def referenced_texts() -> dict[str, str]:
    texts = {name: shell_text(load(name)) for name in ("ci.yml", "nightly-gpu.yml")}
    texts[".ci/run"] = CI_SCRIPT.read_text()
    texts["noxfile.py"] = (ROOT / "noxfile.py").read_text()
    return texts


def test_every_referenced_nox_session_exists():
    for where, text in referenced_texts().items():
        if where == "noxfile.py":
            continue  # its docstring is prose, not shell
        for selector in nox_selectors(text):
            listing = nox_listing(selector)
            assert listing.returncode == 0, f"{where} runs `nox -s {selector}`: {listing.stderr.strip()}"


def test_nox_session_check_rejects_an_unknown_session():
    """Control for the test above: it must be able to fail."""
    assert nox_selectors("nox -r -s tests \"suite(pins='x')\" -- -q && nox -e lint") == [
        "tests", "suite(pins='x')", "lint"]
    assert nox_listing("no_such_session").returncode != 0


def test_every_referenced_perf_module_exists():
    referenced = {mod: where for where, text in referenced_texts().items() for mod in perf_modules(text)}
    assert {"perf.judge.compare", "perf.report"} <= referenced.keys(), (
        f"expected the verdict and report CLIs: {referenced}"
    )
    missing = {mod: where for mod, where in referenced.items() if find_spec(mod) is None}
    assert not missing, (
        f"referenced but not importable: {missing} (if someone is still writing them, this passes once they land)"
    )


def test_constraint_sets_pin_torch_and_diffusers_and_differ_in_one():
    """A gate between two identical stacks could never see an upgrade's regression."""
    sets = {p.stem: read_pins(p) for p in sorted(CONSTRAINTS.glob("*.txt"))}
    assert {"known-good", "candidate"} <= sets.keys()
    for name, pins in sets.items():
        assert {"torch", "diffusers"} <= pins.keys(), f"{name}.txt must pin torch== and diffusers=="
    upgraded = [lib for lib in ("torch", "diffusers") if sets["known-good"][lib] != sets["candidate"][lib]]
    assert upgraded, "candidate.txt pins the known-good torch and diffusers: nothing to gate"


def test_each_constraint_set_is_run_by_a_session():
    """known-good and candidate are the upgrade gate's defaults (nox -s upgrade_gate, bisect); the floors are the
    floor session's and CI's: a constraints file no session installs would be a stack nobody tests."""
    from perf.gate.upgrade import build_parser

    defaults = build_parser().parse_args([])
    assert nox_listing("upgrade_gate", "bisect", "floor").returncode == 0
    floors = ("floor-lora-fast", "floor")
    assert f"FLOORS = {tuple(f'constraints/{f}.txt' for f in floors)!r}".replace("'", '"') in (
        ROOT / "noxfile.py").read_text()
    assert f"for floor in {' '.join(floors)}; do" in CI_SCRIPT.read_text()
    run = {Path(defaults.known_good).stem, Path(defaults.candidate).stem, *floors}
    assert run == {p.stem for p in CONSTRAINTS.glob("*.txt")}


def test_ci_and_nox_install_from_the_one_known_good_lock():
    """CI, `nox -s tests` and the known-good suite install from one lock, or CI tests a stack nobody gates; a
    version typed beside it (e.g. torch==) would be a second place to forget when the lock moves."""
    lines = [line for line in CI_SCRIPT.read_text().splitlines() if not line.lstrip().startswith("#")]
    ci_install = [line for line in lines if "pip install" in line]
    assert ci_install and all("-c constraints/known-good.txt" in line for line in ci_install), ci_install
    assert not any("==" in line for line in ci_install), f"pin versions in constraints/known-good.txt: {ci_install}"
    noxfile = (ROOT / "noxfile.py").read_text()
    assert 'KNOWN_GOOD = "constraints/known-good.txt"' in noxfile
    assert 'session.install("-c", KNOWN_GOOD, "-e", ".[dev]")' in noxfile


def unpinned(pins: dict[str, str]) -> list[str]:
    """The distributions the CPU install pulls in (the package with its dev extra, dependencies of dependencies
    included, read from the installed metadata) that ``pins`` lacks."""
    from importlib import metadata

    from packaging.requirements import Requirement

    def key(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    seen, todo = set(), [("flux-lora-perf", frozenset({"dev"}))]
    while todo:
        name, extras = todo.pop()
        for spec in metadata.requires(name) or []:
            req = Requirement(spec)
            wanted = not req.marker or any(req.marker.evaluate({"extra": e}) for e in extras | {""})
            if wanted and (key(req.name), frozenset(req.extras)) not in seen:
                seen.add((key(req.name), frozenset(req.extras)))
                todo.append((key(req.name), frozenset(req.extras)))
    return sorted({name for name, _ in seen} - {key(name) for name in pins})


@pytest.fixture
def cpu_torch():
    import torch

    if torch.version.cuda:
        pytest.skip("a CUDA torch pulls in nvidia-* wheels, pinned by torch itself; the lock is the CPU install's")


def test_known_good_lock_is_complete_for_the_cpu_install(cpu_torch):
    """Every distribution the CPU install pulls in has an exact pin, so a fresh CI venv is the environment the
    CPU baselines were recorded with."""
    missing = unpinned(read_pins(CONSTRAINTS / "known-good.txt"))
    assert not missing, f"constraints/known-good.txt lacks pins for {missing}: regenerate it (see its header)"


def test_lock_check_sees_a_missing_transitive_pin(cpu_torch):
    """Control for the test above: a lock without sympy (torch's dependency, not the package's) is incomplete."""
    pins = read_pins(CONSTRAINTS / "known-good.txt")
    pins.pop("sympy")
    assert unpinned(pins) == ["sympy"]


def test_ci_script_is_strict_and_executable():
    text = CI_SCRIPT.read_text()
    assert text.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in text
    assert CI_SCRIPT.stat().st_mode & stat.S_IXUSR, "chmod +x .ci/run (git records the mode)"


@pytest.fixture
def fake_venv(tmp_path):
    """A venv stand-in whose ``pytest`` exits with $FAKE_PYTEST_EXIT and records its arguments."""
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "activate").write_text(f'export PATH="{bin_dir}:$PATH"\n')
    scripts = {
        "pytest": '#!/bin/sh\necho "$@" > "$FAKE_ARGS"\nexit "$FAKE_PYTEST_EXIT"\n',
        "python": f'#!/bin/sh\nexec "{sys.executable}" "$@"\n',
    }
    for name, body in scripts.items():
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    return tmp_path


@pytest.mark.parametrize(("pytest_exit", "script_exit"), [(0, 0), (1, 1), (2, 2), (5, 0)])
def test_ci_script_treats_no_tests_collected_as_success(fake_venv, pytest_exit, script_exit):
    env = {**os.environ, "CI_VENV": str(fake_venv / "venv"), "CI_SKIP_INSTALL": "1", "CI_SKIP_FLOOR": "1",
           "FAKE_PYTEST_EXIT": str(pytest_exit), "FAKE_ARGS": str(fake_venv / "args")}
    done = subprocess.run(["bash", str(CI_SCRIPT)], cwd=fake_venv, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == script_exit, done.stdout + done.stderr
    assert (fake_venv / "args").read_text().strip() == "", "CI must run plain `pytest`, the README command"
    assert "torch " in done.stdout, "the installed versions are printed"
