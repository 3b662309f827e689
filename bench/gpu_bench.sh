#!/usr/bin/env bash
# The full GPU benchmark suite in one go: benchmark cases at full size (every available backend, the
# reference eager and under torch.compile), the memory timeline, then the scaling study.
#
#   bash bench/gpu_bench.sh OUTDIR [TOTAL_SECONDS]        (from the repository root)
#
# TOTAL_SECONDS (default $SCC_BENCH_SECONDS, else 100) is split 60/12/28 between the three
# stages; each stage stops starting rows when its share is used up (those rows are reported as
# not run) and is killed a little after. Every stage writes its JSON and Markdown as it goes, so
# a killed stage still leaves its finished rows; rebuild the tables and plots anywhere with
#   scc-fast bench --report-only --out OUTDIR
set -u
OUT=${1:-${OUT:-gpu_bench_out}}
TOTAL=${2:-${SCC_BENCH_SECONDS:-100}}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
DEVICE=${SCC_BENCH_DEVICE:-cuda}   # cpu only to dry-run this script on a machine without a GPU
EXTRA=${SCC_BENCH_ARGS:-}           # extra arguments for every stage, e.g. to dry-run on tiny shapes
cd "$(dirname "$0")/.." || exit 1
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 MPLBACKEND=Agg
unset TRITON_INTERPRET SCC_FAST_BACKEND

stage() {  # stage NAME SHARE_PERCENT ARGS...
  local name=$1 share=$2; shift 2
  local secs=$(( TOTAL * share / 100 ))
  local budget=$(( secs * 70 / 100 ))   # rows start until 70% of the share; the rest is for the last row
  local t0=$(date +%s)
  echo "=== bench $name: budget ${budget}s, limit ${secs}s"
  timeout --kill-after=5 "$secs" python3 -m scc_fast.cli bench --device "$DEVICE" --out "$OUT" \
      --time-budget "$budget" "$@" $EXTRA > "$OUT/$name.log" 2>&1
  echo "=== bench $name rc=$? in $(( $(date +%s) - t0 ))s"
  tail -n 30 "$OUT/$name.log"
}

python3 -m scc_fast.cli backends > "$OUT/backends.txt" 2>&1; cat "$OUT/backends.txt"
stage cases 60 --repeats 20 --warmup 3
stage timeline 12 --timeline --cases synapse-2d
stage scaling 28 --scaling --repeats 10 --warmup 3
# If a stage was killed its plots may be missing: rebuild every table and plot from the JSON.
timeout 30 python3 -m scc_fast.cli bench --report-only --out "$OUT" > /dev/null 2>&1
ls -la "$OUT"
