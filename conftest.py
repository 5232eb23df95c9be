"""Loads the suite's pytest plugin (options, markers, profile skips, fixtures) from the library."""

pytest_plugins = ["perf.plugin"]
