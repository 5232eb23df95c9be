"""``python -m perf.tools.block_profile``: one double- and one single-stream block, compiled, profiled and written
down per variant (on the CPU at the tiny model's width)."""

import json

import pytest

from perf.tools.block_profile import main, parse_variant


@pytest.mark.parametrize("rank", [4, 0])
def test_each_block_and_variant_is_profiled_and_written(tmp_path, rank):
    """Rank 0 profiles the blocks without LoRA (an adapter merged into the weights); any other rank puts a LoRA
    on every Linear."""
    assert main(["--variants", "bf16", "--repeats", "2", "--rank", str(rank), "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "block-profile.json").read_text())
    assert set(result["blocks"]) == {"double/bf16", "single/bf16"}
    for row in result["blocks"].values():
        assert row["wall_ms"] > 0
        assert row["kernel_ms"] > 0
        assert row["kernels_ms"]
        assert (row["lora_layers"] > 0) == (rank > 0), row["lora_layers"]
        assert row["error_vs_bf16"] < 0.02  # compiled bf16 against eager bf16


def test_a_variants_inductor_options_hold_for_its_compile_alone(tmp_path, monkeypatch):
    import torch._inductor.config as inductor_config

    seen = []

    def profile(*args):
        seen.append(inductor_config.triton.multi_kernel)
        return {"kernel_ms": 1.0, "wall_ms": 1.0, "first_call_s": 0.0, "by_category_ms": {}, "error_vs_bf16": 0.0}

    monkeypatch.setattr("perf.tools.block_profile._profile", profile)
    assert main(["--variants", "fp8+triton.multi_kernel=1,fp8", "--out", str(tmp_path)]) == 0
    assert seen == [1, 0, 1, 0]  # double, then single
    assert inductor_config.triton.multi_kernel == 0
    assert set(json.loads((tmp_path / "block-profile.json").read_text())["blocks"]) == {
        "double/fp8+triton.multi_kernel=1", "double/fp8", "single/fp8+triton.multi_kernel=1", "single/fp8"}


@pytest.mark.parametrize(("variant", "parsed"), [
    ("fp8", ("fp8", None, ())),
    ("bf16@max-autotune", ("bf16", "max-autotune", ())),
    ("fp8@reduce-overhead+triton.multi_kernel=1+coordinate_descent_tuning=true",
     ("fp8", "reduce-overhead", (("triton.multi_kernel", 1), ("coordinate_descent_tuning", True)))),
])
def test_variants_name_numerics_mode_and_options(variant, parsed):
    assert parse_variant(variant) == parsed


@pytest.mark.parametrize(("variant", "says"), [
    ("fp16", "numerics must be one of bf16, fp8, fp8_fused"),
    ("fp8+triton.multi_kernel", "is not OPTION=VALUE"),
    ("fp8+triton.multi_kernel=yes", "is not OPTION=VALUE"),
    ("fp8+triton.multi_kernal=1", "has no option 'triton.multi_kernal'"),
])
def test_a_malformed_variant_is_one_usage_line_before_anything_runs(tmp_path, capsys, variant, says):
    with pytest.raises(SystemExit) as exit_:
        main(["--variants", f"fp8,{variant}", "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"variant {variant!r}: " in err and says in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_fused_numerics_with_a_lora_on_every_linear_is_one_usage_line(tmp_path, capsys):
    """fp8_fused serves a merged adapter: its fused linears skip the LoRA path, so it takes --rank 0."""
    with pytest.raises(SystemExit) as exit_:
        main(["--variants", "fp8,fp8_fused", "--rank", "4", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "use it with --rank 0" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
