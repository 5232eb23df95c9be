"""The CUDA-graph detector: a recipe compiled with CUDA graphs must record them in warm-up, replay them after a
hot-swap (which copies into the captured weights), and never skip them. The CPU test is its negative control
(Inductor skips CUDA graphs for CPU tensors and the detector must say so); the GPU tests show an in-place copy
replays with the new weights and a swap that rebinds a weight is caught re-recording."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from perf.run.checks import cudagraph_problem
from perf.run.watchers import RecompileWatcher
from perf.spec.recipes import RECIPES

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")


def test_every_failure_of_a_cudagraph_recipe_is_named():
    assert cudagraph_problem(recorded_in_warmup=57, recorded_after_warmup=0, skipped=0) is None
    assert "without CUDA graphs" in cudagraph_problem(57, 0, skipped=2)
    assert "no CUDA graph was recorded" in cudagraph_problem(0, 0, 0)
    assert "recorded again after warm-up" in cudagraph_problem(57, recorded_after_warmup=3, skipped=0)


def test_only_cudagraph_modes_count_as_cudagraph_recipes():
    assert RECIPES["optimized_cudagraphs"].cudagraphs
    assert not RECIPES["optimized"].cudagraphs and not RECIPES["baseline"].cudagraphs


def _compiled_linear(device: str) -> tuple[torch.nn.Linear, object, torch.Tensor]:
    torch.compiler.reset()
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 64, device=device)
    return linear, torch.compile(linear, mode="reduce-overhead", fullgraph=True), torch.randn(4, 64, device=device)


def _warm(compiled, x: torch.Tensor) -> RecompileWatcher:
    with RecompileWatcher() as warm:
        for _ in range(3):
            compiled(x)
    return warm


@torch.no_grad()
def test_detector_reports_cudagraphs_skipped_on_cpu():
    _, compiled, x = _compiled_linear("cpu")
    warm = _warm(compiled, x)
    assert warm.count == 1 and warm.cudagraphs_skipped >= 1 and warm.cudagraphs_recorded == 0
    assert "without CUDA graphs" in cudagraph_problem(warm.cudagraphs_recorded, 0, warm.cudagraphs_skipped)


def _swap_after_warmup(swap: Callable[[torch.nn.Parameter, torch.Tensor], None]):
    """Warm a compiled CUDA linear up, swap its weight with ``swap(weight, new)``, call it once more: the warm-up
    and swap watchers, and the output next to what the new weight should give."""
    linear, compiled, x = _compiled_linear("cuda")
    warm = _warm(compiled, x)
    new = torch.randn_like(linear.weight)
    with RecompileWatcher() as swapped:
        swap(linear.weight, new)
        out = compiled(x).clone()
    expected = torch.nn.functional.linear(x, new, linear.bias)
    torch.compiler.reset()
    return warm, swapped, out, expected


def _copy_into(weight: torch.nn.Parameter, new: torch.Tensor) -> None:
    weight.copy_(new)  # what PEFT's hot-swap does once ranks are padded to the target rank


def _rebind(weight: torch.nn.Parameter, new: torch.Tensor) -> None:
    weight.data = new  # a new storage: the captured graph's weight pointer is stale


@needs_cuda
@torch.no_grad()
def test_inplace_weight_copy_replays_the_recorded_graph_with_the_new_weights():
    warm, swap, out, expected = _swap_after_warmup(_copy_into)
    assert cudagraph_problem(warm.cudagraphs_recorded, swap.cudagraphs_recorded, warm.cudagraphs_skipped) is None
    assert swap.count == 0
    torch.testing.assert_close(out, expected)


@needs_cuda
@torch.no_grad()
def test_detector_catches_a_swap_that_rebinds_a_captured_weight():
    warm, swap, out, expected = _swap_after_warmup(_rebind)
    assert swap.cudagraphs_recorded >= 1
    assert "recorded again" in cudagraph_problem(warm.cudagraphs_recorded, swap.cudagraphs_recorded, 0)
    torch.testing.assert_close(out, expected)
