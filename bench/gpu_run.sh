#!/usr/bin/env bash
# The one prepared GPU call: environment, correctness and timings of every GPU check, in one go,
# each stage a mode of the harness (`scc-fast bench MODE`; `scc-fast bench --help` lists them).
# Run from the repository root on the device machine:  bash bench/gpu_run.sh "$OUT"
# Each stage has its own time limit and failures do not stop later stages; everything lands in
# OUTDIR (the device tool returns at most 8 files, so the logs are bundled into one archive).
# Stage limits add up to 580 s, under the device tool's 600 s per command. SCC_FAST_GPU_STAGES
# picks stages by name (default: all but stage1, which must be named: with it they add up to 685 s),
# e.g. "triton2d hybrid3d profile tune" for a shorter call.
# Stage suite is the benchmark suite at full size: cases, memory timeline, scaling, splitting
# SCC_BENCH_SECONDS (default 50) 60/12/28 between them; each stops starting rows when its share is
# used up (those rows are reported as not run) and is killed a little after. It writes its JSON
# and Markdown as it goes; rebuild its tables and plots anywhere with
#   scc-fast bench --report-only --out OUTDIR/work/suite
# SCC_BENCH_DEVICE=cpu and SCC_BENCH_ARGS (extra arguments for every suite step) dry-run the suite
# on a machine without a GPU.
set -u
STAGES=" ${SCC_FAST_GPU_STAGES:-triton2d hybrid3d reliability profile tune suite} "
OUTDIR=${1:-gpu_out}
mkdir -p "$OUTDIR/work"
W=$OUTDIR/work
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 SCC_FAST_SKIP_NATIVE=1 MPLBACKEND=Agg
BENCH="python3 -m scc_fast.cli bench"
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
  local t0=$(date +%s) rc
  if declare -F "$1" > /dev/null; then  # a function of this file (suite): its steps have their own limits
    "$@" > "$W/$name.log" 2>&1; rc=$?
  else
    timeout --kill-after=5 "$secs" "$@" > "$W/$name.log" 2>&1; rc=$?
  fi
  echo "=== $name rc=$rc in $(( $(date +%s) - t0 ))s"
  tail -n 40 "$W/$name.log"
}

suite() {  # the benchmark suite's three steps within SECONDS (the stage's own limit is a little more)
  local total=$1 out=$W/suite device=${SCC_BENCH_DEVICE:-cuda}
  mkdir -p "$out"
  python3 -m scc_fast.cli backends > "$out/backends.txt" 2>&1; cat "$out/backends.txt"
  step() {  # step NAME SHARE_PERCENT ARGS...
    local name=$1 share=$2; shift 2
    local secs=$(( total * share / 100 ))
    local budget=$(( secs * 70 / 100 ))  # rows start until 70% of the share; the rest is for the last row
    echo "=== bench $name: budget ${budget}s, limit ${secs}s"
    # shellcheck disable=SC2086
    ( unset TRITON_INTERPRET SCC_FAST_BACKEND; timeout --kill-after=5 "$secs" $BENCH "$name" --device "$device" \
        --out "$out" --time-budget "$budget" "$@" ${SCC_BENCH_ARGS:-} ) > "$out/$name.log" 2>&1
    echo "=== bench $name rc=$?"
    tail -n 30 "$out/$name.log"
  }
  step cases 60 --repeats 20 --warmup 3
  step timeline 12 --cases synapse-2d
  step scaling 28 --repeats 10 --warmup 3
  # If a step was killed its plots may be missing: rebuild every table and plot from the JSON.
  timeout 30 $BENCH --report-only --out "$out" > /dev/null 2>&1
  ls -la "$out"
}

stage triton2d 165 $BENCH gpu-check --out "$W/triton2d"
stage hybrid3d 175 $BENCH gpu-3d --out "$W/hybrid3d" --budget 165
stage reliability 45 $BENCH reliability --out "$W/reliability"
# After the checks above, so the Triton kernels are compiled and cached: where each step's time goes.
stage profile 55 $BENCH profile --out "$W/profile" --budget 40
# triton_fft's first kernel under other tiles and warps (its device time from the profiler).
stage stage1 105 $BENCH stage1-tune --out "$W/stage1" --budget 90
# Tile configurations and programs per SM of backend triton (fused and split 2D), default first.
stage tune 70 $BENCH tune --out "$W/tune" --budget 55
stage suite 70 suite "${SCC_BENCH_SECONDS:-50}"

tar -czf "$OUTDIR/gpu_results.tgz" -C "$OUTDIR" work
ls -la "$OUTDIR"
