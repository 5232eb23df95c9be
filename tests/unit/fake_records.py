"""A minimal valid H100 run record for the verdict and report tests (the fields ``perf.judge.baseline_files``
requires)."""

from perf.judge.baseline_files import SCHEMA_VERSION


def h100_record(recipe: str, samples: list[float], **changes) -> dict:
    return {
        "schema": SCHEMA_VERSION,
        "profile": "h100",
        "recipe": {"name": recipe},
        "model_source": "synthetic-full",
        "device": "NVIDIA H100 80GB HBM3",
        "emulated": False,
        "settings": {"height": 1024, "width": 1024},
        "memory_budget_gib": 80.0,
        "latency": {"samples_s": list(samples)},
        "compile": {"warmup_seconds": 30.0},
        "peak_memory": {"allocated_gib": 30.0, "reserved_gib": 32.0, "kind": "cuda"},
        "recompiles_after_warmup": 0,
        "versions": {},
        **changes,
    }
