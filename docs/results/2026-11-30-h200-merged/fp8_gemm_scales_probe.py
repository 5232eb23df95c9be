"""FP8 ``_scaled_mm`` at FLUX.1-dev's Linear shapes, row-wise against tensor-wise scales (issue 25).

Back-to-back calls (sustained, as in a step), bf16 out, CUDA events; writes ``$OUT/gemm.json``. Run on one H200 as
``python3 .scratch/gemm.py`` (the same code) on 2026-11-30: tensor-wise scales buy 1.6% of the image-stream GEMMs.
"""

import json
import os
from pathlib import Path

import torch

SHAPES = [("double qkv/out img", 4096, 3072, 3072), ("double ff up img", 4096, 3072, 12288),
          ("double ff down img", 4096, 12288, 3072), ("single q/k/v", 4608, 3072, 3072),
          ("single proj_mlp", 4608, 3072, 12288), ("single proj_out", 4608, 15360, 3072),
          ("text ff up", 512, 3072, 12288)]


def bench(fn, calls: int = 200) -> float:
    """Mean milliseconds of ``calls`` back-to-back calls after 20 warm-up calls."""
    for _ in range(20):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(calls):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / calls


def measure(m: int, k: int, n: int) -> tuple[float, float]:
    a = (torch.randn(m, k, device="cuda") * 0.5).to(torch.float8_e4m3fn)
    b = (torch.randn(n, k, device="cuda") * 0.05).to(torch.float8_e4m3fn).t()
    rows, cols = torch.rand(m, 1, device="cuda") + 0.5, torch.rand(1, n, device="cuda") + 0.5
    one = torch.tensor(1.0, device="cuda")
    rowwise = bench(lambda: torch._scaled_mm(a, b, scale_a=rows, scale_b=cols, out_dtype=torch.bfloat16))
    tensorwise = bench(lambda: torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16))
    return rowwise, tensorwise


def main() -> None:
    torch.manual_seed(0)
    results = []
    for name, m, k, n in SHAPES:
        rowwise, tensorwise = measure(m, k, n)
        tflop = 2 * m * k * n / 1e9
        results.append({"shape": name, "m": m, "k": k, "n": n, "rowwise_ms": rowwise, "tensorwise_ms": tensorwise,
                        "rowwise_tflops": tflop / rowwise, "tensorwise_tflops": tflop / tensorwise})
        print(f"{name:22s} row {rowwise:.4f} ms ({tflop / rowwise:.0f} TF/s)  tensor {tensorwise:.4f} ms "
              f"({tflop / tensorwise:.0f} TF/s)  {rowwise / tensorwise:.3f}x", flush=True)
    by_shape = {row["shape"]: row for row in results}

    def step(kind: str) -> float:
        """A step's image-stream GEMMs: 19 double blocks (q, k, v, out, ff up, ff down), 38 single blocks."""
        double = 4 * by_shape["double qkv/out img"][kind] + by_shape["double ff up img"][kind]
        double += by_shape["double ff down img"][kind]
        single = 3 * by_shape["single q/k/v"][kind] + by_shape["single proj_mlp"][kind]
        single += by_shape["single proj_out"][kind]
        return 19 * double + 38 * single

    print(f"image-stream GEMMs a step: row {step('rowwise_ms'):.1f} ms, tensor {step('tensorwise_ms'):.1f} ms")
    out = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(), "shapes": results}
    Path(os.environ["OUT"], "gemm.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
