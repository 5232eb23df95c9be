"""``python -m perf.tools.attention_check --out FILE.json``: the attention kernels at FLUX's joint attention shape, on
the GPU, checked against float32 and timed, in well under a minute.

Rows: torch SDPA; FA3 bf16; FA3 FP8 as the pipeline runs it (per-(batch, head) quantization included), eager and
compiled (where Inductor fuses the quantization); the FP8 kernel alone on inputs quantized beforehand, with its
descales and as a plain e4m3 cast without them (the figure measured before the suite had an FP8 backend). Each
row's error is ||out - ref|| / ||ref|| and mean |out - ref| / mean |ref| on ``perf.build.attention.check_inputs``;
timings are medians of interleaved rounds (``interleaved_median_ms``). Exit status 1 when a row fails its bound
(``MAX_REL_ERROR``, ``MAX_REL_ERROR_FP8``) or FP8's own check (two batch elements) fails.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

from perf.build.attention import (
    FA3_BACKEND,
    FA3_FP8_BACKEND,
    FP8_CHECK_BATCH,
    MAX_REL_ERROR,
    MAX_REL_ERROR_FP8,
    AttentionCheckFailed,
    check,
    check_inputs,
    fa3_module,
    fa3_op,
    interleaved_median_ms,
    quantize_e4m3,
    reference,
    rel_error,
    run_backend,
)

FLUX_JOINT_SHAPE = (1, 4608, 24, 128)  # 1024x1024: 4096 image + 512 text tokens, 24 heads of 128


def _rows(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> dict[str, tuple[Callable[[], torch.Tensor], float]]:
    """Name -> (call, error bound) for every kernel this process can run."""
    rows = {"sdpa (native)": (functools.partial(run_backend, "native", q, k, v), MAX_REL_ERROR)}
    if fa3_module() is None:
        return rows
    from diffusers.models.attention_dispatch import dispatch_attention_fn

    fa3 = fa3_op()
    scale = q.shape[-1] ** -0.5
    (q8, qd), (k8, kd), (v8, vd) = (quantize_e4m3(t) for t in (q, k, v))
    plain = [t.to(torch.float8_e4m3fn) for t in (q, k, v)]
    compiled = torch.compile(lambda *t: dispatch_attention_fn(*t, backend=FA3_FP8_BACKEND), fullgraph=True)
    fp8_rows = {
        "fa3 fp8, quantize + kernel, eager": functools.partial(run_backend, FA3_FP8_BACKEND, q, k, v),
        "fa3 fp8, quantize + kernel, compiled": functools.partial(compiled, q, k, v),
        "fa3 fp8 kernel alone, per-head descale": functools.partial(fa3, q8, k8, v8, scale, qd, kd, vd),
        "fa3 fp8 kernel alone, plain cast": functools.partial(fa3, *plain, scale),
    }
    rows["fa3 bf16"] = (functools.partial(run_backend, FA3_BACKEND, q, k, v), MAX_REL_ERROR)
    rows.update({name: (call, MAX_REL_ERROR_FP8) for name, call in fp8_rows.items()})
    return rows


def run(shape: tuple[int, int, int, int]) -> dict:
    started = time.perf_counter()
    q, k, v = check_inputs(shape, "cuda")
    ref = reference(q, k, v)
    rows = _rows(q, k, v)
    errors, mean_abs, passed, failures = {}, {}, {}, {}
    for name, (call, bound) in rows.items():
        try:
            out = call().float()  # also the warm-up: loads the kernels, compiles the compiled row
        except Exception as exc:  # recorded, and the row is not timed
            failures[name], passed[name] = f"{type(exc).__name__}: {exc}", False
            continue
        errors[name] = rel_error(out, ref)
        mean_abs[name] = float((out - ref).abs().mean() / ref.abs().mean())
        passed[name] = errors[name] <= bound
    timings = interleaved_median_ms({name: rows[name][0] for name in errors}, rounds=5)
    result = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "fa3_module": fa3_module(),
        "shape": list(shape),
        "timings_ms": timings,
        "rel_errors": errors,
        "mean_abs_over_mean_magnitude": mean_abs,
        "passed": passed,
        "raised": failures,
    }
    if fa3_module() is not None:
        fp8_shape = (max(shape[0], FP8_CHECK_BATCH), *shape[1:])
        try:
            result["fp8_check"] = {"error": check(FA3_FP8_BACKEND, fp8_shape, "cuda", MAX_REL_ERROR_FP8),
                                   "passed": True}
        except AttentionCheckFailed as failed:
            result["fp8_check"] = {"error": str(failed), "passed": False}
    result["seconds"] = time.perf_counter() - started
    return result


def table(result: dict) -> str:
    lines = [f"{result['device']}, torch {result['torch']}, FA3: {result['fa3_module'] or 'not installed'}, "
             f"shape {tuple(result['shape'])}",
             f"{'kernel':<42} {'ms':>7} {'rel err':>8} {'mean abs':>9}  check"]
    for name, ms in result["timings_ms"].items():
        lines.append(f"{name:<42} {ms:7.3f} {result['rel_errors'][name]:8.4f} "
                     f"{result['mean_abs_over_mean_magnitude'][name]:9.4f}  "
                     f"{'pass' if result['passed'][name] else 'FAIL'}")
    if "fp8_check" in result:
        lines.append(f"FP8 check (batch {FP8_CHECK_BATCH}, bound {MAX_REL_ERROR_FP8}): {result['fp8_check']}")
    lines += [f"{name}: raised {error}" for name, error in result["raised"].items()]
    lines.append(f"{result['seconds']:.1f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON result")
    parser.add_argument("--shape", default=",".join(map(str, FLUX_JOINT_SHAPE)),
                        help="batch,seq,heads,head_dim (default: FLUX.1-dev's joint attention at 1024x1024)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("the attention check times CUDA kernels: no CUDA device is visible")
    result = run(tuple(int(n) for n in args.shape.split(",")))
    args.out.write_text(json.dumps(result, indent=2))
    print(table(result))
    return 0 if all(result["passed"].values()) and result.get("fp8_check", {}).get("passed", True) else 1


if __name__ == "__main__":
    raise SystemExit(main())
