"""Spreading a profile's matrix over several GPUs with pytest-xdist: one worker per GPU, one recipe per worker
at a time, one verdict for the whole run.

``pytest -n 2`` on a 2-GPU host: worker ``gwN`` sees only GPU N (``CUDA_VISIBLE_DEVICES``, set before CUDA
starts in that worker), a recipe's tests stay on one worker (the suite's scheduler: they share one built
pipeline), and the controller reads back the records the workers wrote in this session.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid

import pytest

SESSION_ENV = "FLUX_LORA_PERF_SESSION"  # set by the controller, inherited by its workers: marks this run's records


def worker_index() -> int | None:
    """N for pytest-xdist worker gwN; None outside a worker."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    return int(worker.removeprefix("gw")) if worker.startswith("gw") else None


def _gpus() -> list[str]:
    """The GPUs this process may use, without starting CUDA (which would fix the visible set for good)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d for d in visible.split(",") if d.strip()]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        listed = subprocess.run(["nvidia-smi", "--list-gpus"], capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(listed.stdout.splitlines()) if line.startswith("GPU ")]


def pin_worker_gpu() -> str | None:
    """In worker gwN, make GPU N (mod the GPU count) the only visible one; returns it (None: not a worker or no
    GPU). Must run before anything starts CUDA in the worker: the plugin calls it first thing."""
    import torch

    index, gpus = worker_index(), _gpus()
    if index is None or not gpus:
        return None
    if torch.cuda.is_initialized():
        raise RuntimeError("CUDA started before the worker's GPU was chosen; every worker would share one GPU")
    os.environ["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
    return os.environ["CUDA_VISIBLE_DEVICES"]


def case_scope(nodeid: str, case_ids: set[str]) -> str | None:
    """The (profile, recipe) case a test id belongs to, or None: its parameters are ``[profile-recipe]``, or start
    with it when the test has more (``[h200-optimized-scale]``: a serving scenario). The longest case id that
    matches wins, so ``h200-optimized_fast-scale`` is not ``h200-optimized``'s."""
    match = re.search(r"\[([^\[\]]+)\]$", nodeid)
    if not match:
        return None
    params = match.group(1)
    owners = [case for case in case_ids if params == case or params.startswith(f"{case}-")]
    return max(owners, key=len, default=None)


def recipe_scheduler(config: pytest.Config, log, case_ids: set[str]):
    """xdist's scope scheduling with one scope per case: all tests of a recipe go to one worker, which builds
    its pipeline once. (``--dist loadgroup`` with ``xdist_group`` marks would say the same, but pytest 9.2's
    structured node ids drop the group xdist 3.8 appends to them: pytest-dev/pytest-xdist#1386.)"""
    from xdist.scheduler import LoadScopeScheduling

    class RecipeScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return case_scope(nodeid, case_ids) or super()._split_scope(nodeid)

    return RecipeScheduling(config, log)


def session_id() -> str:
    """This run's id: the controller makes it, workers inherit it through the environment."""
    return os.environ.setdefault(SESSION_ENV, uuid.uuid4().hex[:12])


def is_controller(config: pytest.Config) -> bool:
    """The process that runs no tests itself but reports for the workers (xdist's controller)."""
    return config.pluginmanager.has_plugin("dsession")
