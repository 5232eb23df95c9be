# The next session's chain (issue 25's last item): the fastest row's churn (20 swaps over 6 more adapters, 0
# recompiles, the last adapter's swap check) and cold start, which this session left out for device time
# (--no-churn --no-cold-start), with baseline beside it again; then its step profile on that machine.
#   bash docs/results/2026-12-01-h200-fused/plan.sh start 540 docs/results/2026-12-01-h200-fused/chain-3.sh COMMIT
python3 -m pytest tests/unit/test_fused_fp8.py -p no:cacheprovider -rA -k 'launch_shape or on_the_gpu'
echo rc=$?; date
python3 -m pytest tests/perf -m h200 --no-serving -p no:cacheprovider -rA \
  --recipes baseline,optimized_fast_merged_fused_static_qk --results-dir /tmp/res/p0
echo rc=$?; date
python3 -m perf.tools.profile_step --recipe optimized_fast_merged_fused_static_qk --out /tmp/res/profile
echo rc=$?; date; touch /tmp/res/done
