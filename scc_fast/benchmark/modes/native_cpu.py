"""``scc-fast bench native-cpu``: forward + backward time and peak memory of backend "native"
against "torch" and the reference on a CPU.

Cases (issue 8): logits B x C x spatial, integer labels, softmax, the public ``scc_loss``,
forward + backward. Each round runs every backend in turn (order alternating), each for a block
of consecutive steps, as a training loop calls its loss step after step; the first step of a
block, which meets the memory the previous backend left, is not timed (``--block 1`` times
single interleaved steps, the method before 2026-11-27 07:40: it let the other backends' freed
memory inflate the reference through page faults). A backend's time is the median over rounds of
its block medians; ratios are the median of per-round ratios, with their inter-quartile range;
peak memory is the high-water RSS above the inputs of a fresh subprocess per backend (median of 3
processes) (Linux: VmHWM after resetting it through /proc/self/clear_refs).

    scc-fast bench native-cpu                     # both cases, 15 rounds
    scc-fast bench native-cpu --repeats 31 --cases 2d
    scc-fast bench native-cpu --threads 1         # steadier on a loaded machine
    scc-fast bench native-cpu --no-validate       # scc_loss(validate=False), as `scc-fast bench` times it

``validate=True`` (the default of ``scc_loss``, and of this mode) adds the same input checks to
every backend (a pass over the logits and one over the labels); ``--no-validate`` times the
backends alone, as the benchmark suite (docs/loss.md section 8) does. On a machine shared with
other jobs, OpenMP threads spin against each other and 2-thread timings can be inflated many
times; ``--threads 1`` is steadier there. (Before the harness: ``bench/native_cpu.py``.)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from ..errors import CLIError

CASES = {"2d": (8, 9, 224, 224), "3d": (2, 4, 64, 64, 64)}
BACKENDS = ("reference", "torch", "native")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=list(BACKENDS))
    p.add_argument("--repeats", type=int, default=15, help="rounds")
    p.add_argument("--block", type=int, default=4, help="consecutive steps per backend per round (first not timed)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--no-memory", action="store_true", help="leave out the peak RSS (three processes per backend)")
    p.add_argument("--no-validate", action="store_true", help="scc_loss(validate=False) (the suite's protocol)")
    p.add_argument("--memory-child", nargs=2, help=argparse.SUPPRESS)


def make_inputs(shape: tuple[int, ...], seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=g)
    labels = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=g)
    return logits, labels


def step(logits, labels, backend: str, validate: bool):
    import scc_fast

    x = logits.detach().requires_grad_(True)
    scc_fast.scc_loss(x, labels, softmax=True, backend=backend, validate=validate).backward()
    return x.grad


def time_case(shape, backends, repeats: int, block: int, validate: bool) -> dict[str, list[float]]:
    """Per backend, one time (ms) per round: the median of the timed steps of its block."""
    from ..measure import time_steps

    logits, labels = make_inputs(shape)
    steps = {b: (lambda b=b: step(logits, labels, b, validate)) for b in backends}
    samples = time_steps(steps, repeats=repeats, warmup=1, block=max(1, block - 1), untimed_first=block > 1,
                         alternate=True)
    return {b: s["wall"] for b, s in samples.items()}


def ratio_summary(times: dict[str, list[float]], slow: str, fast: str = "native") -> str:
    """slow/fast per round (the two steps ran back to back), as median and inter-quartile range:
    steadier than a ratio of medians when the machine's speed drifts during the run."""
    r = sorted(a / b for a, b in zip(times[slow], times[fast]))
    q = statistics.quantiles(r, n=4) if len(r) >= 2 else [r[0]] * 3
    return f"native is {statistics.median(r):.2f}x faster (per-round ratio, IQR {q[0]:.2f}-{q[2]:.2f})"


def memory_child(case: str, backend: str, validate: bool) -> None:
    """In a fresh process: peak RSS (MiB) of one forward + backward above the inputs."""
    from ..measure import read_rss, reset_hwm

    shape = CASES[case]
    step(*make_inputs((1, 2, 8, 8) if len(shape) == 4 else (1, 2, 4, 4, 4)), backend, validate)  # load libraries
    logits, labels = make_inputs(shape)
    base = read_rss()[0]
    reset_hwm()
    step(logits, labels, backend, validate)
    peak = read_rss()[1]
    print(json.dumps({"above_inputs_mib": (peak - base) / 2**20, "peak_mib": peak / 2**20}))


def memory(case: str, backend: str, threads: int | None, validate: bool, runs: int = 3) -> dict[str, float]:
    """Median over ``runs`` fresh processes (RSS high-water varies a few MiB with allocator state)."""
    from ..suite import _PKG_ROOT

    cmd = [sys.executable, "-m", "scc_fast.cli", "bench", "native-cpu", "--memory-child", case, backend]
    cmd += [] if validate else ["--no-validate"]
    cmd += ["--threads", str(threads)] if threads else []
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(_PKG_ROOT), os.environ.get("PYTHONPATH")])))
    results = []
    for _ in range(runs):
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    results.sort(key=lambda r: r["above_inputs_mib"])
    return results[len(results) // 2]


def run(args: argparse.Namespace) -> int:
    import torch

    for name in ("repeats", "block", "threads"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise CLIError(f"--{name} must be >= 1, got {v}")
    validate = not args.no_validate
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(*args.memory_child, validate)
        return 0
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, cpu count {os.cpu_count()}, "
          f"scc_loss(validate={validate})")
    for case in args.cases:
        shape = CASES[case]
        times = time_case(shape, tuple(args.backends), args.repeats, args.block, validate)
        print(f"\n{case} {'x'.join(map(str, shape))}: forward+backward, median of {args.repeats} rounds "
              f"of {args.block}-step blocks (ms)")
        for b in args.backends:
            line = f"  {b:10s} {statistics.median(times[b]):8.2f} ms"
            if "native" in times and b != "native":
                line += "   " + ratio_summary(times, b)
            if not args.no_memory:
                m = memory(case, b, args.threads, validate)
                line += f"   peak RSS above inputs {m['above_inputs_mib']:7.1f} MiB (process peak {m['peak_mib']:.0f} MiB)"
            print(line, flush=True)
    return 0
