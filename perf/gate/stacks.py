"""How each side of the upgrade gate gets its library stack, on a machine that already has one.

A GPU box has its CUDA torch installed, often no network, and a wheelhouse with a few wheels; a constraints file
is a complete lock of another machine (``constraints/known-good.txt`` is the CPU CI venv's ``pip freeze``). So a
side's stack is formed as an overlay, never a new virtualenv:

- the machine's environment (the interpreter running the gate, ``--python`` to name another) is the base;
- each pinned package the machine does not have at the pinned version is installed with ``pip install --no-deps
  --target`` into its own folder (``<store>/<name>-<version>/``, made once and reused by every later run and every
  bisect mix), and those folders go first on the suite's ``PYTHONPATH``;
- ``--keep`` packages (default: torch) are the machine's on both sides whatever the pins say: an upgrade of torch
  is gated by naming it out of ``--keep`` (``--keep ''``) and offering its wheel;
- offline (``--offline``: ``pip --no-index --find-links WHEELHOUSE``), a pin the wheelhouse lacks is the machine's
  version *when both sides pin the same version* (it is not under test) and a usage error when the sides differ
  (the change under test cannot be formed: add the wheel, or ``--keep`` it). Every such choice is printed and
  written to ``<results>/<side>/stack.json``; each record also names the versions that actually ran.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from perf.errors import SuiteError

PIN = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)")
WHEEL = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._]*?)-(\d[^-]*)(?:-.*)?\.(?:whl|tar\.gz|zip)$")
DEFAULT_KEEP = ("torch",)


class GateError(SuiteError):
    """A stack the gate cannot form, or a gate option that cannot work: one message, exit 4."""


def canonical(name: str) -> str:
    """PEP 503 name: ``huggingface_hub`` and ``Huggingface-Hub`` are one package."""
    return re.sub(r"[-_.]+", "-", name).lower()


def public(version: str | None) -> str | None:
    """A version without its local label: the machine's ``2.13.0+cpu`` satisfies a pin ``2.13.0``."""
    return version.split("+", 1)[0] if version else version


def read_pins(path: Path) -> dict[str, str]:
    """``name==version`` lines of a constraints file, by canonical name (comments and other lines ignored)."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise GateError(f"cannot read the constraints file {path}: {exc.strerror}") from None
    return {canonical(m[1]): m[2] for m in map(PIN.match, lines) if m}


def parse_requirement(text: str) -> tuple[str, str]:
    """``NAME==VERSION`` (the form of ``--with`` and ``--inject-if``) as (canonical name, version)."""
    found = PIN.match(text)
    if not found or found.end() != len(text.rstrip()):
        raise GateError(f"{text!r} is not NAME==VERSION (e.g. fa3-fwd==0.0.3)")
    return canonical(found[1]), found[2]


@dataclass(frozen=True)
class PackageSource:
    """Where pip takes the packages it installs: an index (pip's configuration), a wheelhouse beside it, or the
    wheelhouse alone (offline)."""

    wheelhouse: Path | None = None
    offline: bool = False

    def pip_args(self) -> list[str]:
        links = ["--find-links", str(self.wheelhouse)] if self.wheelhouse else []
        return [*(["--no-index"] if self.offline else []), *links]

    def versions(self, name: str) -> list[str]:
        """The versions of ``name`` the wheelhouse has files of, newest name last."""
        files = self.wheelhouse.iterdir() if self.wheelhouse and self.wheelhouse.is_dir() else ()
        found = (WHEEL.match(f.name) for f in files)
        return sorted({m[2] for m in found if m and canonical(m[1]) == name})

    def offers(self, name: str, version: str) -> bool:
        """Whether pip can get ``name==version``: offline, whether the wheelhouse has a file of it; with an
        index, assumed (pip's failure then names the package)."""
        return not self.offline or public(version) in map(public, self.versions(name))


@dataclass(frozen=True)
class Placement:
    """One package of a stack: the version it runs and where that comes from."""

    name: str
    version: str | None  # None: not installed
    origin: str  # "machine" (the base environment's), "overlay" (installed for this stack)
    note: str = ""  # why the machine's version is used against a pin


@dataclass(frozen=True)
class Stack:
    """A side of the gate (or a bisect mix): the packages that the pins name, each placed."""

    name: str
    packages: tuple[Placement, ...]

    def placement(self, name: str) -> Placement:
        return next(p for p in self.packages if p.name == name)

    def with_package(self, name: str, other: Stack) -> Stack:
        """This stack with ``name`` placed as in ``other`` (a bisect step)."""
        moved = other.placement(name)
        return Stack(f"{self.name}+{name}", tuple(moved if p.name == name else p for p in self.packages))

    def overlays(self) -> list[tuple[str, str]]:
        return [(p.name, p.version) for p in self.packages if p.origin == "overlay"]

    def key(self) -> str:
        """What identifies the stack's installed code: its overlays (the base is the same machine)."""
        return ",".join(f"{n}=={v}" for n, v in sorted(self.overlays())) or "machine"

    def to_dict(self) -> dict:
        return {"name": self.name, "key": self.key(), "packages": [asdict(p) for p in self.packages]}


def machine_versions(python: str) -> dict[str, str]:
    """Every distribution the base interpreter sees (with the caller's environment), by canonical name."""
    code = ("import json, importlib.metadata as m; print(json.dumps({d.metadata['Name']: d.version "
            "for d in m.distributions() if d.metadata['Name']}))")
    try:
        done = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise GateError(f"cannot list the packages of {python}: {exc}") from None
    return {canonical(name): version for name, version in json.loads(done.stdout).items()}


def place(name: str, pin: str | None, machine: dict[str, str], source: PackageSource,
          keep: set[str], other_pin: str | None) -> Placement:
    """Where ``name`` comes from on a side that pins ``pin`` (the other side pins ``other_pin``)."""
    have = machine.get(name)
    if name in keep or pin is None:
        note = f"kept (--keep), pinned {pin}" if name in keep and pin and public(pin) != public(have) else ""
        return Placement(name, have, "machine", note)
    if public(have) == public(pin):
        return Placement(name, have, "machine")
    if source.offers(name, pin):
        return Placement(name, pin, "overlay")
    if pin == other_pin and have is None and source.versions(name):
        offered = source.versions(name)[-1]
        return Placement(name, offered, "overlay", f"{name}=={pin} not in the wheelhouse, the machine has none: the "
                         f"wheelhouse's {offered} on both sides")
    if pin == other_pin:
        return Placement(name, have, "machine", f"{name}=={pin} not in the wheelhouse; the machine's on both sides")
    raise GateError(
        f"{name}: the sides pin {pin} and {other_pin}, and the wheelhouse {source.wheelhouse} has no {name}=={pin}: "
        f"the change under test cannot be formed. Add the wheel, or --keep {name} to run the machine's "
        f"{have or '(none)'} on both sides")


def plan(known_good: dict[str, str], candidate: dict[str, str], machine: dict[str, str], source: PackageSource,
         keep: Iterable[str] = DEFAULT_KEEP) -> tuple[Stack, Stack]:
    """Both sides' stacks over every package either side pins. ``candidate`` holds the pins that move: a package
    it does not pin is the known-good's (``candidate.txt`` is an upgrade of the lock, not a lock of its own)."""
    candidate = {**known_good, **candidate}
    keep = {canonical(k) for k in keep}
    names = sorted(known_good.keys() | candidate.keys())
    sides = []
    for side, pins, other in (("known-good", known_good, candidate), ("candidate", candidate, known_good)):
        sides.append(Stack(side, tuple(place(n, pins.get(n), machine, source, keep, other.get(n)) for n in names)))
    return sides[0], sides[1]


def differences(known_good: Stack, candidate: Stack) -> list[str]:
    """The packages whose running version differs between the sides: what the gate actually tests."""
    return [p.name for p in known_good.packages if public(p.version) != public(candidate.placement(p.name).version)]


@dataclass(frozen=True)
class OverlayStore:
    """One folder per installed (package, version), made once: ``pip install --no-deps --target``, into a
    temporary folder renamed into place, so an interrupted install never leaves a half package behind."""

    root: Path
    python: str
    source: PackageSource

    def folder(self, name: str, version: str) -> Path:
        return self.root / f"{name}-{version}"

    def ensure(self, stack: Stack, say=print) -> list[Path]:
        folders = []
        for name, version in stack.overlays():
            folder = self.folder(name, version)
            if not folder.is_dir():
                say(f"upgrade gate: installing {name}=={version} into {folder}")
                self.root.mkdir(parents=True, exist_ok=True)
                staging = Path(tempfile.mkdtemp(prefix=f".{name}-{version}.", dir=self.root))
                command = [self.python, "-m", "pip", "install", "--quiet", "--no-deps", "--disable-pip-version-check",
                           "--target", str(staging), *self.source.pip_args(), f"{name}=={version}"]
                done = subprocess.run(command, capture_output=True, text=True)
                if done.returncode:
                    shutil.rmtree(staging, ignore_errors=True)
                    tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
                    raise GateError(f"pip could not install {name}=={version} for the {stack.name} stack: {tail}")
                os.replace(staging, folder)
            folders.append(folder)
        return folders


def python_path(folders: list[Path], root: Path) -> str:
    """Overlays first, then the suite's source tree, then whatever the caller had."""
    parts = [*map(str, folders), str(root), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return os.pathsep.join(parts)


def describe(known_good: Stack, candidate: Stack) -> list[str]:
    """The two stacks as the gate prints them: every package that differs, or that uses the machine's version
    against a pin."""
    lines = []
    for base in known_good.packages:
        cand = candidate.placement(base.name)
        if base == cand and base.origin == "machine" and not base.note:
            continue
        changed = "  <- under test" if public(base.version) != public(cand.version) else ""
        note = f"  ({base.note or cand.note})" if base.note or cand.note else ""
        lines.append(f"  {base.name}: {base.version or 'none'} [{base.origin}] -> {cand.version or 'none'} "
                     f"[{cand.origin}]{changed}{note}")
    return lines


def safe_name(text: str) -> str:
    """``text`` as a folder name."""
    return "".join(c if c.isalnum() or c in ".-+" else "_" for c in text)[:150]
