"""The t5_nf4 recipe on both of bitsandbytes' CPU paths, whatever CPU CI lands on.

bitsandbytes picks the path per ``Linear4bit``, when the layer is made, from ``has_avx512bf16()``: with the
instruction it repacks each 4-bit weight at its first eval-mode call (``_convert_weight_packed_for_cpu``, pure
torch) for a native bf16 kernel; without it, it dequantizes and calls a plain matmul. The tests force each path
by patching that name where ``Linear4bit`` reads it (``bitsandbytes.nn.modules``). The backend's copy
(``bitsandbytes.backends.cpu.ops``) is read once, at import, to register the native kernel, so patching it later
changes nothing: the packed path needs a CPU that has the instruction, and skips on one that does not.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

bnb = pytest.importorskip("bitsandbytes", reason="bitsandbytes is in the dev extra")

from bitsandbytes.functional import has_avx512bf16  # noqa: E402 - after the importorskip

from perf.build.builder import _nf4_text_encoder_2, build_pipeline  # noqa: E402
from perf.spec.models import CONFIGS, ModelSource  # noqa: E402
from perf.spec.recipes import get_recipe, nf4_problem, unsupported_reason  # noqa: E402
from perf.spec.settings import TINY_SETTINGS  # noqa: E402

CPU_HAS_AVX512BF16 = has_avx512bf16()  # bitsandbytes' own cpuid check, before any test patches it
# The tiny T5 before it was sized for the packed path: 32-wide layers and d_ff=37, under the 64-value block.
OLD_TINY_T5 = {**CONFIGS["tiny"]["t5"], "d_model": 32, "d_kv": 8, "d_ff": 37}
PROMPT_IDS = torch.tensor([[5, 17, 42, 8, 1]])  # any ids below the tiny T5's vocabulary; 1 is </s>


def force_packed(monkeypatch, forced: bool) -> None:
    """Every ``Linear4bit`` made from now on takes the packed CPU path (True) or the dequantize one (False)."""
    monkeypatch.setattr(bnb.nn.modules, "has_avx512bf16", lambda: forced)


@pytest.fixture(params=["packed", "dequantize"])
def packed(request, monkeypatch) -> bool:
    forced = request.param == "packed"
    if forced and not CPU_HAS_AVX512BF16:
        pytest.skip("this CPU lacks AVX512-BF16: bitsandbytes registers its packed 4-bit CPU kernel (native bf16 "
                    "code) only on CPUs that have it")
    force_packed(monkeypatch, forced)
    return forced


def nf4_t5_encode(t5_config: dict, cache: Path) -> torch.Tensor:
    """One encode through the t5_nf4 recipe's T5 path (the builder saves the T5, then loads it quantized to
    NF4 at load), for a seeded T5 of ``t5_config``. ``cache`` must be a fresh folder: the builder keys the saved
    T5 by model source, not by shape."""
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    t5 = T5EncoderModel(T5Config(vocab_size=128, **t5_config)).eval()
    source = ModelSource("synthetic", "tiny", "synthetic-tiny")
    nf4 = _nf4_text_encoder_2(source, SimpleNamespace(text_encoder_2=t5), cache, torch.float32)
    with torch.no_grad():
        return nf4(PROMPT_IDS).last_hidden_state


def packed_flags(model: torch.nn.Module) -> set[bool]:
    """Whether each 4-bit Linear holds its weight repacked for the native CPU kernel."""
    return {
        bool(getattr(m.weight.quant_state, "packing_format_for_cpu", False))
        for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)
    }


def test_t5_nf4_recipe_builds_and_generates_on_either_cpu_path(packed, tiny_spec, cpu_profile):
    assert unsupported_reason(get_recipe("t5_nf4"), cpu_profile) is None
    built = build_pipeline(tiny_spec, get_recipe("t5_nf4"))
    image = built.generate()
    assert packed_flags(built.pipe.text_encoder_2) == {packed}, "the forced path is not the one that ran"
    assert image.shape == (TINY_SETTINGS.height, TINY_SETTINGS.width, 3) and np.isfinite(image).all()


def test_probe_passes_on_either_cpu_path_for_the_tiny_t5(packed):
    assert nf4_problem.__wrapped__("cpu", "tiny", torch.float32) is None


@pytest.mark.skipif(not CPU_HAS_AVX512BF16, reason="the packed path needs a CPU with AVX512-BF16")
def test_packed_and_dequantize_paths_encode_the_same_prompt_alike(monkeypatch, tmp_path):
    """Both paths read the same NF4 weights; the packed kernel computes in bf16, so they agree to bf16 precision.
    Measured here: 0.023 max, 0.0046 mean abs difference on outputs of 0.79 mean abs; another prompt's encoding
    is 1.03 mean abs (5.0 max) away, far outside the tolerance."""
    force_packed(monkeypatch, False)
    dequantized = nf4_t5_encode(CONFIGS["tiny"]["t5"], tmp_path / "dequantize")
    force_packed(monkeypatch, True)
    repacked = nf4_t5_encode(CONFIGS["tiny"]["t5"], tmp_path / "packed")
    torch.testing.assert_close(repacked, dequantized, rtol=0.05, atol=0.05)


def test_old_tiny_t5_fails_on_the_packed_path_and_the_probe_says_so(monkeypatch, tmp_path):
    """Negative control: the T5 that broke CI on AVX512-BF16 CPUs must break here too, or the tests above could
    not see that bug. The failure is in the repacking, pure torch before any native call: any CPU shows it."""
    force_packed(monkeypatch, True)
    with pytest.raises((RuntimeError, AssertionError)):
        nf4_t5_encode(OLD_TINY_T5, tmp_path / "packed")
    monkeypatch.setitem(CONFIGS["tiny"], "t5", OLD_TINY_T5)
    assert "Linear4bit(32, 32): RuntimeError" in nf4_problem.__wrapped__("cpu", "tiny", torch.float32)


def test_old_tiny_t5_still_works_on_the_dequantize_path(monkeypatch, tmp_path):
    """Why the bug hid: CPUs without AVX512-BF16 never repack, so the old T5 ran there."""
    force_packed(monkeypatch, False)
    assert torch.isfinite(nf4_t5_encode(OLD_TINY_T5, tmp_path / "dequantize")).all()
    monkeypatch.setitem(CONFIGS["tiny"], "t5", OLD_TINY_T5)
    assert nf4_problem.__wrapped__("cpu", "tiny", torch.float32) is None
