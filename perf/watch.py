"""Counting torch.compile's work, so a test can say "zero recompiles after warm-up" and mean it."""

from __future__ import annotations

from dataclasses import dataclass, field


def compiled_graphs() -> int:
    """Graphs dynamo has compiled in this process (a recompile adds one, whatever its cause)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


CACHE_COUNTERS = (("inductor", "fxgraph_cache_hit"), ("inductor", "fxgraph_cache_miss"),
                  ("aot_autograd", "autograd_cache_hit"), ("aot_autograd", "autograd_cache_miss"))


def cache_counts() -> dict[str, int]:
    """Compile-cache lookups so far in this process: hits mean compiled code came from the on-disk cache."""
    from torch._dynamo.utils import counters

    return {name: int(counters[group][name]) for group, name in CACHE_COUNTERS}


@dataclass
class RecompileWatcher:
    """Counts graphs compiled while it is open, and compile-cache hits and misses. One per region:
    ``with RecompileWatcher() as w: ...``."""

    start: int = 0
    end: int | None = None
    cache_start: dict[str, int] = field(default_factory=dict)
    cache: dict[str, int] = field(default_factory=dict)

    def __enter__(self) -> RecompileWatcher:
        self.start, self.end, self.cache_start = compiled_graphs(), None, cache_counts()
        return self

    def __exit__(self, *exc) -> None:
        self.end = compiled_graphs()
        self.cache = {k: v - self.cache_start[k] for k, v in cache_counts().items()}

    @property
    def count(self) -> int:
        return (compiled_graphs() if self.end is None else self.end) - self.start
