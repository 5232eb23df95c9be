"""Counting torch.compile's work, so a test can say "zero recompiles after warm-up" and mean it."""

from __future__ import annotations

from dataclasses import dataclass


def compiled_graphs() -> int:
    """Graphs dynamo has compiled in this process (a recompile adds one, whatever its cause)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


@dataclass
class RecompileWatcher:
    """Counts graphs compiled while it is open. Use one per region: ``with RecompileWatcher() as w: ...``."""

    start: int = 0
    end: int | None = None

    def __enter__(self) -> RecompileWatcher:
        self.start, self.end = compiled_graphs(), None
        return self

    def __exit__(self, *exc) -> None:
        self.end = compiled_graphs()

    @property
    def count(self) -> int:
        return (compiled_graphs() if self.end is None else self.end) - self.start
