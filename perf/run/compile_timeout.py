"""A time limit on compilation that fails with the elapsed time, instead of a job that hangs until its runner
kills it (and its unsaved records with it). Full-graph FP8 compilation of Flux once ran 9.5 minutes with no
image on an H100; that must be a clear failure of one recipe, not a lost GPU job."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator

from perf.errors import CompileBudgetExceeded


@contextlib.contextmanager
def compile_budget(seconds: float | None, what: str) -> Iterator[None]:
    """Raise ``CompileBudgetExceeded`` inside the block once ``seconds`` have passed (SIGALRM: main thread on
    POSIX only; elsewhere, and with ``seconds`` None, the block runs unlimited)."""
    if not seconds or threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGALRM"):
        yield
        return
    started = time.perf_counter()
    expired: list[str] = []

    def expire(signum, frame) -> None:
        expired.append(
            f"{what}: no result after {time.perf_counter() - started:.0f} s, past the compile budget of "
            f"{seconds:g} s (--compile-budget SECONDS raises it)"
        )
        raise CompileBudgetExceeded(expired[0])

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    except Exception as exc:
        if expired and not isinstance(exc, CompileBudgetExceeded):  # torch.compile wraps errors raised inside it
            raise CompileBudgetExceeded(expired[0]) from exc
        raise
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
