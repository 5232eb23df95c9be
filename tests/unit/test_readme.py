"""The README is a user's guide that stays true: its results tables are the ones ``perf.report`` makes from the
stored records, its test command is the one CI runs, and every command it shows names options that exist."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from perf.judge.baseline_files import read_records
from perf.report.report import readme_table, replace_block, serving_table

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
COMMANDS = [line for block in re.findall(r"```bash\n(.*?)```", README, re.S) for line in block.splitlines() if line]


@pytest.mark.parametrize("profile", ["h100", "rtx4090"])
def test_results_tables_are_generated_from_the_stored_records(profile):
    records, _ = read_records(ROOT / "baselines", profile)
    assert replace_block(README, f"results:{profile}", readme_table(records)) == README, (
        f"README's {profile} table is stale: python -m perf.report baselines/{profile} --readme README.md"
    )


@pytest.mark.parametrize("profile", sorted(set(re.findall(r"<!-- serving:(\w+):start -->", README))))
def test_serving_tables_are_generated_from_the_stored_records(profile):
    """From the baselines and the ``--serving-records`` folders the README's command for that profile names (GPU
    runs record the scenarios in parts)."""
    named = re.search(rf"python -m perf\.report (\S+/{profile}) --readme README\.md((?: --serving-records [^\s`]+)*)",
                      README)
    first = Path(named.group(1)) if named else Path("baselines") / profile
    folders = [Path(f) for f in (named.group(2).split()[1::2] if named else [])]
    records = [r for folder in [first, *folders]
               for r in read_records(ROOT / folder.parent, folder.name)[0].values() if r.profile == profile]
    command = named.group(0) if named else f"python -m perf.report baselines/{profile} --readme README.md"
    assert replace_block(README, f"serving:{profile}", serving_table(records, profile)) == README, (
        f"README's {profile} serving table is stale: {command}"
    )


def test_the_test_command_is_what_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text()
    command = next(c for c in COMMANDS if c.endswith("&& pytest"))
    assert "pip install -c constraints/known-good.txt -e '.[dev]'" in command
    assert "python -m pip install --quiet -c constraints/known-good.txt -e '.[dev]'" in ci
    assert re.search(r'^pytest "\$@"', ci, re.M)


def test_every_command_names_options_that_exist():
    """``python -m perf.X ARGS`` and ``pytest ARGS``: the module exists and every --option is one its --help lists."""
    pytest_help = subprocess.run([sys.executable, "-m", "pytest", "--help"], cwd=ROOT, capture_output=True,
                                 text=True, timeout=120).stdout
    for command in COMMANDS:
        words = shlex.split(command.split("&&")[-1])
        if words[0] == "pytest":
            helptext = pytest_help
        elif words[:2] == ["python", "-m"]:
            done = subprocess.run([sys.executable, "-m", words[2], "--help"], cwd=ROOT, capture_output=True,
                                  text=True, timeout=120)
            assert done.returncode == 0, f"{command}: {done.stderr[-500:]}"
            helptext = done.stdout
        else:
            pytest.fail(f"the README shows a command this test does not know how to check: {command}")
        for option in (w.split("=")[0] for w in words if w.startswith("--")):
            assert re.search(rf"{re.escape(option)}\b", helptext), f"{command}: {words[0]} has no {option}"
