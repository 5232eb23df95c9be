"""Where a full-graph compile of a FLUX transformer spends its time, by block count:
``python -m perf.tools.fullgraph_probe --blocks 1,2 4,8 --fp8 --lora --backend inductor --device cuda``.

Why it exists: on an H100 (torch 2.11, torchao 0.17, peft 0.21) ``transformer.compile(fullgraph=True)`` of the
FP8 + LoRA hot-swap transformer had made no image after 9.5 minutes, where bf16 took ~2 minutes. Compile time
hardly depends on layer widths, so the probe builds the FLUX architecture at the suite's tiny widths with the
number of blocks asked for (FLUX.1-dev: 19,38), optionally FP8 (the suite's ``quantize_fp8``) and a LoRA loaded
after hot-swap preparation, compiles it full-graph with one backend and prints one JSON line per configuration:
Dynamo's and the backend's seconds, the first (compiling) call, graph size, graph breaks, recompiles, and the
Inductor settings torchao's ``quantize_`` left behind (coordinate-descent tuning) with how many benchmarks that
tuning ran. Each configuration runs in a fresh process with compile caches off: every figure is a cold compile.

On a CPU torchao refuses FP8 (it checks for CUDA compute capability >= 8.9); the probe skips that check there,
which changes nothing Dynamo or AOT autograd trace (``torch._scaled_mm`` has a CPU kernel).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from perf.build.builder import quantize_fp8
from perf.run.measure import time_rounds
from perf.spec.lora_formats import format_tensors, lora_config
from perf.spec.loras import SyntheticLoraSpec, linear_shapes, meant_lora
from perf.spec.models import CONFIGS, transformer_step_inputs

BACKENDS = ("eager", "aot_eager", "inductor")


def parse_blocks(text: str) -> tuple[int, int]:
    """``"D,S"`` -> (double-stream blocks, single-stream blocks)."""
    try:
        double, single = (int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected D,S such as 1,2") from None
    if double < 0 or single < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: block counts must be >= 0")
    return double, single


def build(double: int, single: int, device: str, fp8: bool, lora: bool, inductor_config: bool) -> torch.nn.Module:
    """The tiny-width FLUX transformer with these block counts, bf16, optionally FP8 and with a rank-8 synthetic
    LoRA on every attention projection, loaded after ``enable_lora_hotswap(target_rank=16)`` as the suite does."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    cfg = {**CONFIGS["tiny"]["transformer"], "num_layers": double, "num_single_layers": single}
    model = FluxTransformer2DModel(**cfg).to(device=device, dtype=torch.bfloat16).eval()
    if fp8:
        if not device.startswith("cuda"):
            import torchao.quantization.quant_api as quant_api

            quant_api._check_hardware_support = lambda granularity: None
        quantize_fp8(model, set_inductor_config=inductor_config)
    if lora:
        spec = SyntheticLoraSpec("probe", "peft", (8,), (1,), 1, "", families=ATTENTION)
        meant = meant_lora(spec, linear_shapes(model))
        layers = {k.removeprefix("transformer."): w.to(device) for k, w in format_tensors(meant, "peft").items()}
        model.enable_lora_hotswap(target_rank=2 * spec.rank)
        model.load_lora_adapter(layers, prefix=None, adapter_name="default_0", metadata=lora_config(meant))
    return model


ATTENTION = (*(f"{kind}.attn.{p}" for kind in ("double", "single") for p in ("to_q", "to_k", "to_v")),
             "double.attn.to_out.0")  # every attention projection (perf.spec.loras.family names)


class TimedBackend:
    """A registered backend, timed (what is not in it is Dynamo's), counting the nodes of the graphs it gets."""

    def __init__(self, name: str) -> None:
        from torch._dynamo.backends.registry import lookup_backend

        self.inner, self.seconds, self.graphs, self.nodes = lookup_backend(name), 0.0, 0, 0

    def __call__(self, gm: torch.fx.GraphModule, inputs: list[torch.Tensor]) -> Callable[..., Any]:
        self.graphs += 1
        self.nodes += len(gm.graph.nodes)
        started = time.perf_counter()
        try:
            return self.inner(gm, inputs)
        finally:
            self.seconds += time.perf_counter() - started


def run_one(args: argparse.Namespace, double: int, single: int) -> dict[str, Any]:
    """Build, compile and call one configuration twice; its JSON record."""
    with torch.compiler.config.patch(force_disable_caches=True):  # every figure is a cold compile
        return _measure(args, double, single)


def _measure(args: argparse.Namespace, double: int, single: int) -> dict[str, Any]:
    import torch._inductor.config as inductor
    from torch._dynamo.utils import compilation_time_metrics, counters

    model = build(double, single, args.device, args.fp8, args.lora, not args.no_inductor_config)
    record: dict[str, Any] = {
        "blocks": [double, single], "fp8": args.fp8, "lora": args.lora, "backend": args.backend,
        "device": args.device, "torch": torch.__version__,
        "coordinate_descent_tuning": inductor.coordinate_descent_tuning,
        "coordinate_descent_check_all_directions": inductor.coordinate_descent_check_all_directions,
    }
    inputs = transformer_step_inputs(CONFIGS["tiny"]["transformer"], 16, 8, args.device)
    torch._dynamo.reset()
    counters.clear()
    compilation_time_metrics.clear()
    backend = TimedBackend(args.backend)
    model.compile(fullgraph=True, backend=backend)
    with torch.no_grad():
        calls = time_rounds(lambda: model(**inputs), None, 2, torch.device(args.device).type)
    compile_s = sum(compilation_time_metrics.get("_compile.compile_inner", [math.nan]))
    record.update(
        first_call_s=round(calls[0], 3), second_call_s=round(calls[1], 4), compile_s=round(compile_s, 3),
        dynamo_s=round(compile_s - backend.seconds, 3), backend_s=round(backend.seconds, 3),
        graphs=backend.graphs, graph_nodes=backend.nodes,
        graph_breaks=sum(counters["graph_break"].values()),
        recompiles=counters["stats"].get("unique_graphs", 0) - backend.graphs,
        coordinate_descent_benchmarks=counters["inductor"].get("coordesc_tuning_bench", 0),
    )
    return record


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m perf.tools.fullgraph_probe", description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", nargs="+", type=parse_blocks, default=[(1, 2), (2, 4), (4, 8)], metavar="D,S",
                        help="configurations: double,single block counts each (FLUX.1-dev: 19,38; default "
                        "1,2 2,4 4,8)")
    parser.add_argument("--fp8", action="store_true", help="FP8 rowwise weights and activations, as the suite")
    parser.add_argument("--lora", action="store_true",
                        help="a rank-8 LoRA on to_q/to_k/to_v/to_out.0, loaded after hot-swap preparation")
    parser.add_argument("--no-inductor-config", action="store_true",
                        help="with --fp8: torchao's set_inductor_config=False, so quantize_ leaves Inductor's "
                        "settings (coordinate-descent tuning) alone")
    parser.add_argument("--backend", choices=BACKENDS, default="inductor",
                        help="eager: Dynamo tracing only; aot_eager: + AOT autograd; inductor: the real compile "
                        "(default)")
    parser.add_argument("--device", default="cpu", help="torch device: cpu (default) or cuda")
    parser.add_argument("--in-process", action="store_true",
                        help="run every configuration in this process instead of a fresh process each")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    failed = 0
    for double, single in args.blocks:
        if args.in_process:
            print(json.dumps(run_one(args, double, single)), flush=True)
            continue
        child = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--in-process"]
        child = [sys.executable, "-m", "perf.tools.fullgraph_probe", *_without_blocks(child),
                 "--blocks", f"{double},{single}", "--in-process"]
        if subprocess.run(child, check=False).returncode:
            failed += 1
            print(json.dumps({"blocks": [double, single], "error": "the child process failed (see above)"}))
    return 1 if failed else 0


def _without_blocks(argv: list[str]) -> list[str]:
    """``argv`` without ``--blocks`` and its values."""
    out, skipping = [], False
    for arg in argv:
        if arg == "--blocks":
            skipping = True
        elif skipping and not arg.startswith("--"):
            continue
        else:
            skipping = False
            out.append(arg)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
