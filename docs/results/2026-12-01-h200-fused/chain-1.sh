# The first call's chain (the tree of baf1e85, whose code is afcb197's): the fused kernel's GPU tests, the suite with baseline beside both fused
# rows, the step profiles of both fused rows (the static row's images against the fused row's), the block screen.
python3 -m pytest tests/unit/test_fused_fp8.py -p no:cacheprovider -rA -k 'launch_shape or on_the_gpu'
echo rc=$?; date
python3 -m pytest tests/perf -m h200 --no-cold-start --no-churn --no-serving -p no:cacheprovider -rA \
  --recipes baseline,optimized_fast_merged_fused_static_qk,optimized_fast_merged_fused --results-dir /tmp/res/p0
echo rc=$?; date
python3 -m perf.tools.profile_step --recipe optimized_fast_merged_fused \
  --recipe optimized_fast_merged_fused_static_qk --out /tmp/res/profile
echo rc=$?; date
python3 -m perf.tools.block_profile --rank 0 --repeats 20 --out /tmp/res/blocks --variants fp8,fp8_fused
echo rc=$?; date; touch /tmp/res/done
