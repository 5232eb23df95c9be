"""``python -m perf.tools.block_profile``: one double- and one single-stream block, compiled, profiled and written
down per variant (on the CPU at the tiny model's width)."""

import json

import pytest

from perf.tools.block_profile import main


@pytest.mark.parametrize("rank", [4, 0])
def test_each_block_and_variant_is_profiled_and_written(tmp_path, rank):
    """Rank 0 profiles the blocks without LoRA (an adapter merged into the weights); any other rank puts a LoRA
    on every Linear."""
    assert main(["--variants", "bf16", "--repeats", "2", "--rank", str(rank), "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "block-profile.json").read_text())
    assert set(result["blocks"]) == {"double/bf16", "single/bf16"}
    for row in result["blocks"].values():
        assert row["wall_ms"] > 0
        assert row["kernel_ms"] > 0
        assert row["kernels_ms"]
        assert (row["lora_layers"] > 0) == (rank > 0), row["lora_layers"]
