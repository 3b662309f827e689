"""Forward + backward timing and peak memory of backend "native" against "torch" and the reference.

Cases (issue 8): logits B x C x spatial, integer labels, softmax, the public ``scc_loss``,
forward + backward. Each round runs every backend in turn (order alternating), each for a block
of consecutive steps, as a training loop calls its loss step after step; the first step of a
block, which meets the memory the previous backend left, is not timed (``--block 1`` times
single interleaved steps, the method before 2026-11-27 07:40: it let the other backends' freed
memory inflate the reference by 20-30% through page faults). A backend's time is the median over
rounds of its block medians; ratios are the median of per-round ratios, with their
inter-quartile range; peak memory is the high-water RSS above the inputs of a fresh
subprocess per backend (median of 3 processes) (Linux: VmHWM after resetting it through /proc/self/clear_refs).

    python bench/native_cpu.py                   # both cases, 15 repeats
    python bench/native_cpu.py --repeats 31 --cases 2d
    python bench/native_cpu.py --threads 1       # steadier on a loaded machine
    python bench/native_cpu.py --no-validate     # scc_loss(validate=False), as `scc-fast bench` times it

``validate=True`` (the default of ``scc_loss``, and of this script) adds the same input checks to
every backend (a pass over the logits and one over the labels, about 0.4 ms at 2 x 4 x 64^3);
``--no-validate`` times the backends alone, as the benchmark suite (docs/loss.md section 8) does.

On a machine shared with other jobs, OpenMP threads spin against each other and 2-thread
timings can be inflated many times; ``--threads 1`` is steadier there.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

CASES = {"2d": (8, 9, 224, 224), "3d": (2, 4, 64, 64, 64)}
BACKENDS = ("reference", "torch", "native")
VALIDATE = True  # scc_loss(validate=...) in every timed and measured step (--no-validate)


def make_inputs(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=g)
    labels = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=g)
    return logits, labels


def step(logits, labels, backend):
    import scc_fast

    x = logits.detach().requires_grad_(True)
    loss = scc_fast.scc_loss(x, labels, softmax=True, backend=backend, validate=VALIDATE)
    loss.backward()
    return x.grad


def time_case(shape, backends, repeats, block=4):
    """Per backend, one time per round: the median of the timed steps of its block."""
    logits, labels = make_inputs(shape)
    for b in backends:  # warm-up (plan caches, first-touch of buffers)
        step(logits, labels, b)
    times = {b: [] for b in backends}
    for r in range(repeats):
        for b in backends if r % 2 == 0 else backends[::-1]:
            block_times = []
            for i in range(block):
                t0 = time.perf_counter()
                step(logits, labels, b)
                if i > 0 or block == 1:
                    block_times.append(time.perf_counter() - t0)
            times[b].append(statistics.median(block_times))
    return times


def ratio_summary(times, slow, fast="native"):
    """slow/fast per round (the two steps ran back to back), as median and inter-quartile range:
    steadier than a ratio of medians when the machine's speed drifts during the run."""
    r = sorted(a / b for a, b in zip(times[slow], times[fast]))
    q = statistics.quantiles(r, n=4) if len(r) >= 2 else [r[0]] * 3
    return f"native is {statistics.median(r):.2f}x faster (per-round ratio, IQR {q[0]:.2f}-{q[2]:.2f})"


def _status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def memory_child(case, backend):
    """Runs in a fresh process: peak RSS (MiB) of one forward + backward above the inputs."""
    shape = CASES[case]
    step(*make_inputs((1, 2, 8, 8) if len(shape) == 4 else (1, 2, 4, 4, 4)), backend)  # load libraries
    logits, labels = make_inputs(shape)
    base = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    step(logits, labels, backend)
    peak = _status_kib("VmHWM")
    print(json.dumps({"above_inputs_mib": (peak - base) / 1024, "peak_mib": peak / 1024}))


def memory(case, backend, threads=None, runs=3):
    """Median over ``runs`` fresh processes (RSS high-water varies a few MiB with allocator state)."""
    cmd = [sys.executable, __file__, "--memory-child", case, backend]
    if not VALIDATE:
        cmd.append("--no-validate")
    if threads:
        cmd += ["--threads", str(threads)]
    results = []
    for _ in range(runs):
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    results.sort(key=lambda r: r["above_inputs_mib"])
    return results[len(results) // 2]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=list(BACKENDS))
    ap.add_argument("--repeats", type=int, default=15, help="rounds")
    ap.add_argument("--block", type=int, default=4, help="consecutive steps per backend per round (first not timed)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--no-validate", action="store_true", help="scc_loss(validate=False) (the suite's protocol)")
    ap.add_argument("--memory-child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    global VALIDATE
    VALIDATE = not args.no_validate
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(*args.memory_child)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, cpu count {os.cpu_count()}, "
          f"scc_loss(validate={VALIDATE})")
    for case in args.cases:
        shape = CASES[case]
        times = time_case(shape, tuple(args.backends), args.repeats, args.block)
        print(
            f"\n{case} {'x'.join(map(str, shape))}: forward+backward, median of {args.repeats} rounds "
            f"of {args.block}-step blocks (ms)"
        )
        for b in args.backends:
            line = f"  {b:10s} {statistics.median(times[b]) * 1e3:8.2f} ms"
            if "native" in times and b != "native":
                line += "   " + ratio_summary(times, b)
            if not args.no_memory:
                m = memory(case, b, args.threads)
                line += f"   peak RSS above inputs {m['above_inputs_mib']:7.1f} MiB (process peak {m['peak_mib']:.0f} MiB)"
            print(line, flush=True)


if __name__ == "__main__":
    main()
