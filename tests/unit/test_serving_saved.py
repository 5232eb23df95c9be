"""A serving scenario's record is written to the results folder the moment the scenario ends: on a GPU each one
compiles for minutes, and a job cut off at its time limit must keep every scenario it finished. Each scenario's
tests keep their own outcomes in the record's ``checks``."""

from types import SimpleNamespace

from perf.session import PerfSession, check_name


class ServedCase:
    """A case whose scenarios end at once, and which remembers what each save held."""

    def __init__(self):
        self.serving_results: dict[str, str] = {}
        self.saved: list[tuple[object, dict]] = []

    def serving(self, scenario, resident, progress):
        self.serving_results.setdefault(scenario, f"{scenario} result")
        return self.serving_results[scenario]

    def save(self, results_dir, baselines_dir, overwrite_foreign):
        self.saved.append((results_dir, dict(self.serving_results)))


def test_each_scenario_is_saved_once_as_soon_as_it_ends(tmp_path, monkeypatch):
    monkeypatch.setattr(PerfSession, "resident_adapters", lambda self: [])
    session = PerfSession(SimpleNamespace(getoption={"--results-dir": str(tmp_path)}.get), active=None)
    case = ServedCase()
    assert session.serve(case, "scale") == "scale result"
    assert session.serve(case, "scale") == "scale result"  # asked again by the next test: already saved
    session.serve(case, "two")
    assert case.saved == [(tmp_path, {"scale": "scale result"}),
                          (tmp_path, {"scale": "scale result", "two": "two result"})]


def test_each_scenario_of_a_parametrized_check_keeps_its_own_outcome():
    """``checks`` keys a test by its function and its parameters other than the case: a scenario that failed is not
    overwritten by the next scenario's pass (it was, keyed by the function alone)."""
    def item(name: str, **params):
        return SimpleNamespace(name=f"{name}[cpu-no_fa3_fp8]", originalname=name,
                               callspec=SimpleNamespace(params={"case": ("cpu", "no_fa3_fp8"), **params}))

    assert check_name(item("test_x", scenario="scale")) == "test_x[scale]"
    assert check_name(item("test_x", scenario="named")) == "test_x[named]"
    assert check_name(item("test_y")) == "test_y"
    assert check_name(SimpleNamespace(name="test_z")) == "test_z"
