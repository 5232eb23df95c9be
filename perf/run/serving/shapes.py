"""Resolutions and aspect ratios: as built (automatic dynamic shapes), and in the static and ``dynamic=True`` modes,
each its own scenario."""

from __future__ import annotations

from collections.abc import Callable

import torch

from perf.build.builder import BuiltPipeline, image_tokens
from perf.judge.serving_record import (
    ServingResult,
)
from perf.run.serving.requests import (
    leaves_pipeline_as_built,
    scenario_result,
    serve_all,
)

# (height, width): the full-size shapes, and the tiny model's at 1/16 of the side (multiples of 16, the VAE's 8
# times the transformer's 2x2 patches; 84 is not, so the tiny portrait/landscape are 48x80 and 80x48)
SHAPES = {
    "full": ((1024, 1024), (768, 1344), (1344, 768), (512, 512)),
    "tiny": ((64, 64), (48, 80), (80, 48), (32, 32)),
}
# Scenario -> the dynamo settings torch.compile(dynamic=False) (static shapes) and dynamic=True give the frames it
# compiles; after torch.compiler.reset() the case's compiled transformer recompiles under them
# (torch/_dynamo/eval_frame.py, ``_TorchDynamoContext``)
SHAPE_MODES = {
    "resolutions_static": {"automatic_dynamic_shapes": False, "assume_static_by_default": True},
    "resolutions_dynamic": {"automatic_dynamic_shapes": True, "assume_static_by_default": False},
}


def _shapes(built: BuiltPipeline) -> dict[str, dict]:
    return {f"{h}x{w}": {"height": h, "width": w} for h, w in SHAPES[built.spec.source.size]}


def sizes_beside_tokens(built: BuiltPipeline) -> dict[str, int]:
    """The compiled graphs' input sizes other than the image tokens (and the batch, 1, which dynamo specializes),
    named: the transformer's forward's on a full-graph compile (latents, T5's and CLIP's outputs, the text ids), a
    block's on a regional one (the streams at the blocks' width, the rotary embedding's head dim)."""
    cfg, text = built.pipe.transformer.config, built.spec.settings.max_sequence_length
    if built.recipe.compile == "regional":
        return {"the blocks' width": cfg.num_attention_heads * cfg.attention_head_dim, "the text tokens": text,
                "the head dim": cfg.attention_head_dim}
    return {"the latent channels": cfg.in_channels, "T5's width (joint_attention_dim)": cfg.joint_attention_dim,
            "CLIP's pooled width": cfg.pooled_projection_dim, "the text tokens": text}


def shared_sizes(built: BuiltPipeline, height: int, width: int) -> tuple[int, tuple[str, ...]]:
    """The image tokens of a ``height`` x ``width`` request, and the other input sizes they equal."""
    tokens = image_tokens(built.pipe, height, width)
    return tokens, tuple(name for name, size in sizes_beside_tokens(built).items() if size == tokens)


def run_resolutions(built: BuiltPipeline, **_) -> ServingResult:
    """The recipe's pipeline at each shape, as built (torch.compile's default automatic dynamic shapes): the first
    image's cost and graphs compiled per new shape, steady latency per shape, none compiled once all are warm."""
    with leaves_pipeline_as_built(built):
        requests = serve_all(built, _shapes(built))
    return scenario_result(built, "resolutions", requests)


def shape_mode(scenario: str) -> Callable[..., ServingResult]:
    """The scenario serving every shape under ``SHAPE_MODES[scenario]``, its graphs compiled from scratch
    (``torch.compiler.reset``). Each mode is its own scenario: on the H200 the static one compiles three full-graph
    transformers (minutes each), so a run cut off at a machine's time limit keeps the modes it finished, and no one
    scenario outgrows the time a machine is held. On the CPU both take about 37 s for the tiny model."""

    def run(built: BuiltPipeline, **_) -> ServingResult:
        shapes, mode = _shapes(built), SHAPE_MODES[scenario]
        with leaves_pipeline_as_built(built):
            torch.compiler.reset()
            with torch._dynamo.config.patch(**mode):
                requests = serve_all(built, shapes)
        first = next(iter(shapes.values()))
        symbolic = not mode["assume_static_by_default"]  # every size a symbol from the first graph on: duck shaping
        tokens, shared = shared_sizes(built, first["height"], first["width"]) if symbolic else (0, ())
        return scenario_result(built, scenario, requests, tokens=tokens, shared=shared)

    return run
