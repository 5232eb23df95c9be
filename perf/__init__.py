"""flux-lora-perf: a performance regression gate for fast LoRA hot-swap inference on FLUX.1-dev.

Where things are (data flows down this list; judge and report import no torch):

- ``spec/``   what a run is: hardware profiles, recipes (pure data), model sources, the LoRA pool, generation
  settings, the ``RunSpec``, input validation, the cache folder of generated inputs.
- ``build/``  ``build_pipeline(spec, recipe)``, the one place a recipe is applied: attention kernels, FP8,
  compile settings.
- ``run/``    what a run measures: the case (one recipe's run), the scenario, swap probe, churn, cold start and
  its child process, timing and memory, compile watchers and timeout, image quality, the record it writes.
- ``judge/``  baseline files, the verdict (``python -m perf.judge.compare``), tolerances, calibration,
  pytest-benchmark's storage.
- ``report/`` ``python -m perf.report``: markdown, README tables and plots from records.
- ``tools/``  diagnostics run by hand: ``profile_step``, ``fullgraph_probe``, ``attention_check``.
- ``plugin.py`` the pytest face; ``workers.py`` spreads recipes over GPUs with pytest-xdist.
"""
