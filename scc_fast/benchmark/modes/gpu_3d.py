"""``scc-fast bench gpu-3d``: the accelerated backends at the benchmark cases on the GPU, 3D first.

Cases (docs/loss.md section 8; logits in, integer labels, softmax, forward + backward of ``scc_loss``):
brats-3d 2x4x128^3, btcv-3d 2x14x96^3, synapse-2d 24x9x224^2, polyp-2d 16x2x512^2.

For each case and each accelerated backend that runs it (``torch``, ``triton_fft``, and
``triton`` where its kernel supports the shape: 2D in one launch, 3D in five; on the 3D cases
also ``triton:ieee``, its IEEE-dot option, held to 1e-5, and ``triton:recompute`` /
``triton_fft:recompute``, which keep no gradient field between forward and backward and compute it
again in backward, the setting ``recompute_field``, and ``triton:ws=2^30``, its
workspace at 1 GiB (the default until GPU run 3, now 64 MiB: fewer chunks of pairs, more
memory); on CUDA, every case also as ``<backend>:graph``, forward + backward captured once in a
CUDA graph and replayed (the kernels' time without the host's per-step work; peak memory not
comparable, the graph's pool is allocated at capture); ``triton_fft:all-classes`` on every case,
triton_fft transforming every class (the setting ``fft_derive`` off: the step before class 0's
spectrum was derived from the others'); ``triton_fft:validate`` on every case, triton_fft with
``scc_loss``'s default ``validate=True`` (stage 1 makes the checks, one sync after the forward,
and class 0's target spectrum is derived too; every other row passes ``validate=False``);
``triton_fft`` with smaller chunks of classes only with ``--chunked``, measured in GPU run 2):

1. correctness: loss and dL/dlogits against backend "reference" run in float64 on the same
   device, as ||out - ref|| / ||ref|| (docs/loss.md section 6: 1e-5 for float32 paths, 5e-3 for the
   in-kernel DFT with its default TF32 dots);
2. median forward + backward time (CUDA events, after warm-up) and peak memory above the inputs
   (``max_memory_allocated`` after ``reset_peak_memory_stats``, the gradient included) against the
   reference eager and the reference under ``torch.compile``, as ratios measured in this run;
3. the roofline: bytes that must move (read logits and labels once, write dL/dlogits once) over
   the device-to-device copy bandwidth measured here, and the fraction of it reached.

Writes ``results.json``, ``results.md`` and ``dispatch_table.json`` (the ranking of the correct
backends per case, in the format :mod:`scc_fast.backends.dispatch` reads, made by
:mod:`.gpu_3d_report`; commit it as ``scc_fast/backends/dispatch_table.json``, or pass
``--install-table`` to write it there) to ``--out``, after every step, so a failure or a
timeout loses nothing already measured. Every case and backend is wrapped: one failure does not
lose the rest. ``--budget`` (seconds, default 185) bounds the run: the compiled reference, the
slowest part, is skipped for a case when too little time is left.

    scc-fast bench gpu-3d --out /tmp/hybrid3d                 # on the GPU
    scc-fast bench gpu-3d --smoke --out /tmp/smoke            # CPU, tiny shapes, interpreter

(Before the harness: ``bench/gpu_3d_check.py``.)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import time
import traceback
from pathlib import Path

import torch

import scc_fast
from scc_fast import backends
from scc_fast.backends import dispatch
from scc_fast.reference import reference_correlation

from ..errors import writable_dir
from ..measure import time_step
from ._common import Clock, environment, pick, require_cuda
from .gpu_3d_report import ACCELERATED, _fmt, _ratio, markdown, write_outputs

CASES = {
    "brats-3d": (2, 4, 128, 128, 128),
    "btcv-3d": (2, 14, 96, 96, 96),
    "synapse-2d": (24, 9, 224, 224),
    "polyp-2d": (16, 2, 512, 512),
}
SMOKE_CASES = {"smoke-3d": (1, 3, 8, 12, 10), "smoke-2d": (2, 3, 16, 12)}
# triton_fft with smaller chunks of classes (the setting fft_chunk_elements = 2^k): less memory, more launches.
# Measured to choose the default; not dispatch candidates of their own.
CHUNKED = ("triton_fft:chunk=2^23", "triton_fft:chunk=2^22")
# The in-kernel DFT with IEEE dots (docs/loss.md section 6: 1e-5), on the 3D cases only (the 2D check,
# scc-fast bench gpu-check, has its own precision rows). Not a dispatch candidate.
TRITON_IEEE = ("triton:ieee",)
# Recompute the gradient field in backward instead of keeping it (issue 4: keep or recompute,
# whichever costs less), on the 3D cases. Not dispatch candidates of their own.
RECOMPUTE = ("triton:recompute", "triton_fft:recompute")
# triton_fft transforming every class (the setting ``fft_derive`` off): the same step before
# class 0's spectrum was derived from the others', for the ratio in the same run. Every case. Not
# a dispatch candidate.
FFT_ALL_CLASSES = ("triton_fft:all-classes",)
# triton_fft with scc_loss's default validate=True: the checks in stage 1, read once after the
# forward (a device sync), and Y of class 0 derived as well. Every case. Not a dispatch candidate.
FFT_VALIDATE = ("triton_fft:validate",)
# backend triton's 3D workspace at 1 GiB per call (the default is 64 MiB since GPU run 3): pairs
# in fewer chunks of five launches each, more memory. Not a dispatch candidate.
TRITON_WS = ("triton:ws=2^30",)
# Forward + backward captured once in a CUDA graph and replayed (CUDA only): what the kernels
# cost without the host's per-step work (Python, dispatch, launches; GPU run 3 found torch and
# triton_fft host-bound). A training step captured whole (torch.cuda.graphs, or
# torch.compile(mode="reduce-overhead")) gets this. The reference is graphed too, for a fair ratio.
GRAPHED = ("reference:graph", "torch:graph", "triton_fft:graph", "triton:graph")
TOLERANCE = {"torch": 1e-5, "triton_fft": 1e-5, "triton": 5e-3, "reference-compiled": 1e-5}
TOLERANCE.update({name: 1e-5 for name in (*CHUNKED, *TRITON_IEEE)})
TOLERANCE.update({"reference:graph": 1e-5, "torch:graph": 1e-5, "triton_fft:graph": 1e-5, "triton:graph": 5e-3})
TOLERANCE.update({"triton:recompute": 5e-3, "triton_fft:recompute": 1e-5, "triton:ws=2^30": 5e-3})
TOLERANCE.update({name: 1e-5 for name in (*FFT_ALL_CLASSES, *FFT_VALIDATE)})

elapsed = Clock()  # restarted by run


def log(msg: str) -> None:
    print(f"[{elapsed():6.1f}s] {msg}", flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.detach().double(), ref.detach().double()
    den = ref.norm().item()
    return (out - ref).norm().item() / (den if den > 0 else 1.0)


def make_case(shape, device: torch.device, seed: int = 0):
    """Logits and blobby integer labels (a few balls per class), like a segmentation network's."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    n_batch, n_chan = shape[:2]
    spatial = shape[2:]
    grids = torch.meshgrid(*[torch.arange(s, device=device, dtype=torch.float32) for s in spatial], indexing="ij")
    labels = torch.zeros((n_batch, *spatial), dtype=torch.long, device=device)
    for b in range(n_batch):
        for c in range(1, n_chan):
            for _ in range(2):
                centre = [torch.randint(0, s, (1,), generator=g).item() for s in spatial]
                r = max(2.0, min(spatial) * (0.05 + 0.15 * torch.rand(1, generator=g).item()))
                dist2 = sum((x - c0) ** 2 for x, c0 in zip(grids, centre))
                labels[b][dist2 <= r * r] = c
    noise = torch.randn(shape, generator=g).to(device)
    onehot = torch.nn.functional.one_hot(labels, n_chan).movedim(-1, 1).float()
    logits = (2.0 * onehot + 1.5 * noise).contiguous()
    return logits, labels


def loss_fn(backend: str, labels: torch.Tensor, validate: bool = False):
    def fn(x):
        return scc_fast.scc_loss(x, labels, softmax=True, backend=backend, validate=validate)

    return fn


def reference_loss(labels: torch.Tensor):
    """scc_loss(softmax=True, reduction="mean") through the reference, written for torch.compile."""

    def fn(x):
        scc, valid = reference_correlation(torch.softmax(x, 1), labels)
        loss = torch.where(valid, 1.0 - scc, torch.zeros_like(scc))
        return loss.sum() / valid.sum().clamp_min(1)

    return fn


def fwd_bwd(fn, x):
    x.grad = None
    loss = fn(x)
    loss.backward()
    return loss


def time_ms(fn, x, device, warmup: int, reps: int) -> tuple[float, list[float]]:
    times = time_step(lambda: fwd_bwd(fn, x), repeats=reps, device=device, warmup=warmup)
    return statistics.median(times), times


def capture_graph(fn, x, device):
    """fwd_bwd(fn, x) captured in a CUDA graph after warm-up on a side stream (PyTorch's recipe);
    replaying it rewrites x.grad and the returned loss in place."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(3):
            fwd_bwd(fn, x)
    torch.cuda.current_stream(device).wait_stream(side)
    x.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        loss = fn(x)
        loss.backward()
    return graph, loss


def time_graph_ms(graph, device, reps: int) -> tuple[float, list[float]]:
    times = time_step(graph.replay, repeats=reps, device=device, warmup=3)
    return statistics.median(times), times


def held_mib(fn, x, device) -> float | None:
    """Memory the loss's graph holds between forward and backward (what the rest of a training
    step's forward and backward pay for), above what was allocated before the forward."""
    if device.type != "cuda":
        return None
    x.grad = None
    gc.collect()
    sync(device)
    base = torch.cuda.memory_allocated(device)
    loss = fn(x)
    sync(device)
    held = torch.cuda.memory_allocated(device) - base
    loss.backward()
    x.grad = None
    return held / 2**20


def peak_mib(fn, x, device) -> float | None:
    """Peak memory above what is allocated before the call (inputs), the gradient included."""
    if device.type != "cuda":
        return None
    x.grad = None
    gc.collect()
    sync(device)
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fwd_bwd(fn, x)
    sync(device)
    peak = torch.cuda.max_memory_allocated(device) - base
    x.grad = None
    return peak / 2**20


def copy_bandwidth(device) -> dict:
    """Device-to-device copy bandwidth (read + write bytes per second), median of 20 copies."""
    n_bytes = (1 << 30) if device.type == "cuda" else (1 << 24)
    a = torch.empty(n_bytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    ms, _ = (time_copy(a, b, device, 20))
    del a, b
    return {"bytes_per_copy": 2 * n_bytes, "median_ms": ms, "GBps": 2 * n_bytes / (ms * 1e-3) / 1e9}


def time_copy(a, b, device, reps):
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            b.copy_(a)
            e.record()
            e.synchronize()
            times.append(s.elapsed_time(e))
        else:
            t = time.perf_counter()
            b.copy_(a)
            times.append(1e3 * (time.perf_counter() - t))
    return statistics.median(times), times


def prepare_case(name, shape, device, results, out) -> dict | None:
    """Inputs and the float64 oracle of one case; None (with the error recorded) if that fails."""
    case = {"name": name, "shape": list(shape), "backends": {}, "error": None}
    results["cases"].append(case)
    try:
        logits, labels = make_case(shape, device)
        n_bytes = logits.numel() * 4 * 2 + labels.numel() * labels.element_size()
        case["bytes_must_move"] = n_bytes
        if results.get("bandwidth"):
            case["roofline_ms"] = n_bytes / (results["bandwidth"]["GBps"] * 1e9) * 1e3
        x64 = logits.double().requires_grad_(True)
        loss64 = fwd_bwd(loss_fn("reference", labels), x64).detach()
        grad64 = x64.grad.detach()
        del x64
    except Exception as exc:  # noqa: BLE001
        case["error"] = f"inputs or float64 reference failed: {type(exc).__name__}: {exc}"
        case["traceback"] = traceback.format_exc()[-3000:]
        log(f"{name}: {case['error']}")
        write_outputs(out, results)
        return None
    log(f"{name} {shape}: float64 reference done, loss {loss64.item():.6f}")
    return dict(case=case, logits=logits, labels=labels, loss64=loss64, grad64=grad64)


def variant_settings(backend: str) -> dict:
    """The settings a row label's variant changes (``triton_fft:chunk=2^23``, ``triton:ieee``, ...)."""
    if backend in CHUNKED:
        return {"fft_chunk_elements": 1 << int(backend.rsplit("^", 1)[1])}
    if backend in TRITON_WS:
        return {"triton_workspace_bytes": 1 << int(backend.rsplit("^", 1)[1])}
    for labels, setting in ((RECOMPUTE, {"recompute_field": True}), (FFT_ALL_CLASSES, {"fft_derive": False}),
                            (TRITON_IEEE, {"triton_precision": "ieee"})):
        if backend in labels:
            return setting
    return {}


def measure_graphed(r: dict, fn, x, state: dict, backend: str, device, reps: int) -> None:
    """Correctness and replay time of forward + backward captured in a CUDA graph, into ``r``."""
    graph, loss = capture_graph(fn, x, device)
    graph.replay()
    sync(device)
    r["rel_err_loss"] = rel_err(loss, state["loss64"])
    r["rel_err_grad"] = rel_err(x.grad, state["grad64"])
    tol = TOLERANCE[backend]
    r["tolerance"] = tol
    r["correct"] = bool(r["rel_err_loss"] <= tol and r["rel_err_grad"] <= tol)
    r["median_ms"], r["times_ms"] = time_graph_ms(graph, device, reps)
    r["peak_mib"] = r["held_mib"] = None  # the graph's memory pool is allocated once, at capture
    log(f"{state['case']['name']} {backend:22s} err {r['rel_err_loss']:.1e}/{r['rel_err_grad']:.1e} "
        f"{r['median_ms']:.3f} ms (graph replay)")


def measure(state, backend, device, results, out, settings) -> None:
    """Correctness, peak memory and median time of one backend on one prepared case."""
    from scc_fast import _settings

    case, logits, labels = state["case"], state["logits"], state["labels"]
    r: dict = {}
    case["backends"][backend] = r
    defaults = _settings.current()
    x = fn = None
    try:
        if backend == "reference-compiled":
            left = settings["budget"] - elapsed()
            if left < settings["compile_needs_s"]:
                r["skipped"] = f"time budget: {left:.0f}s left, compile needs about {settings['compile_needs_s']:.0f}s"
                return
            import torch._dynamo as dynamo

            dynamo.config.cache_size_limit = max(dynamo.config.cache_size_limit, 64)
            fn = torch.compile(reference_loss(labels), backend=settings["compile_backend"], dynamic=False)
            t = time.perf_counter()
            x = logits.clone().requires_grad_(True)
            fwd_bwd(fn, x)
            sync(device)
            r["compile_s"] = round(time.perf_counter() - t, 1)
            settings["compile_needs_s"] = max(settings["compile_needs_s"], 1.3 * r["compile_s"])
        else:
            impl = backend.split(":")[0]
            _settings.update(**variant_settings(backend))
            if impl != "reference":
                reason = backends._unavailable_reason(impl)  # only this backend (native is not imported)
                if reason is not None:
                    r["skipped"] = f"unavailable: {reason}"
                    return
                why = backends.load(impl).unsupported_reason(logits, labels)
                if why is not None:
                    r["skipped"] = f"unsupported: {why}"
                    return
            fn = loss_fn(impl, labels, validate=backend in FFT_VALIDATE)
            x = logits.clone().requires_grad_(True)
        if backend in GRAPHED:
            measure_graphed(r, fn, x, state, backend, device, settings["reps"])
            return
        t_first = time.perf_counter()
        loss = fwd_bwd(fn, x).detach()
        sync(device)
        r["first_call_s"] = round(time.perf_counter() - t_first, 2)  # kernel compilation included
        r["rel_err_loss"] = rel_err(loss, state["loss64"])
        r["rel_err_grad"] = rel_err(x.grad, state["grad64"])
        tol = TOLERANCE.get(backend)
        r["tolerance"] = tol
        r["correct"] = None if tol is None else bool(r["rel_err_loss"] <= tol and r["rel_err_grad"] <= tol)
        r["peak_mib"] = peak_mib(fn, x, device)
        r["held_mib"] = held_mib(fn, x, device)
        r["median_ms"], r["times_ms"] = time_ms(fn, x, device, settings["warmup"], settings["reps"])
        log(
            f"{case['name']} {backend:22s} err {r['rel_err_loss']:.1e}/{r['rel_err_grad']:.1e} "
            f"{r['median_ms']:.3f} ms peak {_fmt(r['peak_mib'], '.0f')} MiB"
        )
    except Exception as exc:  # noqa: BLE001 - one failure must not lose the rest
        r["error"] = f"{type(exc).__name__}: {exc}"
        r["traceback"] = traceback.format_exc()[-3000:]
        log(f"{case['name']} {backend}: {r['error'][:300]}")
    finally:
        _settings.restore(defaults)
        x = fn = None  # noqa: F841
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        finalize(case)
        write_outputs(out, results)


def finalize(case) -> None:
    """Ratios against the reference eager and compiled, and the roofline fraction."""
    eager = case["backends"].get("reference", {})
    comp = case["backends"].get("reference-compiled", {})
    for backend in (*ACCELERATED, *FFT_ALL_CLASSES, *FFT_VALIDATE, *CHUNKED, *TRITON_IEEE, *RECOMPUTE, *TRITON_WS,
                    *GRAPHED):
        r = case["backends"].get(backend, {})
        if r.get("median_ms"):
            r["speedup_vs_eager"] = _ratio(eager.get("median_ms"), r["median_ms"])
            r["speedup_vs_compiled"] = _ratio(comp.get("median_ms"), r["median_ms"])
            r["memory_ratio_vs_eager"] = _ratio(eager.get("peak_mib"), r.get("peak_mib"))
            r["memory_ratio_vs_compiled"] = _ratio(comp.get("peak_mib"), r.get("peak_mib"))
            r["roofline_fraction"] = _ratio(case.get("roofline_ms"), r["median_ms"])


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--out", type=Path, default=Path("bench/out/gpu_3d"), help="output folder")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes; on CPU under the Triton interpreter")
    ap.add_argument("--device", choices=("cuda", "cpu"), default=None, help="cuda (default) or cpu (default with --smoke)")
    ap.add_argument("--cases", default=None, help="comma-separated case names (default: all)")
    ap.add_argument("--budget", type=float, default=185.0, help="seconds for the whole run")
    ap.add_argument("--warmup", type=int, default=None, help="untimed iterations per measurement")
    ap.add_argument("--reps", type=int, default=None, help="timed iterations per measurement")
    ap.add_argument("--compile-backend", default=None, help="torch.compile backend (inductor; aot_eager with --smoke)")
    ap.add_argument("--no-compile", action="store_true", help="skip the compiled reference")
    ap.add_argument("--chunked", action="store_true", help="also triton_fft with smaller chunks of classes")
    ap.add_argument("--install-table", action="store_true",
                    help="also write the dispatch table to scc_fast/backends/dispatch_table.json (to commit)")


def run(args: argparse.Namespace) -> int:
    device = torch.device(args.device or ("cpu" if args.smoke else "cuda"))
    require_cuda(device, "run with --smoke (CPU, interpreter) or on the GPU")
    if device.type == "cpu":
        # Triton kernels on CPU tensors need the interpreter, chosen before triton is imported.
        os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ.pop("SCC_FAST_BACKEND", None)  # the run names every backend itself
    elapsed.restart()
    out = writable_dir(args.out)
    known = SMOKE_CASES if args.smoke else CASES
    cases = {c: known[c] for c in pick("--cases", args.cases, known)}
    settings = {
        "warmup": args.warmup if args.warmup is not None else (1 if args.smoke else 3),
        "reps": args.reps if args.reps is not None else (2 if args.smoke else 10),
        "compile_backend": args.compile_backend or ("aot_eager" if args.smoke else "inductor"),
        "compile_needs_s": 5 if args.smoke else 40,
        "budget": args.budget,
    }
    results = {"environment": _environment(args, device), "settings": settings, "bandwidth": None, "cases": []}
    log(f"environment: {json.dumps(results['environment'])}")
    try:
        results["bandwidth"] = copy_bandwidth(device)
        log(f"copy bandwidth {results['bandwidth']['GBps']:.0f} GB/s")
    except Exception as exc:  # noqa: BLE001
        results["bandwidth_error"] = f"{type(exc).__name__}: {exc}"
    write_outputs(out, results)
    # Pass 1: every backend and the eager reference, every case (the data that matters most).
    states = []
    for name, shape in cases.items():
        if elapsed() > args.budget - 10:
            results["cases"].append({"name": name, "shape": list(shape), "backends": {}, "error": "time budget"})
            log(f"{name}: skipped, time budget spent")
            continue
        state = prepare_case(name, shape, device, results, out)
        if state is None:
            continue
        states.append(state)
        extra = (*TRITON_IEEE, *RECOMPUTE, *TRITON_WS) if len(shape) == 5 else ()
        graphed = GRAPHED if device.type == "cuda" else ()
        for backend in ("reference", *ACCELERATED, *FFT_ALL_CLASSES, *FFT_VALIDATE, *extra,
                        *(CHUNKED if args.chunked else ()), *graphed):
            measure(state, backend, device, results, out, settings)
    # Pass 2: the compiled reference (slow to compile), while the budget lasts.
    for state in states:
        if args.no_compile:
            state["case"]["backends"]["reference-compiled"] = {"skipped": "--no-compile"}
            finalize(state["case"])
            continue
        measure(state, "reference-compiled", device, results, out, settings)
    write_outputs(out, results)
    print(markdown(results))
    log(f"wrote {out}/results.json, results.md, dispatch_table.json")
    if args.install_table:
        installed = Path(dispatch.__file__).with_name("dispatch_table.json")
        installed.write_text((out / "dispatch_table.json").read_text())
        log(f"wrote {installed}")
    return 0


def _environment(args: argparse.Namespace, device: torch.device) -> dict:
    """The common record, with the card's memory and whether this was a smoke run."""
    card = None if device.type == "cuda" else f"CPU {platform.processor() or platform.machine()} (Triton interpreter)"
    env = environment(args, device, card)
    env["smoke"] = args.smoke
    if device.type == "cuda":
        env["memory_GiB"] = round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
    return env
