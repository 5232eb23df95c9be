"""``python -m perf.tools.fullgraph_probe`` measures a full-graph compile of the FLUX architecture by block count; here
on the tiny widths with a hot-swap-prepared LoRA and Dynamo alone (CI has no torchao for ``--fp8``)."""

from __future__ import annotations

import json

import torch

from perf.tools.fullgraph_probe import _without_blocks, main, parse_blocks


def test_blocks_are_read_as_double_single_pairs():
    assert parse_blocks("19,38") == (19, 38)


def test_a_bigger_model_makes_a_bigger_graph_without_breaks(capsys):
    assert main(["--blocks", "1,1", "2,2", "--lora", "--backend", "eager", "--in-process"]) == 0
    small, big = (json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{"))
    for record in (small, big):
        assert record["graph_breaks"] == 0 and record["recompiles"] == 0 and record["graphs"] == 1
        assert record["compile_s"] > 0 and record["backend_s"] == 0.0  # the eager backend compiles nothing
    assert big["graph_nodes"] > small["graph_nodes"]
    assert not torch.compiler.config.force_disable_caches  # the probe's cold-compile switch is undone


def test_each_child_process_gets_the_options_and_one_configuration():
    assert _without_blocks(["--blocks", "1,2", "4,8", "--fp8", "--backend", "eager"]) == ["--fp8", "--backend", "eager"]
