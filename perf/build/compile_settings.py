"""Process-wide compile settings that building a recipe may change, kept to that recipe.

torchao's ``quantize_`` (with ``set_inductor_config=True``: its default, and what the seed ran with) turns on
Inductor's coordinate-descent tuning (all directions) and sets the float32 matmul precision to "high" for the
whole process. In one pytest session every recipe built after an FP8 one would then compile and run under
them, and compile times and latencies would depend on the order of the recipes. The suite snapshots the
settings before a recipe is built, restores them once it is done, and records those its compile ran under.
A recipe may set Inductor options of its own (``Recipe.inductor``): applied by the builder after torchao's, kept
to that recipe the same way, and recorded beside them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch._inductor.config as inductor_config

# What torchao's recommended_inductor_config_setter changes that is not Inductor's default.
RECORDED = ("coordinate_descent_tuning", "coordinate_descent_check_all_directions", "force_fuse_int_mm_with_mul")


@dataclass(frozen=True)
class CompileSettings:
    inductor: dict
    float32_matmul_precision: str


def snapshot() -> CompileSettings:
    return CompileSettings(inductor_config.get_config_copy(), torch.get_float32_matmul_precision())


def restore(saved: CompileSettings) -> None:
    inductor_config.load_config(saved.inductor)
    torch.set_float32_matmul_precision(saved.float32_matmul_precision)


def check(options: Iterable[tuple[str, bool | int]]) -> None:
    """Raise, naming it, for an option ``torch._inductor.config`` does not have."""
    known = inductor_config.get_config_copy()
    for name, _ in options:
        if name not in known:
            raise ValueError(f"torch._inductor.config has no option {name!r}")


def apply(options: Iterable[tuple[str, bool | int]]) -> None:
    """Set Inductor options by their dotted names (``triton.multi_kernel``); an unknown name raises."""
    options = dict(options)
    check(options.items())
    inductor_config.load_config(options)


def in_effect(extra: Iterable[str] = ()) -> dict:
    """The settings a compile would run under now, for the record: torchao's, and ``extra`` (a recipe's own)."""
    config = inductor_config.get_config_copy()
    return {
        **{name: config[name] for name in (*RECORDED, *extra)},
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }
