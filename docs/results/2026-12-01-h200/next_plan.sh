#!/usr/bin/env bash
# The next GPU session's plan (issue 25) on nvidia-h200-x2, as device-tool calls:
#   first call:  bash docs/results/2026-12-01-h200/next_plan.sh start 540   carry [".whl/dep"]
#   later calls: bash docs/results/2026-12-01-h200/next_plan.sh poll 560    (timeout 600)
# .whl/dep: diffusers 0.42.1, torchao 0.17.0, fa3-fwd 0.0.3, importlib_metadata, pydantic, pydantic-core,
# annotated-types, typing-inspection, typing_extensions (pip download --no-deps, Python 3.12, manylinux x86_64).
# The chains run under setsid: a process a call leaves running is killed when the call returns unless it started
# its own session (2026-11-30: two chains started with plain nohup died with their call). Each polls /tmp/res into
# $OUT/res.tgz every 20 s, so a call cut off at its limit still brings back what was written.
# GPU0 runs the suite: baseline beside the merged row and its fused siblings, for the ratio (the stack check's
# INTERNALERROR of 2026-12-01 fixed in b3565b6). GPU1 holds every launch shape of the fused kernel to torchao's
# bytes (its GPU tests), screens them on two blocks (TRITON_PRINT_AUTOTUNING names the one chosen), then profiles
# the merged row, the fused row and the fused row with static q/k scales on one machine (each later row's images
# against the merged row's: its quality).
set -u
mode=${1:?start or poll}; wait_s=${2:-540}
if [[ $mode == start ]]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/dep/*.whl || exit 1
  rm -rf /tmp/tree && cp -a . /tmp/tree && cd /tmp/tree || exit 1
  export PYTHONPATH=/tmp/site:/tmp/tree
  mkdir -p /tmp/res
  python3 -c "import perf.judge.record, diffusers, torchao, fa3_fwd_interface" || exit 1
  { git log -1 --format=%h 2>/dev/null; date; nvidia-smi; } > /tmp/res/machine.txt 2>&1
  opts="--no-cold-start --no-churn -p no:cacheprovider -rA"
  setsid nohup bash -c "export CUDA_VISIBLE_DEVICES=0
    python3 -m pytest tests/perf -m h200 $opts --no-serving \
      --recipes baseline,optimized_fast_merged,optimized_fast_merged_fused,optimized_fast_merged_fused_static_qk \
      --results-dir /tmp/res/p0; echo rc=\$?; date; touch /tmp/res/done0" \
    > /tmp/res/gpu0.log 2>&1 < /dev/null &
  setsid nohup bash -c "export CUDA_VISIBLE_DEVICES=1 TRITON_PRINT_AUTOTUNING=1
    python3 -m pytest tests/unit/test_fused_fp8.py -p no:cacheprovider -rA -k 'launch_shape or on_the_gpu'
    echo rc=\$?
    python3 -m perf.tools.block_profile --rank 0 --repeats 20 --out /tmp/res/blocks --variants fp8,fp8_fused
    echo rc=\$?; date
    python3 -m perf.tools.profile_step --recipe optimized_fast_merged --recipe optimized_fast_merged_fused \
      --recipe optimized_fast_merged_fused_static_qk --out /tmp/res/profile; echo rc=\$?; date; touch /tmp/res/done1" \
    > /tmp/res/gpu1.log 2>&1 < /dev/null &
  sleep 5
fi
end=$((SECONDS + wait_s))
pack() { tar czf "$OUT/res.tgz" -C /tmp res 2>/dev/null; }
trap 'pack; exit 0' TERM INT
while (( SECONDS < end )); do
  [[ -e /tmp/res/done0 && -e /tmp/res/done1 ]] && break
  sleep 20; pack
done
pack
for log in /tmp/res/gpu0.log /tmp/res/gpu1.log; do
  echo "== $log"; grep -v -E "Warning|warn|CLIPText|originates|is_torch_version|^$" "$log" | tail -15
done
nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv
