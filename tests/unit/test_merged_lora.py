"""``python -m perf.tools.merged_lora``, issue 25's measurement of a hot-swap row with the adapter merged into its
weights, on the tiny model: the merged step is the LoRA layers' step, the merge compiles the forward without the
LoRA path once, and every later swap writes the new adapter into the weights without compiling."""

import json

import pytest
import torch

from perf.build.builder import HOTSWAP_ADAPTER, build_pipeline
from perf.build.merge import Merged
from perf.spec.recipes import get_recipe
from perf.tools.merged_lora import main


def test_a_merged_row_swaps_without_compiling_and_serves_what_the_lora_layers_serve(tmp_path, tiny_cache):
    torch.compiler.reset()  # graphs are counted per code object: a merged row's, built earlier, would be reused
    assert main(["--recipe", "no_fa3_fp8", "--images", "1", "--out", str(tmp_path),
                 "--perf-cache", str(tiny_cache)]) == 0
    result = json.loads((tmp_path / "merged-lora.json").read_text())
    assert result["merge_graphs"] == 1
    assert result["merged_vs_lora_layers"] < 1e-4  # float32 on the CPU; FP8 re-quantization is the GPU's figure
    assert result["onto_weights_vs_lora_layers"] < 1e-4  # the same weights here: no FP8 rounding to lose it to
    assert result["merged_image_vs_lora_layers"]["psnr_db"] > 60 > result["no_adapter_image_vs_lora_layers"]["psnr_db"]
    assert result["weak_adapter_graphs"] == 0
    weak = result["weak_adapter"]  # float32: no rounding, both merges keep all of a weak adapter
    assert weak["kept_merged_as_loaded"] == pytest.approx(1, abs=1e-3)
    assert weak["kept_merged_onto_weights"] == pytest.approx(1, abs=1e-3)
    assert [swap["graphs"] for swap in result["swaps"]] == [0] * 4
    assert all(swap["step_change"] > 0 for swap in result["swaps"])  # a swap not written into the weights reads 0


@pytest.mark.parametrize("argv, says", [
    (["--recipe", "nope"], "invalid choice: 'nope'"),
    (["--recipe", "baseline"], "compiled hot-swap recipes only"),
    (["--recipe", "optimized_fast_merged"], "the row merges already"),
    (["--recipe", "no_fa3_fp8", "--images", "0"], "--images: 0 is not positive"),
])
def test_a_mistyped_option_is_one_usage_line(argv, says, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2
    assert says in capsys.readouterr().err


def test_the_merge_writes_onto_the_weights_as_loaded_not_onto_their_rounding(tiny_spec):
    """An FP8 weight dequantized carries its rounding, and a weak adapter's delta rounds back into it; the merge
    starts from the weights the builder kept before FP8. Here a layer's weight is moved as a rounding would move
    it: the merge writes base + delta all the same; the merge onto the weights adds to whatever they hold."""
    built = build_pipeline(tiny_spec, get_recipe("no_fa3_fp8"), keep_unquantized=True)
    merged = Merged(built.pipe.transformer, built.unquantized, HOTSWAP_ADAPTER)
    name, layer = next(iter(merged.layers.items()))
    weight = layer.base_layer.weight
    assert torch.equal(merged.base[name], weight) and merged.base[name].data_ptr() != weight.data_ptr()
    merged.write()
    delta = weight.detach().clone() - merged.base[name]
    assert delta.abs().max() > 0
    with torch.no_grad():
        weight.add_(1e-3)  # as a rounding moves it
    merged.write()
    assert torch.allclose(weight, merged.base[name] + delta)
    merged.write(onto_weights=True)
    assert torch.allclose(weight, merged.base[name] + 2 * delta)  # onto the merged weight: the delta twice
