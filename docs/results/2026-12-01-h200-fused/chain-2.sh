# The second call's chain: the kernel's GELU as m * sigmoid(2u) with the hardware's exp2 and reciprocal. Its GPU
# tests (with Inductor's compiled torchao quantization as the A/A figure), the suite with baseline beside the
# static-q/k fused row, that row's step profile, the block screen.
python3 -m pytest tests/unit/test_fused_fp8.py -p no:cacheprovider -rA -k 'launch_shape or on_the_gpu'
echo rc=$?; date
python3 -m pytest tests/perf -m h200 --no-cold-start --no-churn --no-serving -p no:cacheprovider -rA \
  --recipes baseline,optimized_fast_merged_fused_static_qk --results-dir /tmp/res/p0
echo rc=$?; date
python3 -m perf.tools.profile_step --recipe optimized_fast_merged_fused_static_qk --out /tmp/res/profile
echo rc=$?; date
python3 -m perf.tools.block_profile --rank 0 --repeats 20 --out /tmp/res/blocks --variants fp8,fp8_fused
echo rc=$?; date; touch /tmp/res/done
