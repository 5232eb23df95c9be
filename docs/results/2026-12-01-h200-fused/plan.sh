#!/usr/bin/env bash
# This session's plan (issue 25) on one nvidia-h200 (no two-GPU machine lent), as device-tool calls:
#   first call:  bash docs/results/2026-12-01-h200-fused/plan.sh start 540 CHAIN COMMIT   carry [".whl/dep"]
#   later calls: bash docs/results/2026-12-01-h200-fused/plan.sh poll 560    (timeout 600)
# .whl/dep: diffusers 0.42.1, torchao 0.17.0, fa3-fwd 0.0.3, importlib_metadata, pydantic, pydantic-core,
# annotated-types, typing-inspection, typing_extensions (pip download --no-deps, Python 3.12, manylinux x86_64).
# One chain under setsid (a process a call leaves running dies with the call otherwise), polled into $OUT/res.tgz
# every 20 s. CHAIN: the commands (chain-1.sh, then chain-2.sh with the kernel's cheaper GELU), relative to the
# tree's root. COMMIT: this tree's commit, for the records (the device's copy of .git may be older: the first call's
# records name afcb197, the tree was baf1e85's, the same code).
set -u
mode=${1:?start or poll}; wait_s=${2:-540}; chain=${3:-}; export FLUX_LORA_PERF_COMMIT=${4:-}
if [[ $mode == start ]]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/dep/*.whl || exit 1
  rm -rf /tmp/tree && cp -a . /tmp/tree && cd /tmp/tree || exit 1
  [[ -f $chain ]] || exit 1
  export PYTHONPATH=/tmp/site:/tmp/tree TRITON_PRINT_AUTOTUNING=1
  mkdir -p /tmp/res
  python3 -c "import perf.judge.record, diffusers, torchao, fa3_fwd_interface" || exit 1
  { git log -1 --format=%h 2>/dev/null; date; nvidia-smi; } > /tmp/res/machine.txt 2>&1
  setsid nohup bash "$chain" > /tmp/res/gpu.log 2>&1 < /dev/null &
  sleep 5
fi
end=$((SECONDS + wait_s))
pack() { tar czf "$OUT/res.tgz" -C /tmp res 2>/dev/null; }
trap 'pack; exit 0' TERM INT
while (( SECONDS < end )); do
  [[ -e /tmp/res/done ]] && break
  sleep 20; pack
done
pack
grep -v -E "Warning|warn|CLIPText|originates|is_torch_version|^$" /tmp/res/gpu.log | tail -25
nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv
