"""Version gating on one machine: ``stacks`` (each side's library stack, overlaid on the machine's), ``upgrade``
(the gate: both suites, one verdict; ``python -m perf.gate``), ``bisect`` (which package did it). No torch here:
the gate drives suites in child processes and judges their records."""
