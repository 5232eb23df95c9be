"""Record files of a recipe's run: ``baselines/<profile>/<recipe>.json`` (+ thumbnail PNGs), each a
``perf.judge.record.RunRecord`` as JSON.

A record is data from a run, never typed by hand: device, versions, model source, settings, raw samples.
Writes are atomic (temporary file + rename), so a killed run never leaves a half-written or lost record.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from perf.errors import BaselineError
from perf.judge.record import PoolAdapter, RecordError, RunRecord, from_json, to_json

if TYPE_CHECKING:
    from PIL import Image

LIBRARIES = ("torch", "diffusers", "transformers", "peft", "accelerate", "torchao", "bitsandbytes", "flash-attn-3")
THUMBNAIL = 128  # stored reference images are at most this many pixels a side


def versions_of(names: Iterable[str]) -> dict[str, str | None]:
    """Each distribution's installed version, None where it is not installed."""
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def library_versions() -> dict[str, str | None]:
    return versions_of(LIBRARIES)


def git_commit(root: Path | None = None) -> str | None:
    """The source's commit; ``FLUX_LORA_PERF_COMMIT`` names it where the tree has no .git (e.g. a GPU box)."""
    if os.environ.get("FLUX_LORA_PERF_COMMIT"):
        return os.environ["FLUX_LORA_PERF_COMMIT"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root or Path(__file__).parent, capture_output=True,
            text=True, timeout=10, check=True,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def record_path(root: Path, profile: str, recipe: str) -> Path:
    return Path(root) / profile / f"{recipe}.json"


def _mode_for(path: Path) -> int:
    """The permission bits ``path`` should end with: its own when it exists, else what ``open`` would give a new
    file (0o666 less the umask). mkstemp makes 0o600 files, which git records as a mode change of every baseline
    a run rewrites, and which other users of a shared checkout or cache cannot read."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        umask = os.umask(0)  # the only way to read it; set straight back
        os.umask(umask)
        return 0o666 & ~umask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a partial one. The file
    gets the mode a plain write would give it (a replaced file keeps its own)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _mode_for(path))
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def to_uint8(image: np.ndarray) -> np.ndarray:
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


def thumbnail_image(image: np.ndarray, size: tuple[int, int] | None = None) -> Image.Image:
    """A float [0, 1] HxWx3 image as stored references are made: 8-bit, shrunk by PIL's ``thumbnail`` (bicubic,
    reducing gap 2, aspect kept) to at most THUMBNAIL px a side. With ``size`` (width, height): resampled the
    same way to exactly that size, so a candidate lines up pixel for pixel with a stored reference."""
    from PIL import Image

    pil = Image.fromarray(to_uint8(image))
    if size is None:
        pil.thumbnail((THUMBNAIL, THUMBNAIL))
    elif pil.size != size:
        pil = pil.resize(size, Image.Resampling.BICUBIC, reducing_gap=2.0)  # what thumbnail() does inside
    return pil


def thumbnail(image: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
    """``thumbnail_image`` as a float [0, 1] array: what ``perf.judge.baseline_files.load_thumbnail`` reads back."""
    return np.asarray(thumbnail_image(image, size), dtype=np.float32) / 255.0


def png_bytes(pil: Image.Image) -> bytes:
    """``pil`` as PNG bytes that depend on its pixels only: PIL writes no time or text chunk unless asked, and
    the compression settings are fixed here rather than left to PIL's defaults."""
    import io

    buffer = io.BytesIO()
    pil.save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def _open_rgb(path: Path) -> Image.Image:
    from PIL import Image

    with Image.open(path) as pil:
        return pil.convert("RGB")


def _within_one_level(path: Path, pil: Image.Image) -> bool:
    """Whether the PNG at ``path`` has ``pil``'s size and no pixel more than one 8-bit level away from it."""
    try:
        old = np.asarray(_open_rgb(path), dtype=np.int16)
    except OSError:  # missing or unreadable: write the new one
        return False
    new = np.asarray(pil.convert("RGB"), dtype=np.int16)
    return old.shape == new.shape and int(np.abs(old - new).max(initial=0)) <= 1


def save_thumbnail(image: np.ndarray, path: Path) -> None:
    """A float [0, 1] HxWx3 image as a PNG no larger than THUMBNAIL pixels a side. An existing PNG within one
    8-bit level of it everywhere is kept: re-recording a baseline then leaves rounding noise out of the git diff
    (the fidelity checks' tolerances are far wider than one level)."""
    pil = thumbnail_image(image)
    if not _within_one_level(path, pil):
        atomic_write_bytes(path, png_bytes(pil))



def load_thumbnail(path: Path) -> np.ndarray:
    return np.asarray(_open_rgb(path), dtype=np.float32) / 255.0


def refuse_foreign(root: Path, records: Iterable[RunRecord]) -> None:
    """``BaselineError`` for the first stored record under ``root`` that one of ``records`` would replace though
    it is of another run (``comparable``: device, model source, settings, emulation or LoRA pool): replacing it
    would leave the next default run incomparable, a gate that passes having compared nothing. A corrupt record
    may be replaced."""
    for record in records:
        path = record_path(root, record.profile, record.name)
        try:
            reason = comparable(read_record(path), record) if path.exists() else None
        except BaselineError:
            continue
        if reason:
            raise BaselineError(
                f"--update-baselines would replace {path}, a baseline of another run ({reason}); pass "
                "--overwrite-foreign-baselines to replace it, or --baselines-dir another folder"
            )


def write_record(root: Path, record: RunRecord, images: dict[str, np.ndarray] | None = None,
                 overwrite_foreign: bool = False) -> Path:
    """Write ``record`` (and its thumbnails, named in its ``images``) under ``root``; refuse to replace a record of
    another run (``refuse_foreign``) unless ``overwrite_foreign``. Thumbnails of the replaced record that the new
    one does not have are removed once the new record is in place. Returns the record's path."""
    path = record_path(root, record.profile, record.name)
    if not overwrite_foreign:
        refuse_foreign(root, [record])
    names = {}
    for adapter, image in (images or {}).items():
        png = path.with_name(f"{path.stem}.{adapter}.png")
        save_thumbnail(image, png)
        names[adapter] = png.name
    atomic_write_bytes(path, to_json(dataclasses.replace(record, images=names)).encode())
    for stale in set(path.parent.glob(f"{path.stem}.*.png")) - {path.with_name(n) for n in names.values()}:
        stale.unlink(missing_ok=True)
    return path


def read_record(path: Path) -> RunRecord:
    """A validated record (``perf.judge.record``); ``BaselineError`` naming the file, the problem and the fix."""
    try:
        text = Path(path).read_bytes()
    except FileNotFoundError:
        raise BaselineError(f"no baseline at {path}; record one with --update-baselines") from None
    try:
        return from_json(text)
    except RecordError as exc:
        raise BaselineError(f"baseline {path} {exc}") from exc


@dataclass(frozen=True)
class UnreadableRecord:
    """A record file that could not be read: kept beside the readable ones so one broken file is reported
    (and fails a gating run) instead of hiding every other recipe's verdict."""

    path: Path
    message: str  # the ``BaselineError`` text: names the file, the problem and the fix

    @property
    def recipe(self) -> str:
        return self.path.stem


def folder_problem(path: Path, name: str) -> str | None:
    """Why ``path``, an input folder of a command, cannot be read (missing, a file, or empty), or None: the
    commands stop on it with their documented exit status before writing anything."""
    path = Path(path)
    if not path.exists():
        return f"{name} {path}: no such folder"
    if not path.is_dir():
        return f"{name} {path}: not a folder"
    if not any(path.iterdir()):
        return f"{name} {path}: empty folder"
    return None


def read_records(root: Path, profile: str) -> tuple[dict[str, RunRecord], list[UnreadableRecord]]:
    """All readable records of ``profile`` keyed by recipe name, and the files that could not be read."""
    folder = Path(root) / profile
    records, unreadable = {}, []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else ():
        try:
            records[path.stem] = read_record(path)
        except BaselineError as exc:
            unreadable.append(UnreadableRecord(path, str(exc)))
    return records, unreadable


def describe_pool(pool: Sequence[PoolAdapter]) -> str:
    """A pool as a reason can show it: synthetic adapters by name and rank, a user's files by name and hash."""
    return ", ".join(
        f"synthetic {a.name} r{a.rank}" if a.synthetic
        else f"{a.file or a.name} (sha {(a.sha256 or 'not recorded')[:12]})"
        for a in pool
    )


def adapter_key(adapter: PoolAdapter, by_hash: bool) -> tuple:
    """What identifies an adapter across runs. A user's file is its content (``by_hash``: its sha256, whatever its
    path). A synthetic adapter is made from code, so its spec names it: its file's bytes change with the saving
    library's version, and the upgrade gate compares runs of two versions. Records from before hashes were kept
    fall back to what they have: name, rank and modules."""
    if by_hash and not adapter.synthetic:
        return ("file", adapter.sha256)
    return (adapter.synthetic, adapter.name, adapter.rank, adapter.modules)


def pool_difference(baseline: Sequence[PoolAdapter], record: Sequence[PoolAdapter]) -> str | None:
    """Why two records' LoRA pools are not the same pool, or None."""
    by_hash = all(a.sha256 for a in [*baseline, *record] if not a.synthetic)
    if [adapter_key(a, by_hash) for a in baseline] == [adapter_key(a, by_hash) for a in record]:
        return None
    basis = "" if by_hash else " (by name, rank and modules: a record without file hashes)"
    return f"LoRA pool differs{basis}: baseline {describe_pool(baseline)}; this run {describe_pool(record)}"


def comparable(baseline: RunRecord, record: RunRecord) -> str | None:
    """Why two records cannot be compared (other device, model source, settings or LoRA pool), or None."""
    for key in ("device", "model_source", "settings", "emulated"):
        if getattr(baseline, key) != getattr(record, key):
            return f"{key} differs: baseline {getattr(baseline, key)!r}, this run {getattr(record, key)!r}"
    return pool_difference(baseline.lora_pool, record.lora_pool)
