"""``python -m perf.tools.profile_step``: the arithmetic it sets a step against, how it names kernels, and one whole
run on the tiny model (the GPU run differs only in its timers, its profiler activity and the floor)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from perf.run.measure import gpu_sampled, summarize_gpu_samples
from perf.run.quality import PSNR_CEILING
from perf.tools.profile_step import breakdown, category, clock_explains, fidelity_against, main, step_flops

# Kernel names read off the H100 profiles in baselines/h100/profiles/.
KERNELS = {
    "nvjet_sm90_qqtst_128x128_128x6_1x2_h_bz_ovscale_bias_TNT": "matmul fp8",
    "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7_64x128x128_4x1x1": "attention",
    "kernel_cutlass_kernel_flash_attncuteflash_fwd_sm90FlashAttentionForwardSm90_object_at": "attention",
    "triton_red_fused__scaled_mm__to_copy_abs_amax_clamp_div_gelu_t_unsqueeze_view_14": "fp8 activation quantization",
    "triton_red_fused_abs_amax_cat_gelu_permute_view_5": "fp8 activation quantization",
    "triton_per_fused__fused_rms_norm__unsafe_view_add_mul_view_2": "fused norm/rope/elementwise",
    "triton_poi_fused__to_copy__unsafe_view_add_flash_attn_4_mul_neg_stack_unbind": "fused norm/rope/elementwise",
    "nvjet_sm90_tst_64x64_64x13_1x4_h_bz_TNT": "matmul bf16 (LoRA, embeddings)",
    "void at::native::elementwise_kernel<128, 2>": "other",
}


@pytest.mark.parametrize("kernel, expected", KERNELS.items(), ids=lambda v: v[:40])
def test_kernels_are_sorted_by_what_they_do(kernel, expected):
    assert category(kernel) == expected


def test_a_flux1_dev_step_costs_what_the_gpu_notes_measured():
    """FLUX.1-dev at 1024^2: 19 + 38 blocks of width 3072, 4096 image + 512 text tokens (GPU_NOTES.md)."""
    flops = step_flops(num_blocks=57, width=3072, image_tokens=4096, text_tokens=512)
    assert flops["linear"] == pytest.approx(5.95e13, rel=5e-3)
    assert flops["attention"] == pytest.approx(1.49e13, rel=5e-3)


def test_breakdown_shares_add_up_and_rates_follow_from_flops():
    kernels = {"nvjet_sm90_qqtst_a": 30.0, "nvjet_sm90_qqtst_b": 10.0, "cudnn_sdpa_flash_fprop": 20.0,
               "triton_poi_fused_add": 45.0}
    rows = breakdown(kernels, {"linear": 4e13, "attention": 1e13})
    assert sum(row["share"] for row in rows.values()) == pytest.approx(1.0)
    assert rows["matmul fp8"]["ms"] == 40.0
    assert rows["matmul fp8"]["tflops"] == pytest.approx(1000.0)  # 4e13 FLOPs in 40 ms
    assert rows["attention"]["tflops"] == pytest.approx(500.0)
    assert "tflops" not in rows["fused norm/rope/elementwise"]
    assert next(iter(rows)) == "fused norm/rope/elementwise"  # costliest first


def test_profiles_a_recipe_on_the_tiny_model(tmp_path, monkeypatch, tiny_cache, cpu_profile):
    monkeypatch.setenv("FLUX_LORA_PERF_CACHE", str(tiny_cache))
    monkeypatch.setattr("perf.tools.profile_step.resolve_profile", lambda _requested: cpu_profile)
    assert main(["--recipe", "hotswap_eager", "--recipe", "no_fa3_fp8", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "profile-hotswap_eager.json").read_text())
    assert result["model_source"] == "synthetic-tiny" and result["recipe"]["name"] == "hotswap_eager"
    assert result["versions"]["torch"] and "commit" in result  # identified as every record is
    assert len(result["image"]["wall_s"]) == 3 and result["image"]["vae_decode_ms"] > 0
    per_adapter = result["image"]["per_adapter_s"]  # a hot-swap recipe: each pool adapter's images apart
    assert list(per_adapter) == ["peft_all", "kohya", "xlabs", "ai_toolkit_reordered"]
    assert all(len(seconds) == 3 for seconds in per_adapter.values())
    served = [image["adapter"] for image in result["image"]["served"]]  # round-robin, so time and adapter part
    assert served == list(per_adapter) * 3
    assert result["image"]["clock"] == {}  # no GPU: no clock sampled, nothing invented
    assert result["step"]["gpu_kernel_ms"] > 0 and result["step"]["wall_ms"] > 0
    assert result["step"]["by_category"]  # the tiny step's CPU operators, sorted into categories
    assert "floor" not in result  # the floor needs a GPU's matmul ceilings
    assert "fidelity" not in result["image"]  # the first recipe is the one the others are compared with
    compiled = json.loads((tmp_path / "profile-no_fa3_fp8.json").read_text())["image"]["fidelity"]
    assert compiled["against"] == "hotswap_eager" and set(compiled["per_adapter"]) == set(per_adapter)
    assert compiled["worst_psnr"] > 40 and compiled["worst_ssim"] > 0.99  # compiled, else the same numerics


def test_images_are_compared_adapter_by_adapter():
    """The control: another adapter's image in place of the right one reads far lower than the right one."""
    rng = np.random.default_rng(0)
    right, other = rng.random((64, 64, 3), dtype=np.float32), rng.random((64, 64, 3), dtype=np.float32)
    same = fidelity_against({"a": right}, ("ref", {"a": right, "b": other}))
    swapped = fidelity_against({"a": other}, ("ref", {"a": right, "b": other}))
    assert (same["worst_psnr"], same["worst_ssim"]) == (PSNR_CEILING, pytest.approx(1.0))
    assert swapped["worst_psnr"] < 10 and swapped["worst_ssim"] < 0.1


# what nvidia-smi --query-gpu=clocks.sm,power.draw,clocks_event_reasons.active --format=csv,noheader,nounits writes,
# with figures of the H200 at load (docs/results/2026-11-30-h200-merged/profile-2/smi.csv); 0x4 is the power cap
SMI_LINES = "1695, 677.62, 0x0000000000000004\n1890, 640.10, 0x0000000000000000\n[N/A], [N/A], [N/A]\n"


def test_the_sampled_clock_is_the_mean_of_what_nvidia_smi_wrote():
    summary = summarize_gpu_samples(SMI_LINES)
    assert summary == {"sm_clock_mhz_mean": 1792.5, "power_w_mean": pytest.approx(658.86),
                       "power_capped_share": 0.5, "samples": 2}  # the unreadable line skipped, not read as 0
    assert summarize_gpu_samples("") == {}


def test_the_sampler_runs_beside_the_block_and_stops_with_it(monkeypatch):
    """A stand-in for nvidia-smi's loop (one line every 10 ms until ^C): what it wrote while the block ran comes
    back, and the block waits for its first line."""
    loop = "trap 'exit 0' INT; while true; do echo '1700, 650.5, 0x0000000000000004'; sleep 0.01; done"
    monkeypatch.setattr("perf.run.measure.smi_query", lambda fields: ["bash", "-c", loop])
    with gpu_sampled("cuda") as during:
        time.sleep(0.2)
    assert during["sm_clock_mhz_mean"] == 1700.0 and during["power_capped_share"] == 1.0
    assert 2 <= during["samples"] <= 25  # about 20 in 0.2 s; fewer where a loaded CPU forks slowly


def test_no_gpu_samples_nothing():
    with gpu_sampled("cpu") as during:
        pass
    assert during == {}


def served(adapter: str, seconds: float, clock: float) -> dict:
    return {"adapter": adapter, "seconds": seconds, "sm_clock_mhz_mean": clock, "power_capped_share": 1.0}


def test_adapters_apart_only_by_their_clock_took_the_same_cycles():
    by_clock = clock_explains([served("a", 2.3, 1870.0), served("b", 2.53, 1700.0), served("a", 2.3, 1870.0)])
    assert by_clock["a"]["megacycles"] == pytest.approx(by_clock["b"]["megacycles"])
    assert by_clock["b"]["seconds"] / by_clock["a"]["seconds"] == pytest.approx(1.1)
    # the control: the same 10% at the same clock is the adapter's own cost, and shows in its cycles
    own_cost = clock_explains([served("a", 2.3, 1870.0), served("b", 2.53, 1870.0)])
    assert own_cost["b"]["megacycles"] / own_cost["a"]["megacycles"] == pytest.approx(1.1)


def test_no_verdict_on_the_clock_where_an_image_was_not_sampled():
    assert clock_explains([served("a", 2.3, 1870.0), {"adapter": "b", "seconds": 2.5}]) == {}
