"""``scc-fast bench profile``: where a forward + backward step spends its time on the GPU, the host or the kernels.

GPU run 2 (bench/RESULTS.md) missed issue 3's and issue 4's targets with every backend at 2-6 ms per
step and 1-2% of the HBM roofline, and put that down to fixed per-step costs. This mode measures
it, per benchmark case and backend (logits, integer labels, softmax, ``scc_loss``, forward + backward):

- ``step_ms``: wall time of a step, synchronised before and after (what a training loop pays);
- ``host_ms``: wall time of issuing the step without waiting for the device (the host's own cost:
  Python, dispatch, launches; a step is launch-bound when this is close to ``step_ms``);
- ``gpu_ms``: CUDA events around the step;
- ``kernel_ms`` and ``kernels``: the summed duration and the number of device kernels per step
  (``torch.profiler``), and the ops taking the most device time and the most host time;
- ``step_ms`` with ``validate=True`` as well (its checks wait for the device);
- ``launch_us``: the host's time to issue one launch, without waiting, of a small torch op and of
  two of backend triton_fft's Triton kernels (6 and 21 arguments), on tiny tensors: the price of
  each launch a step makes.

Row ``triton_fft:all-classes`` is triton_fft with class 0 transformed like the other classes
(the setting ``fft_derive`` off), for its kernels beside the default's in the same run.

Writes ``results.json``, ``results.md`` and one ``profile_<case>_<backend>.txt`` (the profiler's
tables) per row to ``--out``, after every row. ``--budget`` bounds the run (rows not started are
listed as skipped).

    scc-fast bench profile --out /tmp/profile                                   # on the GPU
    scc-fast bench profile --smoke --device cpu --out /tmp/p                    # dry run (interpreter)

(Before the harness: ``bench/gpu_profile.py``.)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import traceback
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

import scc_fast
from scc_fast import _settings, backends

from ..errors import writable_dir
from ..measure import _sync as sync, make_inputs, time_steps
from ._common import environment, interpreter_for_smoke, pick, require_cuda

CASES = {
    "synapse-2d": (24, 9, 224, 224),
    "polyp-2d": (16, 2, 512, 512),
    "brats-3d": (2, 4, 128, 128, 128),
    "btcv-3d": (2, 14, 96, 96, 96),
}
SMOKE_CASES = {"smoke-2d": (2, 3, 16, 12), "smoke-3d": (1, 2, 8, 12, 10)}
BACKENDS = ("reference", "torch", "triton", "triton_fft", "triton_fft:all-classes", "native")
#: Rows that run a backend with a setting changed: triton_fft transforming class 0 like the others
#: (the setting ``fft_derive`` off), kernel by kernel beside the default in the same run.
VARIANTS = {"triton_fft:all-classes": {"fft_derive": False}}


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--out", type=Path, default=Path("bench/out/gpu_profile"), help="output folder")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cuda (default) or cpu (a dry run of the mode)")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes (with --device cpu: under the Triton interpreter)")
    ap.add_argument("--cases", default=None, help="comma-separated case names (default: all)")
    ap.add_argument("--backends", default=None, help="comma-separated backends (default: every available one)")
    ap.add_argument("--reps", type=int, default=10, help="timed steps per measurement")
    ap.add_argument("--budget", type=float, default=40.0, help="seconds: no row starts after this")


def step(x, labels, backend, validate):
    leaf = x.detach().requires_grad_(True)
    scc_fast.scc_loss(leaf, labels, softmax=True, backend=backend, validate=validate).backward()


def time_row(x, labels, backend, device, reps):
    """step_ms (synchronised), host_ms (issuing only) and gpu_ms (CUDA events) of the same steps,
    validate=False; then step_ms with validate=True."""
    row = {}
    clocks = ("wall", "host", "events") if device.type == "cuda" else ("wall", "host")
    for validate in (False, True):
        (ms,) = time_steps({"step": lambda: step(x, labels, backend, validate)}, repeats=reps, device=device,
                           clocks=clocks).values()
        med = {c: round(statistics.median(s), 4) for c, s in ms.items()}
        if validate:
            row["step_ms_validate"] = med["wall"]
        else:
            row["step_ms"], row["host_ms"], row["gpu_ms"] = med["wall"], med["host"], med.get("events")
    return row


def profile_row(x, labels, backend, device, steps=3):
    """Kernel time and count per step, and the profiler's tables."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sync(device)
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step(x, labels, backend, False)
        sync(device)
    averages = prof.key_averages()
    kernel_us, kernels = 0.0, 0
    for e in averages:
        if e.device_type == torch.autograd.DeviceType.CUDA:
            kernel_us += e.self_device_time_total
            kernels += e.count
    tables = []
    if device.type == "cuda":
        tables.append("Top ops by device time (3 steps):\n" + averages.table(sort_by="self_device_time_total", row_limit=15))
    tables.append("Top ops by host time (3 steps):\n" + averages.table(sort_by="self_cpu_time_total", row_limit=15))
    stats = {"kernel_ms": round(kernel_us / 1e3 / steps, 4), "kernels": kernels // steps} if device.type == "cuda" else {}
    return stats, "\n\n".join(tables)


def launch_overhead(device, launches: int) -> dict:
    """Host microseconds per launch (issued back to back, then one sync): torch.add, and two
    Triton kernels of backend triton_fft (where it is available)."""
    x = torch.zeros(1024, device=device)
    lab = torch.zeros(1024, dtype=torch.int64, device=device)
    calls = {"torch.add": lambda: torch.add(x, 1.0)}
    try:
        from scc_fast.backends import triton_fft as fft

        if fft.unavailable_reason() is None:
            narrow = torch.empty(1024, dtype=torch.int8, device=device)
            calls["triton 6 args (_narrow_labels_kernel)"] = lambda: fft._narrow_labels_kernel[(1,)](
                lab, narrow, 1024, 0, 2, BLOCK=1024)
            x2 = torch.zeros(1, 2, 1024, device=device)
            part, counts = torch.zeros(2, 1, 6, device=device), torch.zeros(2, 1, dtype=torch.int32, device=device)
            calls["triton 21 args (_activated_moments_kernel)"] = lambda: fft._activated_moments_kernel[(1, 1)](
                x2, lab, x2, 0, 0, x2, x2, part, counts, counts, 1024, 2, 0, 0, 2, 0, 0, 1024, 1, 0, 0,
                ACTIVATION=1, LABELS=True, HAS_IGNORE=False, VALIDATE=False, CP=2, BLOCK=512, CHANNEL_THREADS=False)
    except ImportError:
        pass
    out = {}
    for name, call in calls.items():
        call()  # compile / warm up
        sync(device)
        t0 = time.perf_counter()
        for _ in range(launches):
            call()
        out[name] = round((time.perf_counter() - t0) / launches * 1e6, 2)
        sync(device)
    return out


def markdown(results):
    env = results["environment"]
    lines = [
        "# Where a step's time goes (scc-fast bench profile)",
        "",
        f"- {env.get('card')}; torch {env.get('torch')}, triton {env.get('triton')}; {env.get('date')}, "
        f"commit {env.get('commit')}",
        f"- command: `{env.get('command')}`",
        "- forward + backward of `scc_loss` (logits, int labels, softmax), median of the timed steps; host = issuing "
        "the step without waiting; kernels from torch.profiler over 3 steps",
        "",
        "| case | backend | step ms | host ms | gpu ms | kernel ms | kernels/step | step ms, validate=True |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        if "error" in r:
            lines.append(f"| {r['case']} | {r['backend']} | {r['error']} | | | | | |")
            continue
        cells = [r.get(k) for k in ("step_ms", "host_ms", "gpu_ms", "kernel_ms", "kernels", "step_ms_validate")]
        lines.append(f"| {r['case']} | {r['backend']} | " + " | ".join("-" if c is None else str(c) for c in cells) + " |")
    if results.get("launch_us"):
        lines += ["", "Host time per launch, issued back to back (us): "
                  + ", ".join(f"{k} {v}" for k, v in results["launch_us"].items())]
    if results["skipped"]:
        lines += ["", "Not run (budget): " + ", ".join(results["skipped"])]
    return "\n".join(lines) + "\n"


def write(out: Path, results):
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(markdown(results))


def run(args: argparse.Namespace) -> int:
    device = torch.device(args.device)
    require_cuda(device, "run with --device cpu (and --smoke) to check the mode")
    interpreter_for_smoke(args.smoke)
    known = SMOKE_CASES if args.smoke else CASES
    cases = {k: known[k] for k in pick("--cases", args.cases, known)}
    wanted = pick("--backends", args.backends, BACKENDS)
    status = backends.available_backends()
    # native is a CPU operator: on a GPU it has nothing to measure.
    available = [b for b in wanted if status[b.split(":")[0]].available and not (b == "native" and device.type == "cuda")]
    out = writable_dir(args.out)
    card = None if device.type == "cuda" else "CPU (dry run)"
    results = {"environment": environment(args, device, card), "rows": [], "skipped": []}
    try:
        results["launch_us"] = launch_overhead(device, 500 if device.type == "cuda" else 5)
        print("launch_us", json.dumps(results["launch_us"]), flush=True)
    except Exception as exc:  # noqa: BLE001 - a side measurement must not stop the rows
        results["launch_us"] = {"error": f"{type(exc).__name__}: {str(exc)[:160]}"}
        traceback.print_exc()
    t_start = time.perf_counter()
    for case, shape in cases.items():
        x, labels = make_inputs(shape, device)
        for backend in available:
            name = f"{case}/{backend}"
            if time.perf_counter() - t_start > args.budget:
                results["skipped"].append(name)
                continue
            row = {"case": case, "shape": list(shape), "backend": backend}
            impl, restore = backend.split(":")[0], _settings.current()
            try:
                _settings.update(**VARIANTS.get(backend, {}))
                for _ in range(3):  # warm-up: compilation, plans, caches
                    step(x, labels, impl, False)
                row.update(time_row(x, labels, impl, device, args.reps))
                stats, tables = profile_row(x, labels, impl, device)
                row.update(stats)
                table_file = out / f"profile_{case}_{backend.replace(':', '-')}.txt"
                table_file.parent.mkdir(parents=True, exist_ok=True)
                table_file.write_text(tables + "\n")
            except Exception as exc:  # noqa: BLE001 - one row's failure must not lose the others
                row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
                traceback.print_exc()
            finally:
                _settings.restore(restore)
            results["rows"].append(row)
            print(json.dumps(row), flush=True)
            write(out, results)
        del x, labels
        if device.type == "cuda":
            torch.cuda.empty_cache()
    write(out, results)
    return 0

