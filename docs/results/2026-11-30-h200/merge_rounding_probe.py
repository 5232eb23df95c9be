"""How much of a LoRA delta an FP8 merge keeps, emulated on the CPU: ``python merge_rounding_probe.py``.

torchao's per-row e4m3 (scale = row amax / 448, as ``Float8Tensor.from_hp`` with ``PerRow``) on a Gaussian weight
(3072x3072; the shares are scale-free), a rank-32 delta of a given share of the weight's norm. Merged onto the FP8
weight dequantized, a delta below half of FP8's rounding step rounds back to the weight; merged onto the weight as
loaded, the rounding is fresh noise around the merged weight. "Kept": the merged weight's change from the FP8 base,
projected on the delta.
"""

import torch


def fp8_rows(weight: torch.Tensor) -> torch.Tensor:
    scale = weight.abs().amax(dim=1, keepdim=True) / 448.0
    return (weight / scale).to(torch.float8_e4m3fn).float() * scale


def kept(merged: torch.Tensor, base: torch.Tensor, delta: torch.Tensor) -> float:
    return float(((merged - base) * delta).sum() / (delta * delta).sum())


def main() -> None:
    torch.manual_seed(0)
    weight = (torch.randn(3072, 3072) * 0.02).bfloat16().float()
    fp8 = fp8_rows(weight)
    print("| delta (share of the weight) | kept, merged onto the FP8 weight | kept, merged onto the weight as loaded |")
    print("| --- | --- | --- |")
    for share in (0.005, 0.01, 0.02, 0.05, 0.1):
        delta = torch.randn(3072, 32) @ torch.randn(32, 3072)
        delta *= share * weight.norm() / delta.norm()
        onto_fp8, onto_loaded = fp8_rows(fp8 + delta), fp8_rows(weight + delta)
        print(f"| {share:.1%} | {kept(onto_fp8, fp8, delta):.3f} | {kept(onto_loaded, fp8, delta):.3f} |")


if __name__ == "__main__":
    main()
