"""A user's mistake stops the run once: the suite started as a user starts it (``pytest tests/perf ...``, in a
child process) exits 4 before any test runs, with one short message naming the problem and the fix, not the
same traceback in every test. Bad files are made here; the child never builds a pipeline (the tiny model is
written to the cache only by a build)."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import pytest
import torch
from fake_records import example_record
from safetensors.torch import save_file
from suite_run import ROOT, disk_state, run_pytest

from perf.errors import LoraIncompatibleError
from perf.judge.baseline_files import write_record
from perf.report.report import main as report_main
from perf.spec.loras import LoraPool, check_fits_model, inspect_lora, transformer_linear_shapes
from perf.spec.models import CONFIGS, resolve_source
from perf.spec.validate import validate_run

MAX_LINES = 30
TINY = transformer_linear_shapes(CONFIGS["tiny"]["transformer"])
QKV = ("transformer_blocks.0.attn.to_q", "transformer_blocks.0.attn.to_k", "transformer_blocks.0.attn.to_v")
TEXT_ENCODER_Q = "text_encoder.text_model.encoder.layers.0.self_attn.q_proj"


def lora_file(path: Path, modules=QKV, rank: int = 4, prefix: str = "transformer.", extra_in: int = 0) -> Path:
    """A peft-format adapter for the tiny model's ``modules`` (``extra_in`` widens lora_A: another model's)."""
    tensors = {}
    for module in modules:
        out_f, in_f = TINY.get(module, (32, 32))
        tensors[f"{prefix}{module}.lora_A.weight"] = torch.randn(rank, in_f + extra_in)
        tensors[f"{prefix}{module}.lora_B.weight"] = torch.randn(out_f, rank)
    save_file(tensors, str(path))
    return path


def kohya_single_block_file(path: Path, width: int) -> Path:
    """kohya's fused single-block projection (q, k, v and the MLP in one lora_up) for a model of ``width``."""
    save_file({
        "lora_unet_single_blocks_0_linear1.lora_down.weight": torch.randn(4, width),
        "lora_unet_single_blocks_0_linear1.lora_up.weight": torch.randn(3 * width + 4 * width, 4),
    }, str(path))
    return path


def refused(tmp_path: Path, *args: str) -> str:
    """The child run's whole output, once it is known to have stopped as a usage error, briefly, before any
    pipeline was built."""
    cache = tmp_path / "cache"
    result = run_pytest(*args, cache=cache)
    output = result.stdout + result.stderr
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, output
    assert len(output.splitlines()) < MAX_LINES, output
    assert output.count("ERROR:") == 1, output
    assert not (cache / "models").exists(), output
    return output


BASELINES = ROOT / "baselines"


def refused_unchanged(tmp_path: Path, *args: str, watched: tuple[Path, ...] = ()) -> str:
    """``refused`` (exit 4, one ERROR line, under 30 lines, no pipeline built), and no file under ``tmp_path``,
    the repository's baselines or ``watched`` created, changed or removed."""
    folders = (tmp_path, BASELINES, *watched)
    before = disk_state(*folders)
    output = refused(tmp_path, *args)
    assert disk_state(*folders) == before, output
    return output


def pool_args(*paths: Path) -> list[str]:
    return [arg for path in paths for arg in ("--lora", str(path))]


# --- the LoRA pool -------------------------------------------------------------------------------------------


def test_rank_above_max_rank_says_to_pass_at_least_the_pools_max(tmp_path):
    first, big = lora_file(tmp_path / "a.safetensors"), lora_file(tmp_path / "b.safetensors", rank=16)
    output = refused(tmp_path, *pool_args(first, big), "--max-rank", "8")
    assert "--max-rank 8 is below the LoRA pool's max rank 16" in output
    assert "pass --max-rank 16 or more, or leave it unset" in output


def test_a_pool_no_order_can_hot_swap(tmp_path):
    """q/k and k/v: each targets a module the other lacks, so neither can be loaded first (a pool where one
    covers the others is reordered instead: tests/unit/test_lora_formats.py)."""
    first = lora_file(tmp_path / "a.safetensors", QKV[:2])
    second = lora_file(tmp_path / "b.safetensors", QKV[1:])
    output = refused(tmp_path, *pool_args(first, second))
    assert "no order of the LoRA pool can be hot-swapped" in output
    assert "Add an adapter that covers them all" in output


def test_adapter_with_text_encoder_weights(tmp_path):
    first = lora_file(tmp_path / "a.safetensors")
    with_te = tmp_path / "with_te.safetensors"
    save_file({
        **{f"transformer.{QKV[0]}.lora_A.weight": torch.randn(4, 32), f"transformer.{QKV[0]}.lora_B.weight":
           torch.randn(32, 4)},
        f"{TEXT_ENCODER_Q}.lora_A.weight": torch.randn(4, 32), f"{TEXT_ENCODER_Q}.lora_B.weight": torch.randn(32, 4),
    }, str(with_te))
    output = refused(tmp_path, *pool_args(first, with_te))
    assert f"LoRA {with_te} has text-encoder weights" in output


@pytest.mark.parametrize(
    ("content", "problem"),
    [(None, "no such file"), (b"", "not a readable safetensors file"),
     (b"a LoRA, honest\n", "not a readable safetensors file")],
    ids=["missing", "empty", "text"],
)
def test_missing_empty_or_non_safetensors_file(tmp_path, content, problem):
    bad = tmp_path / "bad.safetensors"
    if content is not None:
        bad.write_bytes(content)
    output = refused(tmp_path, *pool_args(lora_file(tmp_path / "a.safetensors"), bad))
    assert f"LoRA {bad}: {problem}" in output


def test_adapter_in_keys_diffusers_does_not_load_names_the_file_and_its_keys(tmp_path):
    """``diffusion_model.*`` keys load zero modules: diffusers only warns (hidden), and the run would end in
    "check is vacuous" after minutes."""
    foreign = lora_file(tmp_path / "comfy.safetensors", prefix="diffusion_model.")
    output = refused(tmp_path, *pool_args(lora_file(tmp_path / "a.safetensors"), foreign))
    assert f"LoRA {foreign}: diffusers would load none of its 6 tensors into the FLUX transformer" in output
    assert "found diffusion_model.transformer_blocks.0.attn." in output


def test_adapter_for_another_model_names_module_and_both_shapes(tmp_path):
    wide = lora_file(tmp_path / "wide.safetensors", extra_in=8)
    output = refused(tmp_path, *pool_args(wide, lora_file(tmp_path / "a.safetensors")))
    assert (f"LoRA {wide}: module transformer_blocks.0.attn.to_k is 32x40 (out x in) in the file but 32x32 in "
            "synthetic-tiny: an adapter for another model?") in output


def test_a_kohya_file_that_fits_the_model_names_diffusers_hard_coded_widths(tmp_path):
    """diffusers' kohya converter hard-codes FLUX.1-dev's widths: a single-block file made for the tiny model's
    (which fits it) fails with a bare AssertionError; the message names that cause, not another model."""
    kohya = kohya_single_block_file(tmp_path / "kohya.safetensors", width=32)
    output = refused_unchanged(tmp_path, *pool_args(kohya, lora_file(tmp_path / "a.safetensors")))
    assert (f"LoRA {kohya}: diffusers {version('diffusers')} cannot convert its kohya single-block keys "
            "(lora_unet_single_blocks_0_linear1.lora_down.weight is 32 wide; AssertionError): its kohya converter "
            "hard-codes FLUX.1-dev's widths") in output
    assert "another model?" not in output


def test_a_torch_bin_adapter_says_only_safetensors_is_supported(tmp_path):
    """A valid adapter saved with torch.save (pytorch_lora_weights.bin) is not a broken file: no "truncated?"."""
    tensors = {f"transformer.{QKV[0]}.lora_A.weight": torch.randn(4, 32),
               f"transformer.{QKV[0]}.lora_B.weight": torch.randn(32, 4)}
    torch.save(tensors, tmp_path / "pytorch_lora_weights.bin")
    bin_file = tmp_path / "pytorch_lora_weights.bin"
    output = refused_unchanged(tmp_path, *pool_args(lora_file(tmp_path / "a.safetensors"), bin_file))
    assert f"LoRA {bin_file}: a PyTorch file (torch.save" in output
    assert "only safetensors adapter files are supported; convert it once" in output
    assert "truncated" not in output


def test_messages_name_an_adapter_by_its_file_not_its_place_in_the_pool(tmp_path):
    """"lora0 lacks targets of lora1" made the user count --lora options; the files say which is which."""
    qk, kv = lora_file(tmp_path / "qk.safetensors", QKV[:2]), lora_file(tmp_path / "kv.safetensors", QKV[1:])
    output = refused_unchanged(tmp_path, *pool_args(qk, kv))
    assert f"{qk} lacks targets of {kv}; {kv} lacks targets of {qk}" in output
    assert "lora0" not in output and "lora1" not in output


def test_a_mistake_stops_a_run_over_several_workers_once(tmp_path):
    """Under pytest-xdist the controller collects nothing: it checks before starting any worker."""
    missing = tmp_path / "missing.safetensors"
    output = refused(tmp_path, "-n", "2", *pool_args(lora_file(tmp_path / "a.safetensors"), missing))
    assert f"LoRA {missing}: no such file" in output


# --- the model -----------------------------------------------------------------------------------------------


def test_model_folder_that_does_not_exist(tmp_path):
    output = refused(tmp_path, "--model", str(tmp_path / "flux-dev"))
    assert f"--model {tmp_path / 'flux-dev'}: no such folder" in output


def test_hub_id_not_in_the_local_cache(tmp_path, monkeypatch):
    """No network: a hub id is only usable from the local Hugging Face cache, and this one is empty."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    output = refused(tmp_path, "--model", "black-forest-labs/FLUX.1-dev")
    assert "--model black-forest-labs/FLUX.1-dev: no such folder, and not in the local Hugging Face cache" in output
    assert "hf download black-forest-labs/FLUX.1-dev" in output


# --- options -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("option", "value"), [("--rounds", "0"), ("--max-rank", "0"), ("--max-rank", "-1")])
def test_non_positive_count_is_a_usage_error_not_the_default(tmp_path, option, value):
    output = refused(tmp_path, option, value)
    assert f"argument {option}: {value} is not positive" in output


def test_report_without_out_writes_beside_the_results(tmp_path, monkeypatch):
    """``python -m perf.report baselines/h100``, as the README writes it."""
    write_record(tmp_path / "baselines", example_record("baseline", [10.0, 10.1, 9.9]))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    assert report_main(["baselines/h100"]) == 0
    assert (tmp_path / ".results" / "report" / "h100" / "report.md").is_file()


# --- the checks pass what is right (no false alarms) ---------------------------------------------------------


def test_a_pool_made_for_the_model_passes(tmp_path):
    pool = LoraPool(tuple(inspect_lora(lora_file(tmp_path / f"{n}.safetensors", rank=n), f"r{n}", "a prompt")
                          for n in (8, 4)))
    validate_run(resolve_source("synthetic-tiny", "tiny"), pool, None, hotswap=True)


def test_a_kohya_file_for_flux_dev_widths_fits_the_full_size_model(tmp_path):
    """The kohya file refused on the tiny model converts and fits at FLUX.1-dev's widths."""
    adapter = inspect_lora(kohya_single_block_file(tmp_path / "kohya.safetensors", width=3072), "kohya", "a prompt")
    assert adapter.modules == {f"single_transformer_blocks.0.{m}" for m in ("attn.to_q", "attn.to_k", "attn.to_v",
                                                                             "proj_mlp")}
    check_fits_model(adapter, transformer_linear_shapes(CONFIGS["full"]["transformer"]), "synthetic-full")


def test_adapter_with_some_modules_the_model_lacks(tmp_path):
    """A FLUX.1-dev adapter names blocks the tiny model does not have: diffusers would load part of it."""
    adapter = inspect_lora(lora_file(tmp_path / "a.safetensors", (*QKV, "transformer_blocks.5.attn.to_q")), "a", "p")
    with pytest.raises(LoraIncompatibleError, match=r"1 of its 4 modules are not in synthetic-tiny "
                                                    r"\(transformer_blocks\.5\.attn\.to_q\).*another model\?"):
        check_fits_model(adapter, TINY, "synthetic-tiny")
