"""The paired latency verdict on recorded H200 images of one unchanged row (``optimized_fast_merged``: two
profile_step runs on one machine, 2026-11-30, and one on another, 2026-12-01): every pair of runs, every choice of
one image per adapter (peft_all, kohya, xlabs) on each side, as a benchmark's three rotated rounds; then the
candidate side made slower. From the repository root: python docs/results/2026-12-01-h200-fused/paired_verdict_aa.py"""

import itertools
import json
from pathlib import Path

import numpy as np

from perf.judge.compare import LATENCY_THRESHOLD, classify_interval, median_ratio_interval, paired_ratio_interval

FILES = ["docs/results/2026-11-30-h200-merged/profile-1/profile-optimized_fast_merged.json",
         "docs/results/2026-11-30-h200-merged/profile-2/profile-optimized_fast_merged.json",
         "docs/results/2026-12-01-h200/profile/profile-optimized_fast_merged.json"]
POOL = ["peft_all", "kohya", "xlabs"]

runs = [json.loads(Path(path).read_text())["image"]["per_adapter_s"] for path in FILES]
for slowdown in (0.0, 0.03, 0.05, 0.07, 0.10):
    for name, interval in (("paired", paired_ratio_interval), ("unpaired", median_ratio_interval)):
        outcomes = [str(classify_interval(interval(np.array([a[p][i] for p in POOL]),
                                                   np.array([b[p][j] for p in POOL]) * (1 + slowdown)),
                                          LATENCY_THRESHOLD))
                    for a, b in itertools.combinations(runs, 2) for i in range(3) for j in range(3)]
        print(f"{slowdown:.0%} slower, {name}: {outcomes.count('regressed')} of {len(outcomes)} flagged")
