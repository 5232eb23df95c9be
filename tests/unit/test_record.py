"""The typed record, specified: every record stored under ``baselines/`` reads (schema 1 upgraded, every number
unchanged); a record is validated field by field as data, and one that fails names the field, as an error row of
the verdict; what is written can be read back; judging a record needs no torch."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from fake_records import example_record

from perf.judge.baseline_files import read_record, record_path, write_record
from perf.judge.compare import compare_folders
from perf.judge.record import (
    SCHEMA_VERSION,
    AttentionChoice,
    Latency,
    RecordError,
    from_data,
    from_json,
    to_data,
    to_json,
)

ROOT = Path(__file__).resolve().parents[2]
STORED = sorted(p for pattern in ("*/*.json", "*/calibration/runs/*/*/*.json", "*/reruns/*.json")
                for p in (ROOT / "baselines").glob(pattern))


def numbers(value, path: str = "") -> dict[str, float]:
    """Every number in a JSON value by its path (bools are not numbers)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return {}
    if isinstance(value, int | float):
        return {path: float(value)}
    items = value.items() if isinstance(value, dict) else enumerate(value)
    return {p: n for key, item in items for p, n in numbers(item, f"{path}/{key}").items()}


@pytest.mark.parametrize("path", STORED, ids=lambda p: str(p.relative_to(ROOT / "baselines")))
def test_every_stored_record_reads_with_every_number_unchanged(path):
    """A/A for the validator: the stored records (schema 1, written by earlier versions of the suite) are valid
    data, and reading them keeps every figure (only the schema version and the checks' shape change)."""
    raw = json.loads(path.read_text())
    record = read_record(path)
    stored = {p: n for p, n in numbers(raw).items() if not p.startswith(("/checks/", "/schema"))}
    read = numbers(to_data(record))
    assert {p: read.get(p) for p in stored} == stored
    assert record.schema == SCHEMA_VERSION


def test_schema_1_checks_become_pytest_outcomes():
    data = {**to_data(example_record()), "schema": 1,
            "checks": {"zero_recompiles": {"passed": True}, "quality": {"passed": False, "stored_baseline": "x"},
                       "test_generation_latency": "skipped"}}
    assert from_data(data).checks == {"zero_recompiles": "passed", "quality": "failed",
                                      "test_generation_latency": "skipped"}


def test_a_record_reads_back_as_it_was_written(tmp_path):
    record = example_record(checks={"test_generation_latency": "passed"})
    assert from_json(to_json(record)) == record
    path = write_record(tmp_path, record, {})
    assert read_record(path) == record


def broken(change) -> dict:
    """The example record's JSON data with one defect written in by ``change``."""
    data = to_data(example_record())
    change(data)
    return data


DEFECTS = {
    "a sample that is text": (lambda d: d["latency"]["samples_s"].__setitem__(1, "1.004"),
                              r"latency\.samples_s\[1\]: Input should be a valid number"),
    "a negative sample": (lambda d: d["latency"]["samples_s"].__setitem__(0, -1.0),
                          r"latency\.samples_s\[0\]: Input should be greater than or equal to 0"),
    "rounds that do not match the samples": (lambda d: d["latency"].update(rounds=4),
                                             r"latency: Value error, rounds is 4 but there are 3 samples"),
    "a negative recompile count": (lambda d: d.update(recompiles_after_warmup=-1),
                                   r"recompiles_after_warmup: Input should be greater than or equal to 0"),
    "a count that is a float": (lambda d: d["compile"].update(warmup_graphs=1.5),
                                r"compile\.warmup_graphs: Input should be a valid integer"),
    "a bool that is a number": (lambda d: d.update(emulated=0), r"emulated: Input should be a valid boolean"),
    "a check outcome misspelt": (lambda d: d.update(checks={"test_x": "pased"}),
                                 r"checks\.test_x: Input should be 'passed', 'failed', 'skipped' or 'xfailed'"),
    "an unknown outcome": (lambda d: d.update(outcome="crashed"), r"outcome: Input should be 'completed'"),
    "a date that is not one": (lambda d: d.update(date="yesterday"), r"date: Value error"),
    "a key the schema lacks": (lambda d: d["peak_memory"].update(reserved=3.0),
                               r"peak_memory\.reserved: Unexpected keyword argument"),
    "a finding without its versions": (lambda d: d["lora_findings"][0].pop("versions"),
                                       r"lora_findings\[0\]\.versions: Field required"),
    "a missing section": (lambda d: d.pop("latency"), r"latency: Field required"),
    "a PSNR above its ceiling": (lambda d: d.update(quality={"clip": "synthetic", "clip_score": 30.0,
                                                             "psnr_vs_reference": 140.0}),
                                 r"quality\.psnr_vs_reference: Input should be less than or equal to 100"),
}


@pytest.mark.parametrize("defect", DEFECTS)
def test_one_wrong_field_is_refused_naming_the_field(defect):
    """Negative controls for the validator: each single-field defect is refused, and the message names it."""
    change, message = DEFECTS[defect]
    with pytest.raises(RecordError, match=message):
        from_data(broken(change))


def test_a_record_of_another_schema_says_which_versions_are_read():
    with pytest.raises(RecordError, match=r"schema version 3; this suite reads version 2 \(and upgrades 1 as it reads"):
        from_data({**to_data(example_record()), "schema": 3})


def test_an_invalid_record_is_never_written(tmp_path):
    """The write side validates too: a record built in code with a negative sample cannot reach the disk."""
    bad = example_record(latency=Latency((-1.0,), 1, -1.0, -1.0, -1.0, "suite"))
    with pytest.raises(RecordError, match=r"latency\.samples_s\[0\]"):
        write_record(tmp_path, bad)
    assert not record_path(tmp_path, "h100", "optimized").exists()


def test_an_invalid_baseline_is_an_error_row_naming_the_field_and_the_rest_is_judged(tmp_path):
    for recipe in ("baseline", "optimized"):
        write_record(tmp_path / "baselines", example_record(recipe))
        write_record(tmp_path / "results", example_record(recipe))
    stored = record_path(tmp_path / "baselines", "h100", "optimized")
    stored.write_text(json.dumps(broken(DEFECTS["a sample that is text"][0])))

    _, verdicts = compare_folders(tmp_path / "baselines", tmp_path / "results", "h100")

    (error,) = [v for v in verdicts if v.verdict == "error"]
    assert error.recipe == "optimized"
    assert "latency.samples_s[1]: Input should be a valid number" in error.reason
    assert {v.verdict for v in verdicts if v.recipe == "baseline"} == {"ok"}


def test_a_kernel_that_failed_its_check_is_kept_as_nan(tmp_path):
    """``perf.build.attention.fastest_correct`` records a backend that failed its numerical check as NaN."""
    record = example_record(attention=AttentionChoice("native", "native SDPA", {"native": 0.1},
                                                      {"native": 0.001, "_native_cudnn": float("nan")}))
    read = read_record(write_record(tmp_path, record))
    assert math.isnan(read.attention.rel_errors["_native_cudnn"])


def test_records_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        example_record().outcome = "out_of_memory"


BLOCK_TORCH = """
import sys
sys.modules["torch"] = None  # any import of torch now fails
import perf.judge.compare, perf.judge.calibrate, perf.judge.record, perf.report.report
print("ok")
"""


def test_judging_and_reporting_import_no_torch():
    done = subprocess.run([sys.executable, "-c", BLOCK_TORCH], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]

