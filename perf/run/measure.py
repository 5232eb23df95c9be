"""Timing and memory probes that mean the same on CPU and GPU: device work is synchronized before a clock is
read; GPU peak memory comes from the caching allocator, CPU peak from the process's resident-set high mark."""

from __future__ import annotations

import contextlib
import signal
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from perf.judge.record import PeakMemory

GIB = 2**30


def synchronize(device_type: str) -> None:
    if device_type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device_type: str) -> tuple[float, object]:
    """Seconds ``fn`` takes with the device synchronized on both ends, and its result."""
    synchronize(device_type)
    start = time.perf_counter()
    result = fn()
    synchronize(device_type)
    return time.perf_counter() - start, result


def time_rounds(
    fn: Callable[[], object], setup: Callable[[], None] | None, rounds: int, device_type: str
) -> list[float]:
    """What ``benchmark.pedantic(fn, setup=setup, rounds=rounds, iterations=1)`` times, for runs where
    pytest-benchmark is off (it turns itself off under pytest-xdist): ``setup`` untimed, ``fn`` synchronized."""
    samples = []
    for _ in range(rounds):
        if setup is not None:
            setup()
        seconds, _ = timed(fn, device_type)
        samples.append(seconds)
    return samples


def cpu_timed(fn: Callable[[], object]) -> tuple[Callable[[], object], list[float]]:
    """``fn`` wrapped to append the process's CPU seconds of each call to the returned list. On a shared CPU the
    wall time of a generation moves with the other tenants' load (0.05-1.9 s run to run on the 2-core CI
    machine); the CPU time is recorded beside it (reported, not gated: ``perf.judge.compare.WALL_TIME_NOT_GATED``)."""
    samples: list[float] = []

    def wrapped() -> object:
        start = time.process_time()
        try:
            return fn()
        finally:
            samples.append(time.process_time() - start)

    return wrapped, samples



def _rss_high_water_gib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / GIB
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB


def reset_peak(device_type: str) -> None:
    if device_type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    else:
        with contextlib.suppress(OSError):  # "5" resets this process's resident-set high-water mark (Linux)
            Path("/proc/self/clear_refs").write_text("5")


def read_peak(device_type: str) -> PeakMemory:
    if device_type == "cuda":
        return PeakMemory(
            torch.cuda.max_memory_allocated() / GIB, torch.cuda.max_memory_reserved() / GIB, "cuda"
        )
    return PeakMemory(None, _rss_high_water_gib(), "cpu-rss")


def free_memory(device_type: str) -> None:
    """Return cached memory after a variant so the next one starts clean."""
    import gc

    gc.collect()
    if device_type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def in_use_gib(device_type: str) -> float:
    return torch.cuda.memory_allocated() / GIB if device_type == "cuda" else 0.0


def assert_no_leak(start_gib: float, device_type: str, slack_gib: float) -> float:
    """After a variant is released: memory in use is back within ``slack_gib`` of ``start_gib`` (the level before
    it was built), or ``AssertionError`` with both figures. Returns the level found."""
    free_memory(device_type)
    now = in_use_gib(device_type)
    if now > start_gib + slack_gib:
        raise AssertionError(
            f"{now:.2f} GiB in use after the variant, {start_gib:.2f} GiB at its start (slack {slack_gib:.2f} GiB): "
            "something still holds its pipeline or tensors"
        )
    return now


def smi_query(fields: str) -> list[str]:
    """``nvidia-smi``'s query of ``fields`` for the device this process runs on, by UUID (CUDA_VISIBLE_DEVICES
    renumbers devices)."""
    uuid = str(torch.cuda.get_device_properties(torch.cuda.current_device()).uuid).removeprefix("GPU-")
    return ["nvidia-smi", f"--id=GPU-{uuid}", f"--query-gpu={fields}", "--format=csv,noheader,nounits"]


def gpu_state(device_type: str) -> dict[str, float]:
    """The GPU's SM clock (MHz), power (W) and temperature (C) now, from ``nvidia-smi``; empty on a CPU or where it
    cannot be read."""
    if device_type != "cuda":
        return {}
    try:
        run = subprocess.run(smi_query("clocks.sm,power.draw,temperature.gpu"), capture_output=True, text=True,
                             timeout=10, check=True)
        return dict(zip(("sm_clock_mhz", "power_w", "temperature_c"), map(float, run.stdout.split(",")),
                        strict=True))
    except (OSError, subprocess.SubprocessError, ValueError):
        return {}


POWER_CAP = 0x4  # nvidia-smi's clocks_event_reasons bit: the clock held down by the software power cap


def summarize_gpu_samples(text: str) -> dict[str, float]:
    """The mean SM clock (MHz) and power (W) of ``nvidia-smi``'s lines of ``clocks.sm,power.draw,
    clocks_event_reasons.active``, the share of them held down by the power cap, and how many there were; empty
    where no line could be read."""
    rows = []
    for line in text.splitlines():
        try:
            clock, power, reasons = (field.strip() for field in line.split(","))
            rows.append((float(clock), float(power), int(reasons, 16)))
        except ValueError:
            continue
    if not rows:
        return {}
    return {"sm_clock_mhz_mean": statistics.fmean(r[0] for r in rows),
            "power_w_mean": statistics.fmean(r[1] for r in rows),
            "power_capped_share": sum(bool(r[2] & POWER_CAP) for r in rows) / len(rows), "samples": len(rows)}


@contextlib.contextmanager
def gpu_sampled(device_type: str, interval_ms: int = 50) -> Iterator[dict[str, float]]:
    """The GPU's clock and power over the block, sampled every ``interval_ms`` by ``nvidia-smi`` in its own process
    (a thread of this one would take the GIL from the launches it measures); the dict yielded is filled on exit
    (``summarize_gpu_samples``; empty on a CPU or where nothing could be read). Why: at the H200's power cap an
    image's seconds follow its clock, and a reading after the image reads the clock after the load has dropped
    (2026-12-01: the slowest adapter's images read 1830-1860 MHz after them). Seconds times the mean clock, the
    cycles an image took, say whether the clock explains a difference in time."""
    summary: dict[str, float] = {}
    if device_type != "cuda":
        yield summary
        return
    try:
        sampler = subprocess.Popen([*smi_query("clocks.sm,power.draw,clocks_event_reasons.active"),
                                    f"--loop-ms={interval_ms}"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                   text=True)
    except OSError:
        yield summary
        return
    first = sampler.stdout.readline()  # the block starts once it samples (starting it takes a fraction of a second)
    try:
        yield summary
    finally:
        sampler.send_signal(signal.SIGINT)  # its loop ends on ^C as it would at a terminal, writing what it read
        try:
            out, _ = sampler.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            sampler.kill()
            out, _ = sampler.communicate()
        summary.update(summarize_gpu_samples(first + out))
