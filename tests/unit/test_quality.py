"""Quality checks, specified: the CLIP scorers, PSNR/SSIM against stored thumbnails, tolerances per recipe, and
the check's verdicts on an identical image and on an image from another seed (the negative control)."""

from __future__ import annotations

import math
from dataclasses import astuple
from pathlib import Path

import numpy as np
import pytest

from perf.errors import SuiteError
from perf.judge.baseline_files import load_thumbnail, save_thumbnail
from perf.judge.record import AdapterQuality
from perf.run.quality import (
    PSNR_CEILING,
    SYNTHETIC_CLIP,
    ClipScorer,
    QualityTolerance,
    check_quality,
    fidelity,
    load_clip_scorer,
    thumbnail,
    tolerance_for,
)
from perf.spec.recipes import RECIPES

PROMPT = "a photo of a cat wearing a tiny hat"
BF16 = tolerance_for(RECIPES["baseline"])


def scene(seed: int, shape: tuple[int, int] = (256, 256)) -> np.ndarray:
    """A smooth seeded float [0, 1] HxWx3 image: a stand-in for a generation; another seed, another picture."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]] / max(shape)
    freq, phase = rng.uniform(1, 4, (2, 3)), rng.uniform(0, 2 * np.pi, 3)
    waves = np.sin(2 * np.pi * (freq[0] * x[..., None] + freq[1] * y[..., None]) + phase)
    return (0.5 + 0.4 * waves).astype(np.float32)


def noisy(image: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    return np.clip(image + np.random.default_rng(seed).normal(0, sigma, image.shape), 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("perf-cache")


@pytest.fixture(scope="module")
def scorer(cache: Path) -> ClipScorer:
    return load_clip_scorer(None, cache)


# --- CLIP score -------------------------------------------------------------------------------------------


def test_synthetic_clip_gives_a_finite_repeatable_score_that_moves_with_the_image(scorer: ClipScorer):
    image = scene(0)
    first, second = scorer.score(image, PROMPT), scorer.score(image, PROMPT)
    assert scorer.label == SYNTHETIC_CLIP
    assert math.isfinite(first) and 0 < first < 100  # above CLIPScore's floor of 0, where drops would hide
    assert first == second
    assert scorer.score(1 - image, PROMPT) != first


def test_the_synthetic_clip_is_saved_once_and_the_scorer_loaded_once(cache: Path, scorer: ClipScorer):
    assert (cache / "models" / "synthetic-clip-v1" / "config.json").is_file()
    assert not [p for p in (cache / "models").iterdir() if p.name.startswith(".staging-")]
    assert load_clip_scorer(None, cache) is scorer


def test_a_clip_in_a_local_folder_is_labelled_by_its_spec(cache: Path, scorer: ClipScorer):
    folder = str(cache / "models" / "synthetic-clip-v1")
    local = load_clip_scorer(folder, cache)
    assert local.label == folder
    assert local.score(scene(0), PROMPT) == scorer.score(scene(0), PROMPT)


@pytest.mark.parametrize(
    ("spec", "how"),
    [("example-org/clip-not-in-any-cache", ["hf download example-org/clip-not-in-any-cache", "HF_HOME"]),
     ("{tmp}/no-such-clip", ["no such folder", "folder holding a CLIP model and processor"])],
)
def test_a_clip_model_missing_locally_is_a_suite_error_saying_how_to_provide_it(
    spec: str, how: list[str], tmp_path: Path
):
    spec = spec.format(tmp=tmp_path)
    with pytest.raises(SuiteError) as error:
        load_clip_scorer(spec, tmp_path)
    message = str(error.value)
    assert f"--clip-model {spec}: not available locally" in message and "never downloads" in message
    assert all(hint in message for hint in how)


# --- fidelity ---------------------------------------------------------------------------------------------


def test_an_image_against_itself_has_ceiling_psnr_and_ssim_one():
    same = fidelity(scene(0), scene(0))
    assert same.psnr == PSNR_CEILING
    assert same.ssim == pytest.approx(1.0)


def test_noise_drops_psnr_and_ssim_below_the_bf16_floors():
    image = scene(0)
    degraded = fidelity(noisy(image, 0.1), image)
    assert degraded.psnr < BF16.psnr_min_vs_reference
    assert degraded.ssim < BF16.ssim_min_vs_reference


def test_thumbnail_round_trip_matches_the_full_size_image(tmp_path: Path):
    for shape in [(256, 256), (192, 320)]:
        image = scene(0, shape)
        png = tmp_path / f"{shape[0]}x{shape[1]}.png"
        save_thumbnail(image, png)
        stored = load_thumbnail(png)
        assert max(stored.shape[:2]) == 128
        assert np.array_equal(stored, thumbnail(image))  # candidates are shrunk exactly as references are stored
        round_trip = fidelity(image, stored)
        assert round_trip.psnr >= BF16.psnr_min_vs_reference and round_trip.ssim >= BF16.ssim_min_vs_reference


def test_thumbnails_hide_per_pixel_noise_that_full_size_comparison_shows(tmp_path: Path):
    image, jittered = scene(0), noisy(scene(0), 0.02)
    save_thumbnail(image, tmp_path / "reference.png")
    assert fidelity(jittered, image).psnr < BF16.psnr_min_vs_reference
    assert fidelity(jittered, load_thumbnail(tmp_path / "reference.png")).psnr >= BF16.psnr_min_vs_reference


# --- tolerances -------------------------------------------------------------------------------------------


def looser(a: QualityTolerance, b: QualityTolerance) -> bool:
    """``a`` allows more than ``b`` on every figure."""
    return a.clip_drop > b.clip_drop and all(x < y for x, y in zip(astuple(a)[1:], astuple(b)[1:], strict=True))


def test_fp8_rows_are_looser_than_bf16_rows_and_compiled_rows_than_eager_ones():
    assert looser(tolerance_for(RECIPES["optimized"]), BF16)  # FP8, compiled
    assert looser(tolerance_for(RECIPES["no_compile"]), BF16)  # FP8, eager
    assert looser(tolerance_for(RECIPES["no_fa3_fp8"]), BF16)  # bf16, compiled
    assert looser(tolerance_for(RECIPES["optimized"]), tolerance_for(RECIPES["no_compile"]))
    assert all(isinstance(tolerance_for(recipe), QualityTolerance) for recipe in RECIPES.values())


# --- the check --------------------------------------------------------------------------------------------


def test_check_quality_passes_an_image_identical_to_its_references(tmp_path: Path, scorer: ClipScorer):
    image = scene(0)
    save_thumbnail(image, tmp_path / "reference.png")
    baseline_clip = scorer.score(image, PROMPT)
    result = check_quality(image, PROMPT, tmp_path / "reference.png", image, baseline_clip, scorer, BF16)
    assert result.passed, result.failures
    assert result.as_record() == AdapterQuality(SYNTHETIC_CLIP, baseline_clip, PSNR_CEILING, pytest.approx(1.0),
                                                PSNR_CEILING)


def test_check_quality_fails_an_image_from_another_seed_naming_figures_tolerance_and_paths(
    tmp_path: Path, scorer: ClipScorer
):
    reference, row, candidate = tmp_path / "reference.png", tmp_path / "baseline-row.png", tmp_path / "cand.png"
    save_thumbnail(scene(0), reference)
    save_thumbnail(scene(0), row)
    result = check_quality(scene(1), PROMPT, reference, row, None, scorer, BF16, candidate_path=candidate)
    assert not result.passed
    psnr_ref, ssim_ref, psnr_row = result.failures
    assert f"{result.psnr_vs_reference:.2f} dB < tolerance {BF16.psnr_min_vs_reference:.2f} dB" in psnr_ref
    assert f"{result.ssim_vs_reference:.4f} < tolerance {BF16.ssim_min_vs_reference:.4f}" in ssim_ref
    assert f"{result.psnr_vs_baseline_row:.2f} dB < tolerance {BF16.psnr_min_vs_baseline_row:.2f} dB" in psnr_row
    for message, baseline in [(psnr_ref, reference), (ssim_ref, reference), (psnr_row, row)]:
        assert f"candidate: {candidate}; baseline image: {baseline}" in message


def test_a_clip_drop_beyond_tolerance_fails_with_score_baseline_and_tolerance(tmp_path: Path, scorer: ClipScorer):
    image = scene(0)
    score = scorer.score(image, PROMPT)
    baseline = score + BF16.clip_drop + 0.5
    result = check_quality(image, PROMPT, None, None, baseline, scorer, BF16)
    (message,) = result.failures
    assert f"{score:.2f} vs baseline {baseline:.2f}" in message
    assert f"> tolerance {BF16.clip_drop:.2f}" in message
    assert "candidate: (no file); baseline image: (no file)" in message
    assert (result.psnr_vs_reference, result.ssim_vs_reference, result.psnr_vs_baseline_row) == (None, None, None)
