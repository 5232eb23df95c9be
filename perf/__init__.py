"""flux-lora-perf: a performance regression gate for fast LoRA hot-swap inference on FLUX.1-dev.

Where things are (data flows down this list; judge and report import no torch):

- ``spec/``   what a run is: hardware profiles, recipes (pure data), model sources, the LoRA pool, generation
  settings, the ``RunSpec``, input validation, the cache folder of generated inputs.
- ``build/``  ``build_pipeline(spec, recipe)``, the one place a recipe is applied: attention kernels, FP8,
  compile settings.
- ``run/``    what a run measures: the case (one recipe's run: scenario, swap checks, timing, quality, memory), the
  scenario, swap probe, churn, cold start and its child process, compile watchers and timeout; ``recording``
  builds the record.
- ``judge/``  the typed record (``record.py``: frozen dataclasses, validated JSON), baseline files, the verdict
  (``python -m perf.judge.compare``), tolerances, calibration, pytest-benchmark's storage.
- ``report/`` ``python -m perf.report``: markdown, README tables and plots from records.
- ``tools/``  diagnostics run by hand: ``profile_step``, ``block_profile``, ``fullgraph_probe``, ``attention_check``.
- ``plugin.py`` the pytest face (options, hooks) over ``session.py``, the session object that owns the run's state,
  its verdict and summary; ``workers.py`` spreads recipes over GPUs with pytest-xdist.
"""
