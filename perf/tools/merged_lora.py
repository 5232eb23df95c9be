"""A hot-swap row with the adapter merged into its weights: ``python -m perf.tools.merged_lora --recipe R --out DIR``.

The merge of ``perf.build.merge`` measured on any compiled hot-swap recipe, before and apart from a
``merge_lora`` row's own run: image seconds with the LoRA layers and merged, graphs compiled by the merge (one: the
forward without the LoRA path) and by each later swap (must be 0), a swap's seconds, the merged step against the
LoRA layers' step on the same inputs in units of the adapter's effect, the merged image's PSNR/SSIM against the
LoRA layers' beside the image without the adapter's, and the same for a merge onto the FP8 weights dequantized
(the merge that loses a weak adapter: a CPU emulation of per-row e4m3 kept 19% / 36% / 65% / 96% of a delta of
0.5% / 1% / 2% / 5% of the weight that way, and all of it from the weights as loaded), at the pool's strength and
at a real adapter's (``weak_adapter``). Writes ``merged-lora.json`` as it goes; on a CPU it runs the tiny model.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from perf.build import compile_settings
from perf.build.builder import HOTSWAP_ADAPTER, BuiltPipeline, build_pipeline
from perf.build.merge import Merged
from perf.run.measure import timed
from perf.run.quality import fidelity
from perf.run.swap_probe import capture_first_step, step_output
from perf.run.watchers import RecompileWatcher
from perf.spec.profiles import resolve_profile
from perf.spec.recipes import RECIPES, get_recipe
from perf.spec.run_spec import add_run_options, resolve_run
from perf.spec.validate import positive_int

WEAK_SHARE = 0.0015  # of the pool's strength: a delta of about 1% of a default-initialized weight (``weak_adapter``)


def weak_adapter(built: BuiltPipeline, merged: Merged, inputs, without_lora: torch.Tensor, share: float
                 ) -> dict[str, float]:
    """The adapter at ``share`` of its strength (the slot's scaling tensors scaled in place, as a per-request scale
    is), and what each merge keeps of its effect on a step: the merged step's change from the step without the
    adapter, projected on the LoRA layers' change. The suite's adapters move a random FLUX only at about 7x a
    weight's size, where any merge keeps them; at 0.0015 of it a delta is about 1% of the weight, a real adapter's
    size, where rounding onto the FP8 weights can lose it. Leaves the full adapter merged, as it found it."""
    scalings = [layer.scaling[HOTSWAP_ADAPTER] for layer in merged.layers.values()]
    full = [scaling.clone() for scaling in scalings]

    def scale(by: float) -> None:
        for scaling, value in zip(scalings, full, strict=True):
            scaling.copy_(value * by)

    def kept(step: torch.Tensor) -> float:
        return float(((step - without_lora) * effect).sum() / (effect * effect).sum())

    with torch.no_grad():
        scale(0.0)
        merged.write()  # the weights as the builder quantized them, the LoRA layers' base
        scale(share)
        merged.lora_in_forward(True)
        effect = step_output(built.pipe, inputs) - without_lora
        merged.lora_in_forward(False)
        merged.write(onto_weights=True)
        onto_weights = kept(step_output(built.pipe, inputs))
        merged.write()
        as_loaded = kept(step_output(built.pipe, inputs))
        scale(1.0)
        merged.write()
    return {"share": share, "kept_merged_as_loaded": as_loaded, "kept_merged_onto_weights": onto_weights}


def timed_images(built: BuiltPipeline, images: int) -> tuple[list[float], np.ndarray]:
    """Each of ``images`` generations' seconds, and the last image."""
    made = [timed(built.generate, built.device_type) for _ in range(images)]
    return [seconds for seconds, _ in made], made[-1][1]


def against(candidate: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    found = fidelity(candidate, reference)
    return {"psnr_db": found.psnr, "ssim": found.ssim}


def measure(built: BuiltPipeline, images: int, out: Path) -> dict:
    """The figures the module docstring names, written to ``out`` after each stage."""
    result: dict = {"recipe": built.recipe.name, "device": built.spec.active.device.name,
                    "model_source": built.spec.source.label, "torch": torch.__version__}

    def save(**figures) -> None:
        result.update(figures)
        out.mkdir(parents=True, exist_ok=True)
        (out / "merged-lora.json").write_text(json.dumps(result, indent=1))

    with capture_first_step(built.pipe.transformer) as captured:
        built.generate()  # warm-up: the compile
    inputs = captured[0]
    seconds, with_lora_image = timed_images(built, images)
    save(lora_layers_s=seconds)
    with_lora = step_output(built.pipe, inputs)
    merged = Merged(built.pipe.transformer, built.unquantized, HOTSWAP_ADAPTER)
    with RecompileWatcher() as merging:  # the forward without the LoRA path: one graph
        merged.lora_in_forward(False)
        without_lora = step_output(built.pipe, inputs)
        no_adapter_image = built.generate()
        merged.write(onto_weights=True)
        onto_weights = step_output(built.pipe, inputs)
        onto_weights_image = built.generate()
        took, _ = timed(merged.write, built.device_type)
        step = step_output(built.pipe, inputs)
    effect = float((with_lora - without_lora).norm())
    seconds, merged_image = timed_images(built, images)
    # each merge's step and image, and the image with no adapter at all, against the LoRA layers': how much of the
    # adapter's effect each keeps (an FP8 row re-quantizes the merged weight)
    save(lora_layers=len(merged.layers), merge_s=took, merge_graphs=merging.count,
         merged_vs_lora_layers=float((step - with_lora).norm()) / effect, merged_s=seconds,
         merged_image_vs_lora_layers=against(merged_image, with_lora_image),
         onto_weights_vs_lora_layers=float((onto_weights - with_lora).norm()) / effect,
         onto_weights_image_vs_lora_layers=against(onto_weights_image, with_lora_image),
         no_adapter_image_vs_lora_layers=against(no_adapter_image, with_lora_image))
    with RecompileWatcher() as weak:  # the LoRA layers' graph and the merged one, both compiled already
        save(weak_adapter=weak_adapter(built, merged, inputs, without_lora, WEAK_SHARE))
    save(weak_adapter_graphs=weak.count)
    swaps = []
    for adapter in [*built.spec.pool.adapters[1:], built.spec.pool.adapters[0]]:
        with RecompileWatcher() as swapping:
            load, _ = timed(lambda a=adapter: built.load_adapter(a), built.device_type)
            write, _ = timed(merged.write, built.device_type)
            seconds = timed_images(built, 1)[0][0]
            before, step = step, step_output(built.pipe, inputs)
        # a swap that wrote nothing reads 0 here: the step changes by about an adapter's effect
        swaps.append({"adapter": adapter.name, "load_s": load, "merge_s": write, "image_s": seconds,
                      "graphs": swapping.count, "step_change": float((step - before).norm()) / effect})
        save(swaps=swaps)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.tools.merged_lora", description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", required=True, choices=list(RECIPES), metavar="RECIPE",
                        help="a compiled hot-swap recipe to build on this device")
    parser.add_argument("--images", type=positive_int, default=3,
                        help="images timed with the LoRA layers and merged (default: 3)")
    parser.add_argument("--out", type=Path, default=Path(".results/merged-lora"), help="folder for merged-lora.json")
    add_run_options(parser.add_argument)
    args = parser.parse_args(argv)
    recipe = get_recipe(args.recipe)
    if not (recipe.hotswap and recipe.compiled):
        parser.error(f"--recipe {recipe.name}: merging on swap is measured on compiled hot-swap recipes only")
    if recipe.merge_lora:
        parser.error(f"--recipe {recipe.name}: the row merges already (its LoRA layers never act); give the row it "
                     "builds on, e.g. optimized_fast_cudagraphs")
    spec = resolve_run(resolve_profile(None), args.model, args.lora, args.max_rank, args.perf_cache)
    settings_before = compile_settings.snapshot()
    started = time.perf_counter()
    try:
        result = measure(build_pipeline(spec, recipe, keep_unquantized=True), args.images, args.out)
    finally:
        compile_settings.restore(settings_before)
    worst, merges = max(s["graphs"] for s in result["swaps"]), [s["merge_s"] for s in result["swaps"]]
    print(f"{recipe.name}: image {statistics.median(result['lora_layers_s']):.3f} s with the LoRA layers, "
          f"{statistics.median(result['merged_s']):.3f} s merged; the merge compiled {result['merge_graphs']} "
          f"graph(s), swaps at most {worst}; a swap's merge {statistics.median(merges):.3f} s; "
          f"merged step {result['merged_vs_lora_layers']:.4f} of the adapter's effect from the LoRA layers', "
          f"image PSNR {result['merged_image_vs_lora_layers']['psnr_db']:.1f} dB against them (merged onto the "
          f"weights: {result['onto_weights_vs_lora_layers']:.4f}, "
          f"{result['onto_weights_image_vs_lora_layers']['psnr_db']:.1f} dB; no adapter: "
          f"{result['no_adapter_image_vs_lora_layers']['psnr_db']:.1f} dB); at {WEAK_SHARE} of its strength "
          f"the merge keeps {result['weak_adapter']['kept_merged_as_loaded']:.3f} of its effect, merged onto the "
          f"weights {result['weak_adapter']['kept_merged_onto_weights']:.3f} ({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
