#!/usr/bin/env bash
# The one prepared GPU call: environment, correctness and timings of every GPU check, in one go.
# Run from the repository root on the device machine:  bash bench/gpu_run.sh "$OUT"
# Each stage has its own time limit and failures do not stop later stages; everything lands in
# OUTDIR (the device tool returns at most 8 files, so the logs are bundled into one archive).
# Stage limits add up to 580 s, under the device tool's 600 s per command. SCC_FAST_GPU_STAGES
# picks stages by name (default: all but stage1, which must be named: with it they add up to 685 s), e.g. "triton2d hybrid3d profile tune" for a shorter call.
set -u
STAGES=" ${SCC_FAST_GPU_STAGES:-triton2d hybrid3d reliability profile tune suite} "
OUTDIR=${1:-gpu_out}
mkdir -p "$OUTDIR/work"
W=$OUTDIR/work
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 SCC_FAST_SKIP_NATIVE=1
{
  # .git_commit first: the device copy may carry a stale .git (GPU runs 4 and 5).
  date -u; if [ -s .git_commit ]; then echo "commit $(cat .git_commit) (.git_commit)"; else git log -1 --format='commit %H %s' 2>/dev/null; fi
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv
  python3 -c 'import torch, triton; print("torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__, torch.cuda.get_device_name())'
} > "$W/env.txt" 2>&1
cat "$W/env.txt"

stage() {  # stage NAME SECONDS CMD...
  local name=$1 secs=$2; shift 2
  [[ $STAGES == *" $name "* ]] || return 0
  echo "=== $name (limit ${secs}s)"
  local t0=$(date +%s)
  timeout "$secs" "$@" > "$W/$name.log" 2>&1
  local rc=$?
  echo "=== $name rc=$rc in $(( $(date +%s) - t0 ))s"
  tail -n 40 "$W/$name.log"
}

[ -f bench/gpu_triton_check.py ] && stage triton2d 165 python3 bench/gpu_triton_check.py --out "$W/triton2d"
[ -f bench/gpu_3d_check.py ] && stage hybrid3d 175 python3 bench/gpu_3d_check.py --out "$W/hybrid3d" --budget 165
[ -f bench/gpu_reliability_check.py ] && stage reliability 45 python3 bench/gpu_reliability_check.py --out "$W/reliability"
# After the checks above, so the Triton kernels are compiled and cached: where each step's time goes.
[ -f bench/gpu_profile.py ] && stage profile 55 python3 bench/gpu_profile.py --out "$W/profile" --budget 40
# triton_fft's first kernel under other tiles and warps (its device time from the profiler).
[ -f bench/gpu_stage1_tune.py ] && stage stage1 105 python3 bench/gpu_stage1_tune.py --out "$W/stage1" --budget 90
# Tile configurations and programs per SM of backend triton (fused and split 2D), default first.
[ -f bench/gpu_tune.py ] && stage tune 70 python3 bench/gpu_tune.py --out "$W/tune" --budget 55
[ -f bench/gpu_bench.sh ] && stage suite 70 bash bench/gpu_bench.sh "$W/suite" 50

tar -czf "$OUTDIR/gpu_results.tgz" -C "$OUTDIR" work
ls -la "$OUTDIR"
