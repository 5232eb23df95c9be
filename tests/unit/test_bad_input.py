"""Bad input gets one clear error: every mistake a user can make (LoRA, model, recipe, profile, baseline) is a
``SuiteError`` whose message names the problem and the fix, raised before anything is changed, so a pytest run
shows one line instead of a peft or safetensors stack trace, and a pipeline that refused an adapter still works."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_records import example_record
from safetensors.torch import save_file
from suite_run import run_pytest

from perf.build.builder import BuiltPipeline, build_pipeline
from perf.errors import BaselineError, LoraIncompatibleError, SuiteError
from perf.judge.baseline_files import read_record, read_records, record_path, write_record
from perf.judge.record import PoolAdapter, RunRecord, to_data
from perf.spec.loras import check_hotswap, inspect_lora
from perf.spec.models import resolve_source
from perf.spec.profiles import DeviceInfo, get_profile, resolve_profile
from perf.spec.recipes import get_recipe
from perf.spec.settings import SEED_SETTINGS

ROOT = Path(__file__).resolve().parents[2]
H100 = DeviceInfo("NVIDIA H100 80GB HBM3", "cuda", 79.1, (9, 0))
RTX3060 = DeviceInfo("NVIDIA GeForce RTX 3060", "cuda", 12.0, (8, 6))
RTX6000_ADA = DeviceInfo("NVIDIA RTX 6000 Ada Generation", "cuda", 47.5, (8, 9))
BIG_ADA = DeviceInfo("hypothetical 96 GiB Ada GPU", "cuda", 96.0, (8, 9))  # reaches the FA3 check past the budget


def hotswap_pipeline(spec, first=None) -> BuiltPipeline:
    return build_pipeline(spec, get_recipe("hotswap_eager"), first=first)


# --- LoRAs ---------------------------------------------------------------------------------------------------


def test_lora_above_the_hotswap_target_rank_is_refused_and_the_pipeline_keeps_working(tiny_spec, tiny_pool):
    """A rank-16 adapter (xlabs) cannot be swapped into slots padded for rank 8: the error names both ranks and
    the option that fixes it, and is raised before peft touches the weights, so the next image is bitwise the one
    generated before the failed swap."""
    first, xlabs = tiny_pool.adapters[0], next(a for a in tiny_pool.adapters if a.name == "xlabs")
    built = hotswap_pipeline(dataclasses.replace(tiny_spec, max_rank=8))
    before = built.generate()

    with pytest.raises(LoraIncompatibleError, match=r"rank 16 but hot-swap was prepared for rank 8.*--max-rank 16"):
        built.load_adapter(xlabs)

    assert built.current is first
    np.testing.assert_array_equal(built.generate(), before)


def test_lora_targeting_modules_the_first_adapter_did_not_is_refused_and_the_pipeline_keeps_working(
    tiny_spec, tiny_pool
):
    """Hot-swap can only replace weights in modules the first adapter created: the ai-toolkit file adds the
    top-level context_embedder, proj_out and x_embedder and a single block's proj_mlp to kohya's, so swapping it
    in after kohya is refused, naming the modules and the ordering fix."""
    by_name = {a.name: a for a in tiny_pool.adapters}
    kohya, ai_toolkit = by_name["kohya"], by_name["ai_toolkit_reordered"]
    built = hotswap_pipeline(tiny_spec, first=kohya)
    before = built.generate()

    with pytest.raises(
        LoraIncompatibleError,
        match=rf"targets 4 module\(s\) \(or lora_B biases\) that the first adapter {re.escape(str(kohya.path))} "
        r"does not "
        r"\(context_embedder, proj_out, single_transformer_blocks\.0\.proj_mlp, x_embedder\)"
        r".*same modules or a subset; load the adapter with the most targets first",
    ):
        built.load_adapter(ai_toolkit)

    assert built.current is kohya
    np.testing.assert_array_equal(built.generate(), before)


def test_lora_with_text_encoder_weights_cannot_be_hotswapped(tmp_path, tiny_pool):
    """diffusers cannot hot-swap text-encoder adapters; the file's tensors (not its name) reveal them."""
    path = tmp_path / "with_te.safetensors"
    save_file(
        {
            "transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.randn(4, 32),
            "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": torch.randn(32, 4),
            "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight": torch.randn(4, 32),
            "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight": torch.randn(32, 4),
        },
        str(path),
    )
    adapter = inspect_lora(path, "with_te", "a prompt")
    assert adapter.text_encoder
    assert adapter.modules == {"transformer_blocks.0.attn.to_q"}

    with pytest.raises(
        LoraIncompatibleError, match=r"text-encoder weights.*use a transformer-only LoRA or a recipe without hot-swap"
    ):
        check_hotswap(tiny_pool.adapters[0], adapter, tiny_pool.max_rank)


def test_safetensors_file_without_lora_weights_is_not_a_lora(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"weight": torch.randn(4, 4), "bias": torch.randn(4)}, str(path))
    with pytest.raises(SuiteError, match=r"not a LoRA \(no lora_A/lora_down weights among 2 tensors\).*pass a LoRA"):
        inspect_lora(path, "model", "a prompt")


def test_truncated_lora_file_is_reported_as_unreadable(tmp_path, tiny_pool):
    """Half a real adapter file (an interrupted download): safetensors' header check, worded as a fix."""
    data = tiny_pool.adapters[0].path.read_bytes()
    path = tmp_path / "half.safetensors"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SuiteError, match=r"not a readable safetensors file.*truncated\?.*Download or save it again"):
        inspect_lora(path, "half", "a prompt")


# --- model sources -------------------------------------------------------------------------------------------


def test_model_path_that_does_not_exist(tmp_path):
    with pytest.raises(SuiteError, match=r"no such folder; give a FLUX\.1-dev diffusers folder or a hub id"):
        resolve_source(str(tmp_path / "flux-dev"), "tiny")


def test_folder_without_model_index_is_not_a_pipeline(tmp_path):
    with pytest.raises(SuiteError, match=r"not a diffusers pipeline folder \(no model_index\.json\).*give the folder"):
        resolve_source(str(tmp_path), "tiny")


def test_pipeline_folder_of_another_class_is_not_flux(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    with pytest.raises(
        SuiteError, match=r"is a 'StableDiffusionXLPipeline', not a FluxPipeline.*FLUX\.1-dev diffusers folder"
    ):
        resolve_source(str(tmp_path), "tiny")


def test_pipeline_folder_with_corrupt_model_index_is_a_suite_error(tmp_path):
    """A half-copied folder must not surface as a bare JSONDecodeError."""
    (tmp_path / "model_index.json").write_text('{"_class_name": "FluxPip')
    with pytest.raises(SuiteError, match=r"model_index\.json is not valid JSON.*copy the folder again"):
        resolve_source(str(tmp_path), "tiny")


# --- recipes and profiles ------------------------------------------------------------------------------------


def test_unknown_recipe_lists_the_known_ones():
    with pytest.raises(SuiteError, match=r"unknown recipe 'optimised'; known recipes: baseline, optimized, .*"):
        get_recipe("optimised")


def test_unknown_profile_lists_the_known_ones():
    with pytest.raises(SuiteError, match=r"unknown profile 'a100'; known profiles: cpu, h100, h200, rtx4090"):
        get_profile("a100")


def test_pytest_rejects_an_unknown_recipe_as_a_usage_error(tmp_path):
    """A typo in --recipes must stop the run (exit 4) before anything is built, not silently select nothing."""
    result = run_pytest("--recipes", "hotswap_eager,nope", cache=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, output
    assert "unknown recipe 'nope'; known recipes: baseline," in output
    assert "hotswap_eager" in output


@pytest.mark.parametrize(("options", "message"), [
    (("--serving", "scale,nope"), "--serving: unknown scenario 'nope'; known scenarios: scale, batches,"),
    (("--serving", ","), "--serving ',' names no scenario"),
    (("--serving", "scale", "--no-serving"), "--serving scale and --no-serving contradict each other"),
])
def test_pytest_rejects_a_serving_selection_that_serves_nothing_it_names_as_a_usage_error(tmp_path, options, message):
    """A typo in --serving must stop the run (exit 4) before anything is built, not skip every scenario."""
    result = run_pytest(*options, cache=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, output
    assert message in output and "Traceback" not in output


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_pytest_rejects_a_gpu_profile_on_a_cpu_machine_as_a_usage_error(tmp_path):
    result = run_pytest("--profile", "h100", cache=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, output
    assert "--profile h100 needs a CUDA device" in output
    assert "or drop --profile" in output


def test_profile_with_a_budget_bigger_than_the_device_is_refused():
    """Emulation caps memory; it cannot add memory: a 24 GiB profile cannot be checked on a 12 GiB card."""
    with pytest.raises(
        SuiteError, match=r"--profile rtx4090 budgets 24 GiB but NVIDIA GeForce RTX 3060 has 12\.0 GiB.*bigger device"
    ):
        resolve_profile("rtx4090", device=RTX3060)


@pytest.mark.parametrize(
    ("device", "message"),
    [
        pytest.param(RTX6000_ADA, r"budgets 80 GiB but NVIDIA RTX 6000 Ada Generation has 47\.5 GiB", id="48GiB-ada"),
        pytest.param(BIG_ADA, r"needs FA3-class attention \(Hopper\).*choose a profile without FA3 \(rtx4090\)",
                     id="96GiB-ada"),
    ],
)
def test_h100_profile_on_an_ada_device_is_refused(device, message):
    """An Ada GPU has no FA3-class kernels, so H100 rows cannot be emulated on one (every real Ada card is
    also below the 80 GiB budget; a hypothetical big one reaches the FA3 check itself)."""
    with pytest.raises(SuiteError, match=message):
        resolve_profile("h100", device=device)


def test_smaller_profile_on_a_bigger_device_is_emulated():
    active = resolve_profile("rtx4090", H100)
    assert active.profile.name == "rtx4090"
    assert active.emulated
    assert "emulated on NVIDIA H100 80GB HBM3" in active.describe()
    assert not resolve_profile("h100", H100).emulated


# --- baselines -----------------------------------------------------------------------------------------------


def make_record(**changes) -> RunRecord:
    """A CPU record of hotswap_eager (the example record, moved to the tiny model on this CPU)."""
    cpu = {"profile": "cpu", "model_source": "synthetic-tiny", "device": "x86_64"}
    return example_record("hotswap_eager", [0.5, 0.6], **{**cpu, **changes})


def write_json(tmp_path: Path, data: dict) -> Path:
    """A record file with content ``write_record`` would refuse to write (it validates what it writes)."""
    path = record_path(tmp_path, "cpu", "hotswap_eager")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def test_corrupt_baseline_names_the_file_and_how_to_restore_it(tmp_path):
    path = record_path(tmp_path, "cpu", "hotswap_eager")
    path.parent.mkdir(parents=True)
    path.write_text('{"schema": 1, "profile": "cp')
    with pytest.raises(BaselineError, match=r"hotswap_eager\.json is corrupt .*restore it from git or re-record it"):
        read_record(path)
    records, (unreadable,) = read_records(tmp_path, "cpu")
    assert records == {}
    assert unreadable.recipe == "hotswap_eager"
    assert "hotswap_eager.json is corrupt" in unreadable.message


def test_baseline_of_an_unknown_schema_version_must_be_rerecorded(tmp_path):
    path = write_json(tmp_path, {**to_data(make_record()), "schema": 99})
    with pytest.raises(
        BaselineError, match=r"schema version 99; this suite reads version 2 .*: re-record it with --update-baselines"
    ):
        read_record(path)


def test_baseline_missing_fields_names_them(tmp_path):
    data = to_data(make_record())
    del data["latency"], data["device"]
    path = write_json(tmp_path, data)
    with pytest.raises(BaselineError, match=r"device: Field required; latency: Field required; re-record it with"):
        read_record(path)


SYNTHETIC_POOL = (PoolAdapter("style_a", 4, 7, True),)
USER_POOL = (PoolAdapter("lora0", 16, 190, False, "mine.safetensors", "c" * 64),)
SMALL = dataclasses.replace(SEED_SETTINGS, height=64)


@pytest.mark.parametrize(
    ("change", "differs"),
    [({"device": "NVIDIA H100 80GB HBM3"}, "device differs"),
     ({"model_source": "pretrained:black-forest-labs/FLUX.1-dev"}, "model_source differs"),
     ({"settings": dataclasses.replace(SEED_SETTINGS, height=512)}, "settings differs"),
     ({"lora_pool": USER_POOL}, "LoRA pool differs")],
    ids=["other-device", "other-model", "other-settings", "other-pool"],
)
def test_baseline_of_another_run_is_never_replaced_by_accident(tmp_path, change, differs):
    """A CPU run must not overwrite an H100 baseline, nor the synthetic pool's with a user's own LoRAs (the next
    default run would be incomparable and pass): refused, naming what differs and the override, the stored
    record untouched, unless the user asks for it explicitly."""
    path = write_record(tmp_path, make_record(settings=SMALL, lora_pool=SYNTHETIC_POOL))
    stored = path.read_bytes()
    foreign = make_record(**{"settings": SMALL, "lora_pool": SYNTHETIC_POOL, **change})

    with pytest.raises(BaselineError, match=rf"would replace {path}, a baseline of another run \({differs}.*"
                                            r"pass --overwrite-foreign-baselines"):
        write_record(tmp_path, foreign)
    assert path.read_bytes() == stored

    write_record(tmp_path, foreign, overwrite_foreign=True)
    replaced = read_record(path)
    assert {key: getattr(replaced, key) for key in change} == change
