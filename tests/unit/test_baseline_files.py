"""Baseline files as git sees them: a run that rewrites ``baselines/`` changes modes and bytes only where the
content changed, so a re-recorded baseline's diff shows the results and nothing else."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
from fake_records import example_record

from perf.judge.baseline_files import atomic_write_bytes, png_bytes, thumbnail_image, write_record

SIDE = 64  # at most THUMBNAIL: stored as is, so a level changed in the image is a level changed in the PNG


@pytest.fixture
def umask():
    """Run under a given umask, restoring the caller's afterwards."""
    previous = os.umask(0o022)
    yield os.umask
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def level_grid_image(seed: int = 0) -> np.ndarray:
    """A float image whose values sit on 8-bit levels 2..253, so a +-1 level change neither rounds nor clips."""
    levels = np.random.default_rng(seed).integers(2, 254, size=(SIDE, SIDE, 3))
    return levels / 255.0


def png_chunks(data: bytes) -> list[str]:
    chunks, at = [], 8  # after the PNG signature
    while at < len(data):
        length = int.from_bytes(data[at:at + 4], "big")
        chunks.append(data[at + 4:at + 8].decode("ascii"))
        at += 12 + length  # length, type, data, CRC
    return chunks


def write_images(root: Path, image: np.ndarray) -> Path:
    """The record's one thumbnail, written the way a baseline update writes it."""
    path = write_record(root, example_record("optimized", [1.0]), {"style_a": image})
    return path.with_name("optimized.style_a.png")


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)], ids=oct)
def test_new_file_gets_the_mode_open_would_give_it(tmp_path, umask, mask, expected):
    umask(mask)
    path = tmp_path / "baselines" / "new.json"
    atomic_write_bytes(path, b"{}\n")
    assert mode(path) == expected


@pytest.mark.parametrize("existing", [0o600, 0o664, 0o755], ids=oct)
def test_replaced_file_keeps_its_mode(tmp_path, umask, existing):
    path = tmp_path / "record.json"
    path.write_bytes(b"old\n")
    path.chmod(existing)
    atomic_write_bytes(path, b"new\n")
    assert path.read_bytes() == b"new\n"
    assert mode(path) == existing


def test_record_and_thumbnails_are_written_0644_under_the_usual_umask(tmp_path, umask):
    record = write_record(tmp_path, example_record("optimized", [1.0]), {"style_a": level_grid_image()})
    assert {mode(record), mode(record.with_name("optimized.style_a.png"))} == {0o644}


def test_same_image_gives_the_same_png_bytes_without_metadata(tmp_path):
    first, second = write_images(tmp_path / "a", level_grid_image()), write_images(tmp_path / "b", level_grid_image())
    assert first.read_bytes() == second.read_bytes() == png_bytes(thumbnail_image(level_grid_image()))
    chunks = png_chunks(first.read_bytes())
    assert chunks[0] == "IHDR" and chunks[-1] == "IEND" and set(chunks[1:-1]) == {"IDAT"}, chunks


def test_png_within_one_level_everywhere_is_kept_as_it_is(tmp_path):
    png = write_images(tmp_path, level_grid_image())
    before, mtime = png.read_bytes(), png.stat().st_mtime_ns
    signs = np.random.default_rng(1).choice([-1, 0, 1], size=(SIDE, SIDE, 3))
    write_images(tmp_path, level_grid_image() + signs / 255.0)
    assert png.read_bytes() == before and png.stat().st_mtime_ns == mtime


def test_png_two_levels_off_in_one_pixel_is_rewritten(tmp_path):
    """Control for the test above: a real change, however small, reaches the file."""
    png = write_images(tmp_path, level_grid_image())
    before = png.read_bytes()
    changed = level_grid_image()
    changed[10, 20, 1] += 2 / 255.0
    write_images(tmp_path, changed)
    assert png.read_bytes() != before and png.read_bytes() == png_bytes(thumbnail_image(changed))


def test_png_of_another_size_is_rewritten(tmp_path):
    png = write_images(tmp_path, level_grid_image())
    write_images(tmp_path, level_grid_image()[: SIDE // 2])
    assert png.read_bytes() == png_bytes(thumbnail_image(level_grid_image()[: SIDE // 2]))


def test_a_replaced_record_takes_its_thumbnails_with_it(tmp_path):
    """A record re-recorded with other adapters leaves no thumbnail of the old ones beside it; another recipe's
    thumbnails (a name that starts the same) are not touched."""
    write_record(tmp_path, example_record("optimized_fast", [1.0]), {"style_a": level_grid_image()})
    path = write_record(tmp_path, example_record("optimized", [1.0]), {"style_a": level_grid_image(),
                                                                    "style_b": level_grid_image(1)})
    write_record(tmp_path, example_record("optimized", [1.0]), {"lora0": level_grid_image(2)})
    assert sorted(p.name for p in path.parent.glob("*.png")) == ["optimized.lora0.png", "optimized_fast.style_a.png"]
