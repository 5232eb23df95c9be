"""The stack check's record (``perf.run.stack_check`` writes it, the verdict reads it): torch-free, so a run on a
stack whose torch does not import can still say so, and judging it needs no torch either."""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BROKEN_STACK_EXIT = 6
"""Exit status of a run whose stack fails the check: not pytest's (0-5), not a regression (1), not a user's
mistake (4, ``pytest.UsageError``)."""

RECORD = Path("stack") / "stack_check.json"  # under <results>/<profile>/, beside (not among) the recipe records


@dataclass(frozen=True)
class StackCheck:
    """The check's outcome: ``step`` is None when every step passed."""

    versions: dict[str, str | None]
    recipes: tuple[str, ...] = ()
    step: str | None = None  # e.g. "import diffusers", "hot-swap (sdpa, hotswap)"
    package: str | None = None  # the distribution the error was raised in, with its version
    error: str | None = None  # "ExceptionType: first line of the message"
    involves: tuple[str, ...] = field(default=())  # other packages the error names (an ImportError's module)

    @property
    def ok(self) -> bool:
        return self.step is None

    def message(self) -> str:
        """One paragraph: what failed, where, and the stack it failed on."""
        stack = ", ".join(f"{name} {version or 'not installed'}" for name, version in self.versions.items())
        involved = f" (involves {', '.join(self.involves)})" if self.involves else ""
        return (f"broken library stack: {self.step} failed in {self.package}{involved}: {self.error.rstrip('.')}. "
                f"Stack: {stack}. No test was run (exit {BROKEN_STACK_EXIT}).")

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "ok": self.ok, "python": sys.version.split()[0]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StackCheck:
        return cls(data["versions"], tuple(data.get("recipes", ())), data.get("step"), data.get("package"),
                   data.get("error"), tuple(data.get("involves", ())))


def read_stack_check(root: Path, profile: str) -> StackCheck | None:
    """The stack check's record of a run under ``root``, or None where it wrote none (or an unreadable one)."""
    path = Path(root) / profile / RECORD
    try:
        return StackCheck.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None
