"""The serving scenarios' figures survive the record's JSON as typed sections, a wrong one is refused naming its
field, and the README's serving table is made from them alone, findings included (no torch: judging and reporting
import none)."""

import dataclasses
import json

import pytest
from fake_records import example_record

from perf.judge.baseline_files import write_record
from perf.judge.record import RecordError, from_json, to_json
from perf.judge.serving_record import (
    BareStateDict,
    BatchFigures,
    BatchFit,
    NamedFigures,
    Request,
    ResidentFigures,
    ServingResult,
)
from perf.report.report import main as report_main
from perf.report.report import serving_table

BATCHES = ServingResult(
    "batches",
    (Request("batch 1", 2.0, 0, 1.0, 0, 1, 20.1), Request("batch 4", 9.0, 1, 3.0, 0, 4, 22.5)),
    expected_recompiles=1, finding="batches: 1 graph(s) compiled by the first requests",
    batches=BatchFigures(24.0, BatchFit(4, {"1": 20.1, "4": 22.5, "8": "out of memory"})),
)
RESIDENT = ServingResult(
    "resident",
    (Request("hot-swap from memory", 0.01, 0, 0.002, 0, images=0),),
    errors={"A->B->A->B from memory": 0.0}, controls={"A->B->A from memory, last swap to B not made": 0.9},
    resident=ResidentFigures(("peft_all", "kohya"), {}, 0.1, 0.2,
                             BareStateDict(None, "peft_all: ValueError: Configs are incompatible", True, False)),
)


def test_a_serving_result_round_trips_through_the_record_json():
    record = example_record("rtx4090_optimized", serving={"batches": BATCHES, "resident": RESIDENT})
    assert from_json(to_json(record)).serving == {"batches": BATCHES, "resident": RESIDENT}
    assert from_json(to_json(dataclasses.replace(record, serving={}))).serving == {}


@pytest.mark.parametrize(("path", "value", "field"), [
    (("serving", "batches", "requests", 0, "first_recompiles"), -1, "first_recompiles"),
    (("serving", "batches", "scenario"), "lunch", "scenario"),
    (("serving", "resident", "resident", "bare_state_dict", "slot_deleted"), "yes", "slot_deleted"),
])
def test_a_serving_section_that_fails_its_schema_is_refused_naming_the_field(path, value, field):
    data = json.loads(to_json(example_record("optimized", serving={"batches": BATCHES, "resident": RESIDENT})))
    where = data
    for part in path[:-1]:
        where = where[part]
    where[path[-1]] = value
    with pytest.raises(RecordError, match=field):
        from_json(json.dumps(data))


def test_figures_derived_from_a_serving_result():
    assert (BATCHES.warmup_recompiles, BATCHES.steady_recompiles) == (1, 0)
    assert BATCHES.requests[1].images_per_minute == 80.0
    assert RESIDENT.requests[0].images_per_minute is None  # a switch makes no image
    assert BATCHES.worst_error is None
    assert RESIDENT.worst_error == 0.0


def test_serving_table_lists_every_request_and_the_findings():
    table = serving_table([example_record("rtx4090_optimized", serving={"batches": BATCHES, "resident": RESIDENT})],
                          "rtx4090")
    assert "| rtx4090_optimized | batches | batch 4 | 9.000 | 1 | 3.000 | 0 | 80.0 | 22.5 |  |  |" in table
    assert ("| rtx4090_optimized | resident | hot-swap from memory | 0.010 | 0 | 0.002 | 0 | - | - | 0.0000 "
            "(tolerance 0.0050) | 2026-11-24 0997180 |") in table
    assert "\n- rtx4090_optimized: batches: 1 graph(s) compiled by the first requests\n" in table


def test_serving_table_takes_each_scenario_from_the_newest_record_holding_it():
    """A GPU run records the scenarios it finished before its time limit, a later run the others (and may record
    one again): the table shows each recipe's each scenario once, from the newest record, named in its row."""
    older = example_record("optimized", serving={"batches": BATCHES, "resident": RESIDENT})
    newer = dataclasses.replace(example_record("optimized", serving={"resident": RESIDENT}),
                                date="2026-12-01T07:00:00+00:00", commit="abc1234")
    table = serving_table([newer, older], "h200")
    assert table.count("| optimized | resident |") == 1 and table.count("| optimized | batches |") == 2
    assert "| 2026-12-01 abc1234 |" in table.split("| optimized | resident |")[1].splitlines()[0]
    assert "| 2026-11-24 0997180 |" in table.split("| optimized | batches | batch 1 |")[1].splitlines()[0]


def test_serving_table_says_so_when_no_record_has_serving_scenarios():
    assert serving_table([example_record("baseline")], "h200").startswith(
        "No h200 record holds the serving scenarios yet")


def test_the_readme_serving_block_joins_the_serving_runs_named(tmp_path, capsys):
    """``python -m perf.report baselines/<profile> --readme README.md --serving-records DIR ...``: the baselines'
    scenarios and those of each folder named, the newest of each; ``--serving-records`` alone is a user's mistake."""
    write_record(tmp_path / "baselines", example_record("optimized"))
    write_record(tmp_path / "part1", example_record("optimized", serving={"batches": BATCHES}))
    write_record(tmp_path / "part2", dataclasses.replace(example_record("optimized", serving={"resident": RESIDENT}),
                                                         date="2026-12-01T07:00:00+00:00", commit="abc1234"))
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- serving:h100:start -->\nold\n<!-- serving:h100:end -->\n")
    parts = [arg for part in ("part1", "part2") for arg in ("--serving-records", str(tmp_path / part / "h100"))]
    assert report_main([str(tmp_path / "baselines" / "h100"), "--readme", str(readme), *parts]) == 0
    text = readme.read_text()
    assert "| optimized | batches | batch 4 |" in text and "| optimized | resident | hot-swap from memory |" in text
    assert "old" not in text and "| 2026-12-01 abc1234 |" in text
    assert report_main([str(tmp_path / "baselines" / "h100"), *parts[:2]]) == 2
    assert capsys.readouterr().err.strip().endswith("give --readme too; nothing written")
    write_record(tmp_path / "other", dataclasses.replace(example_record("optimized"), profile="h200"))
    assert report_main([str(tmp_path / "baselines" / "h100"), "--readme", str(readme),
                        "--serving-records", str(tmp_path / "other" / "h200")]) == 2  # a folder of another profile
    assert "no h100 record in it" in capsys.readouterr().err


def test_a_scenario_that_failed_is_a_row_and_a_finding():
    failed = ServingResult("two", (), failure="RuntimeError: boom",
                           finding="two: failed with RuntimeError: boom [torch 2.11.0]")
    table = serving_table([example_record("optimized", serving={"two": failed})], "h200")
    assert "| optimized | two | failed: RuntimeError: boom | - | - | - | - | - | - | - | 2026-11-24 0997180 |" in table
    assert table.endswith("- optimized: two: failed with RuntimeError: boom [torch 2.11.0]")


def test_a_named_switch_row_says_what_its_first_step_took():
    """A switch to a named adapter takes milliseconds; the graph it makes the transformer compile is paid in the
    step after it, which the row names (a switch never made a first step of: the label alone)."""
    named = NamedFigures(("resident_0", "resident_1"), ("resident_0", "resident_1"), 8, 65.0, 0, 180.0, 1, (1,),
                         {"resident_0": 163.6}, stopped_after=1)
    result = ServingResult("named", (Request("set_adapters resident_0 (peft_all)", 0.04, 1, 0.05, 0, images=0),
                                     Request("set_adapters resident_1 (kohya)", 0.04, 0, 0.05, 0, images=0)),
                           expected_recompiles=1, named=named)
    table = serving_table([example_record("optimized", serving={"named": result})], "h200")
    assert "| set_adapters resident_0 (peft_all), first step 163.6 s | 0.040 | 1 |" in table
    assert "| set_adapters resident_1 (kohya) | 0.040 | 0 |" in table


def test_the_table_says_which_batch_fits_the_consumer_cards_budget():
    table = serving_table([example_record("rtx4090_optimized", serving={"batches": BATCHES})], "rtx4090")
    assert table.endswith("- rtx4090_optimized: batches: the largest batch within 24 GiB is 4 "
                          "(peaks 1: 20.10 GiB, 4: 22.50 GiB, 8: out of memory)")
