"""The cache folder (synthetic models, LoRAs, compile caches) is configurable, lives outside the source tree by
default, and can be cleared: a stale synthetic model must never be read from, or committed into, the repository."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from perf.spec.cache import ENV_VAR, build_once, cache_dir, clear_cache

ROOT = Path(__file__).resolve().parents[2]


def test_environment_variable_picks_the_cache_folder(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "from-env"))
    assert cache_dir() == tmp_path / "from-env"
    assert (tmp_path / "from-env").is_dir()


def test_override_beats_the_environment_variable(monkeypatch, tmp_path):
    """``--perf-cache DIR`` is passed as the override and must win over an exported variable."""
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "from-env"))
    assert cache_dir(tmp_path / "from-option") == tmp_path / "from-option"
    assert not (tmp_path / "from-env").exists()


def test_default_is_under_home_not_the_source_tree(monkeypatch, tmp_path):
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == tmp_path / ".cache" / "flux-lora-perf"


def test_default_outside_a_checkout_run_from_its_root(monkeypatch):
    """Run from the repository root (as CI does), the default still resolves outside the checkout."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.chdir(ROOT)
    assert not cache_dir().is_relative_to(ROOT)


def test_clear_cache_removes_the_folder_and_everything_in_it(tmp_path):
    cache = cache_dir(tmp_path / "cache")
    (cache / "models" / "synthetic-tiny-v1").mkdir(parents=True)
    (cache / "models" / "synthetic-tiny-v1" / "model_index.json").write_text("{}")

    assert clear_cache(cache) == cache
    assert not cache.exists()


def test_pytest_option_clears_the_cache_named_by_the_environment(tmp_path):
    """``--clear-perf-cache`` empties the folder before anything is built. The run then points torch's inductor
    cache into it, which recreates the folder empty: what must be gone is its content."""
    cache = tmp_path / "cache"
    stale = cache / "models" / "synthetic-tiny-v1" / "model_index.json"
    stale.parent.mkdir(parents=True)
    stale.write_text("{}")
    env = {**os.environ, ENV_VAR: str(cache)}
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)

    result = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/perf", "--clear-perf-cache", "--collect-only", "-q",
         "-p", "no:cacheprovider"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )

    assert result.returncode == pytest.ExitCode.OK, result.stdout + result.stderr
    assert f"removed cache {cache}" in result.stderr
    assert not stale.exists()
    assert not cache.exists() or not any(cache.iterdir())


def test_merging_compile_caches_adds_new_files_and_never_rewrites_one_in_place(tmp_path, monkeypatch):
    """The cold/warm start children's compile cache is merged into the suite's. A file already there may be a
    kernel the running process has mapped: rewriting it in place crashed the process (seen on CPU), so it is
    left alone, and new files arrive whole."""
    from perf.run.cold_start import keep_compiled

    children = tmp_path / "children" / "TORCHINDUCTOR_CACHE_DIR"
    (children / "ab").mkdir(parents=True)
    (children / "ab" / "kernel.so").write_text("children's copy")
    (children / "ab" / "new.py").write_text("new")
    suite = tmp_path / "suite"
    (suite / "ab").mkdir(parents=True)
    (suite / "ab" / "kernel.so").write_text("loaded")
    inode = (suite / "ab" / "kernel.so").stat().st_ino
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(suite))
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)

    keep_compiled(tmp_path / "children")

    assert (suite / "ab" / "kernel.so").read_text() == "loaded"
    assert (suite / "ab" / "kernel.so").stat().st_ino == inode
    assert (suite / "ab" / "new.py").read_text() == "new"
    assert sorted(p.name for p in (suite / "ab").iterdir()) == ["kernel.so", "new.py"]


def _build_and_read(folder: str, log: str) -> str:
    """One racing process: build the folder (slowly, logging that it built) unless built, then read it."""
    import time

    def build(staging: Path) -> None:
        time.sleep(0.3)
        (staging / "done").write_text("ok")
        with open(log, "a") as f:
            f.write("built\n")

    return (build_once(Path(folder), "done", build) / "done").read_text()


def test_racing_processes_build_a_folder_once_and_all_read_it(tmp_path):
    """pytest-xdist workers share the cache: four processes asking at once get one build and a whole folder each
    (before the file lock, a late builder could remove the folder another had just put in place)."""
    import multiprocessing

    log = tmp_path / "log"
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        reads = pool.starmap(_build_and_read, [(str(tmp_path / "model"), str(log))] * 4)
    assert reads == ["ok"] * 4
    assert log.read_text().splitlines() == ["built"]
