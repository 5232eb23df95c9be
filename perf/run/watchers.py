"""Counting torch.compile's work, so a test can say "zero recompiles after warm-up" and mean it; and, for recipes
that run under CUDA graphs, "recorded during warm-up, never skipped, never re-recorded after a swap"."""

from __future__ import annotations

from dataclasses import dataclass, field


def compiled_graphs() -> int:
    """Graphs dynamo has compiled in this process (a recompile adds one, whatever its cause)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def graphs_held(module) -> int:
    """Graphs dynamo holds for ``module``'s compiled forward (its code object's cache entries): what
    ``torch._dynamo.config.recompile_limit`` is counted against."""
    from torch._C._dynamo.eval_frame import _debug_get_cache_entry_list

    return len(_debug_get_cache_entry_list(type(module).forward.__code__))


def graphs_by_forward(model) -> dict[str, int]:
    """Graphs dynamo holds for each compiled forward in ``model``, by class: the model's own under a full-graph
    compile, each repeated block class's under a regional one (``compile_repeated_blocks``: the blocks of a class
    share their code, so their graphs and the ``recompile_limit`` they count against). Inlined modules hold none."""
    one_each = {type(m): m for m in model.modules()}
    return {cls.__name__: held for cls, module in one_each.items() if (held := graphs_held(module))}


CACHE_COUNTERS = (("inductor", "fxgraph_cache_hit"), ("inductor", "fxgraph_cache_miss"),
                  ("aot_autograd", "autograd_cache_hit"), ("aot_autograd", "autograd_cache_miss"))


def cache_counts() -> dict[str, int]:
    """Compile-cache lookups so far in this process: hits mean compiled code came from the on-disk cache."""
    from torch._dynamo.utils import counters

    return {name: int(counters[group][name]) for group, name in CACHE_COUNTERS}


def cudagraph_skips() -> int:
    """Compiled graphs Inductor ran without CUDA graphs although the mode asked for them (CPU tensors, mutated
    inputs, ...): each such skip is logged as "skipping cudagraphs due to ..."."""
    from torch._dynamo.utils import counters

    return int(counters["inductor"]["cudagraph_skips"])


@dataclass
class RecompileWatcher:
    """Counts graphs compiled, CUDA graphs recorded and skipped while it is open, and compile-cache hits and
    misses. One per region: ``with RecompileWatcher() as w: ...``. A CUDA graph is recorded once per compiled
    graph after its warm-up; one recorded later means a static input (a weight) moved, e.g. a swap that
    replaced a tensor instead of copying into it."""

    start: int = 0
    end: int | None = None
    cache_start: dict[str, int] = field(default_factory=dict)
    cache: dict[str, int] = field(default_factory=dict)
    cudagraphs_recorded: int = 0
    skips_start: int = 0
    cudagraphs_skipped: int = 0

    def __enter__(self) -> RecompileWatcher:
        from torch._dynamo.callback import callback_handler

        self.start, self.end, self.cache_start = compiled_graphs(), None, cache_counts()
        self.cudagraphs_recorded, self.skips_start = 0, cudagraph_skips()
        callback_handler.register_start_callback(self._on_start)
        return self

    def _on_start(self, args) -> None:
        from torch._dynamo.callback import CallbackTrigger

        if args.callback_trigger == CallbackTrigger.CUDAGRAPH_RECORDING:
            self.cudagraphs_recorded += 1

    def __exit__(self, *exc) -> None:
        from torch._dynamo.callback import callback_handler

        self.end = compiled_graphs()
        self.cache = {k: v - self.cache_start[k] for k, v in cache_counts().items()}
        self.cudagraphs_skipped = cudagraph_skips() - self.skips_start
        if self._on_start in callback_handler.start_callbacks:  # torch.compiler.reset() clears them all
            callback_handler.remove_start_callback(self._on_start)

    @property
    def count(self) -> int:
        return (compiled_graphs() if self.end is None else self.end) - self.start
