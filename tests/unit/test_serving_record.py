"""The serving scenarios' figures survive the record's JSON, and the README's serving table is made from them alone,
findings included (no torch: judging and reporting import none)."""

import dataclasses

from fake_records import example_record

from perf.judge.record import from_json, to_json
from perf.judge.serving_record import Request, ServingResult
from perf.report.report import serving_table

RESULT = ServingResult(
    "batches",
    (Request("batch 1", 2.0, 0, 1.0, 0, 1, 20.1), Request("batch 4", 9.0, 1, 3.0, 0, 4, 22.5),
     Request("set_adapters resident_0", 0.01, 1, 0.002, 0, images=0)),
    figures={"budget_gib": 24.0}, expected_recompiles=2, finding="batches: 2 graph(s) compiled by the first requests",
)


def test_a_serving_result_round_trips_through_the_record_json():
    record = example_record("rtx4090_optimized", serving={"batches": RESULT})
    assert from_json(to_json(record)).serving == {"batches": RESULT}
    assert from_json(to_json(dataclasses.replace(record, serving={}))).serving == {}


def test_figures_derived_from_a_serving_result():
    assert (RESULT.warmup_recompiles, RESULT.steady_recompiles) == (2, 0)
    assert RESULT.requests[1].images_per_minute == 80.0
    assert RESULT.requests[2].images_per_minute is None  # a switch makes no image
    assert RESULT.worst_error is None


def test_serving_table_lists_every_request_and_the_findings():
    table = serving_table({"rtx4090_optimized": example_record("rtx4090_optimized", serving={"batches": RESULT})})
    assert "| rtx4090_optimized | batches | batch 4 | 9.000 | 1 | 3.000 | 0 | 80.0 | 22.5 |" in table
    assert "| rtx4090_optimized | batches | set_adapters resident_0 | 0.010 | 1 | 0.002 | 0 | - | - |" in table
    assert table.endswith("- rtx4090_optimized: batches: 2 graph(s) compiled by the first requests")
    assert "No serving scenarios" in serving_table({"baseline": example_record("baseline")})
