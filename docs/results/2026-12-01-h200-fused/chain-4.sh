# Third session's second machine: the best row's images with the GPU's clock sampled while each runs (every 50 ms,
# nvidia-smi's loop), to say whether the clock is why the pool's adapters are 10% apart.
#   bash docs/results/2026-12-01-h200-fused/plan.sh start 540 docs/results/2026-12-01-h200-fused/chain-4.sh COMMIT
python3 -m perf.tools.profile_step --recipe optimized_fast_merged_fused_static_qk --out /tmp/res/profile
echo rc=$?; date; touch /tmp/res/done
