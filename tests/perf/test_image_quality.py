"""Fast must not mean worse: each adapter's image stays within its recipe's quality tolerance of the stored
baseline (CLIP score, PSNR/SSIM against the reference thumbnail) and of this run's bf16 eager baseline row.
With the embedded tiny CLIP the CLIP score is a smoke signal only (the record says ``clip: synthetic``)."""

import pytest

from perf.errors import BaselineError
from perf.judge.baseline_files import comparable, read_record, record_path
from perf.run.quality import assess_images, check_quality, load_clip_scorer, summarize, tolerance_for


def stored_baseline(case, suite):
    """The stored record of this (profile, recipe), or None with the reason it cannot serve."""
    try:
        stored = read_record(record_path(suite.baselines_dir, case.built.spec.active.name, case.recipe.name))
    except BaselineError as exc:
        return None, str(exc)
    reason = comparable(stored, case.record)
    return (None, reason) if reason else (stored, None)


def case_images(case):
    """Each adapter's last image, as ``Case.save`` stores them."""
    return {case.built.first.name: case.scenario.warmup_image, **case.scenario.images}


def test_quality_within_tolerance_of_baselines(case, suite):
    stored, _ = stored_baseline(case, suite)
    scorer = load_clip_scorer(suite.option("--clip-model"), suite.spec.cache)
    row_dir = suite.results_dir / case.built.spec.active.name if "baseline" in suite.finished else None
    prompts = {a.name: a.prompt for a in case.built.spec.pool.adapters}
    results = assess_images(case_images(case), prompts, case.recipe, scorer, stored,
                            suite.baselines_dir / case.built.spec.active.name, row_dir)
    case.record["quality"] = summarize(results)
    failures = [f"{adapter}: {msg}" for adapter, r in results.items() for msg in r.failures]
    assert not failures, "\n".join(failures)


def test_quality_gate_fails_the_wrong_adapter(case, suite):
    """Negative control: an image made with the wrong adapter (what a broken hot-swap produces) must fail
    against the stored reference of the adapter that should have been active."""
    stored, why = stored_baseline(case, suite)
    if stored is None:
        pytest.skip(f"no usable stored baseline to compare against: {why}")
    images = case_images(case)
    names = [n for n in images if n in stored.get("images", {})]
    if len(names) < 2:
        pytest.skip(f"{case.recipe.name} has fewer than two adapters' references stored")
    right, wrong = names[0], names[1]
    scorer = load_clip_scorer(suite.option("--clip-model"), suite.spec.cache)
    reference = suite.baselines_dir / case.built.spec.active.name / stored["images"][right]
    prompt = next(a.prompt for a in case.built.spec.pool.adapters if a.name == right)
    result = check_quality(images[wrong], prompt, reference, None, None, scorer, tolerance_for(case.recipe))
    assert not result.passed, (
        f"the image of {wrong} passed as {right}: PSNR {result.psnr_vs_reference:.1f} dB, "
        f"SSIM {result.ssim_vs_reference:.3f} against {reference}"
    )
