# Third session's third machine: baseline and the best row once more on a fresh H200 (the row's time between
# machines: 2.367 s and 2.391 s so far), the checks of the scenario; churn and cold start were run in call-3.
#   bash docs/results/2026-12-01-h200-fused/plan.sh start 440 docs/results/2026-12-01-h200-fused/chain-5.sh COMMIT
python3 -m pytest tests/perf -m h200 --no-serving --no-churn --no-cold-start -p no:cacheprovider -rA \
  --recipes baseline,optimized_fast_merged_fused_static_qk --results-dir /tmp/res/p0
echo rc=$?; date; touch /tmp/res/done
