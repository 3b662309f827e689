"""``scc-fast bench stage1-tune``: tile size and warps of triton_fft's first kernel on the GPU, a stage of the prepared GPU call.

``_activated_moments_kernel`` (softmax / sigmoid, one-hot target, spatial moments; writes p and y)
took 3-4x its memory traffic's time in GPU run 5 (bench/RESULTS.md), and the
triton_fft step is host-bound at most benchmark cases, so a step's time hides it: this mode reads the
kernel's own device time from torch.profiler. Per case (logits + int64 labels + softmax, float32,
``scc_loss(..., backend="triton_fft", validate=False)``) and per (values per tile, warps, threads down
the channels first) of the settings ``fft_stage1_values`` / ``fft_stage1_warps`` / ``fft_stage1_channel_threads``
(the first row is the default): the kernel's median
device us over the profiled steps, the step's median ms (CUDA events), and the relative difference
of loss and gradient to the case's first row (float32 rounding: about 1e-6). ``results.json`` /
``results.md`` are written after every row; rows past ``--budget`` are listed as skipped.

    scc-fast bench stage1-tune --out /tmp/stage1                  # on the GPU
    scc-fast bench stage1-tune --smoke --out /tmp/stage1          # CPU dry run (Triton interpreter)

(Before the harness: ``bench/gpu_stage1_tune.py``.)
"""

from __future__ import annotations

import argparse
import json
import statistics
import traceback
from pathlib import Path

import torch

from scc_fast import _settings

from ..errors import writable_dir
from ..measure import _sync as sync, build_loss_fn, make_inputs, time_calls
from ._common import Clock, environment, interpreter_for_smoke, require_cuda

CASES = {"brats-3d": (2, 4, 128, 128, 128), "btcv-3d": (2, 14, 96, 96, 96)}
SMOKE_CASES = {"smoke-3d": (1, 3, 8, 12, 10)}
# (values per tile, warps, threads down the channels first); the first is the default. With
# 4-wide vector loads Triton lays a CP x BLOCK tile out with 4 voxels a thread, 32 threads along
# the voxels, then warps along the voxels up to BLOCK / 128 and the rest down the channel rows:
# the softmax's max and sum over channels stay within a thread when BLOCK >= 128 x warps (at 4
# rows: 1024 / 2, 2048 / 4, 4096 / 8, 512 / 1) and within a warp with 1 warp (512 / 1 at 16
# rows); elsewhere they cross warps through shared memory, every tile. With the channel threads
# (``STAGE1_CHANNEL_THREADS``: no vector loads) a warp's threads go down the rows first and the
# reductions stay in the warp at every row count. sm_90 builds (triton 3.6, 16-divisible sizes as
# at run time) at 4 / 16 rows: 69 / 80 registers at the default, up to 248 for the others, none
# spills. Ordered by promise: rows past the budget are skipped.
CONFIGS = [
    (1024, 8, False), (1024, 8, True), (2048, 8, True), (1024, 4, True), (1024, 2, False), (4096, 8, False),
    (512, 1, False), (2048, 4, False), (512, 4, False), (1024, 4, False), (2048, 8, False),
]
KERNEL = "_activated_moments_kernel"


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--out", required=True, type=Path, help="output folder")
    ap.add_argument("--budget", type=float, default=60.0, help="seconds; later rows are skipped")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--configs", type=int, default=len(CONFIGS), help="how many of CONFIGS to run")
    ap.add_argument("--smoke", action="store_true", help="tiny case on CPU under the Triton interpreter")


def kernel_us(fn, x, t, steps: int) -> float | None:
    """Median device microseconds of the stage-1 kernel per step (None off CUDA)."""
    if x.device.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            x.grad = None
            fn(x, t).backward()
        sync(x.device)
    times = [e.device_time for e in prof.events() if e.name == KERNEL]
    return statistics.median(times) if times else None


def markdown(results: dict) -> str:
    env = results["environment"]
    lines = [
        f"<!-- {env['device']}, torch {env['torch']}, triton {env['triton']}, {env['date']}, commit {env['commit']} -->",
        "| case | values / tile | warps | channel threads | stage-1 kernel us | step ms | rel diff loss / grad |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        head = f"| {r['case']} | {r['values']} | {r['warps']} | {'yes' if r['channel_threads'] else 'no'} |"
        if "error" in r or "skipped" in r:
            lines.append(f"{head} {r.get('error') or r['skipped']} | - | - |")
            continue
        us = "-" if r["kernel_us"] is None else f"{r['kernel_us']:.1f}"
        lines.append(f"{head} {us} | {r['ms']:.3f} | {r['rel_diff_loss']:.1e} / {r['rel_diff_grad']:.1e} |")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    if not args.smoke:
        require_cuda("cuda")
    interpreter_for_smoke(args.smoke)
    elapsed = Clock()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    writable_dir(args.out)
    env = environment(args, device, card=None if device.type == "cuda" else "cpu (smoke)")
    env["device"] = env["card"]
    results = {"environment": env, "rows": []}
    cases = SMOKE_CASES if args.smoke else CASES
    fn = build_loss_fn("triton_fft", validate=False)
    defaults = _settings.current()
    inputs = {name: make_inputs(shape, device.type) for name, shape in cases.items()}
    first = {}  # per case: the first configuration's loss and gradient
    # Configurations outer, cases inner: when the budget runs out (each new configuration compiles
    # once per channel-row count), the first configurations have every case.
    for values, warps, channel_threads in CONFIGS[: args.configs]:
        for name, shape in cases.items():
            x, t = inputs[name]
            row = {"case": name, "shape": list(shape), "values": values, "warps": warps,
                   "channel_threads": channel_threads}
            if elapsed() > args.budget:
                row["skipped"] = f"time budget ({args.budget:.0f} s) used"
            else:
                _settings.update(fft_stage1_values=values, fft_stage1_warps=warps,
                                 fft_stage1_channel_threads=channel_threads)
                try:
                    x.grad = None
                    loss = fn(x, t)
                    loss.backward()
                    out = (loss.detach().double(), x.grad.detach().double())
                    ref = first.setdefault(name, out)
                    row["rel_diff_loss"] = float((out[0] - ref[0]).abs() / ref[0].abs().clamp_min(1e-30))
                    row["rel_diff_grad"] = float((out[1] - ref[1]).abs().max() / ref[1].abs().max().clamp_min(1e-30))
                    row["ms"] = time_calls(fn, x, t, "fwdbwd", args.reps)["median_ms"]
                    row["kernel_us"] = kernel_us(fn, x, t, args.reps)
                except Exception as exc:  # a config that fails to compile or launch is a result
                    traceback.print_exc()
                    row["error"] = f"{type(exc).__name__}: {exc}"[:200]
                finally:
                    _settings.restore(defaults)
            results["rows"].append(row)
            print(json.dumps(row), flush=True)
            (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
            (args.out / "results.md").write_text(markdown(results))
    print(markdown(results))
    return 0

