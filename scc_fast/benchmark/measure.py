"""Measuring one backend on one shape: inputs, warm-up, timing and peak memory.

The functions here run either inside the ``scc-fast bench`` process or, on a CPU, in a fresh
subprocess per (case, backend) (``python -m scc_fast.benchmark.measure ARGS_JSON``), because the
CPU peak is the resident-set high-water mark of the process and must not see other backends'
heap. Each result is one JSON-able dict.

Definitions (the same on every device):

* ``fwd``: the forward call of a training step: logits that require grad, softmax, integer
  labels, ``scc_fast.scc_loss(..., softmax=True, backend=NAME, validate=False)``; no backward.
  Backends that compute the gradient in forward pay for it here.
* ``fwdbwd``: the same call followed by ``loss.backward()``.
* time: median and quartiles over ``repeats`` calls after ``warmup`` calls; CUDA events on a GPU
  (``time.perf_counter`` on a CPU).
* peak memory above the inputs: CUDA, ``max_memory_allocated()`` after
  ``reset_peak_memory_stats()`` minus ``memory_allocated()`` just before the call (the inputs and
  whatever the backend keeps between calls). CPU: ``VmHWM`` (reset by writing 5 to
  ``/proc/self/clear_refs``) minus ``VmRSS`` just before the call, after ``malloc_trim`` and after
  emptying backend ``native``'s cache of released buffers (so the buffers it reuses count); the
  call is measured after one warm-up call so that imports, code pages and one-time compilation
  are not counted.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import resource
import statistics
import sys
import time
import traceback
from typing import Any, Callable, Mapping

import torch

__all__ = [
    "MODES",
    "make_inputs",
    "build_loss_fn",
    "time_calls",
    "time_steps",
    "time_step",
    "CLOCKS",
    "peak_memory",
    "measure_one",
    "measure_series",
    "copy_bandwidth",
    "summarize",
    "read_rss",
    "reset_hwm",
    "trim_heap",
]

MODES = ("fwd", "fwdbwd")
RESULT_PREFIX = "SCC_BENCH_RESULT "
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------------------------
# Inputs and the function under test
# --------------------------------------------------------------------------------------------


def make_inputs(shape: tuple[int, ...], device: torch.device | str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits B x C x spatial (float32, requires grad) and int64 labels B x spatial in [0, C)."""
    device = torch.device(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    logits = (2.0 * torch.randn(shape, generator=gen, device=device)).requires_grad_(True)
    labels = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=gen, device=device)
    return logits, labels


def build_loss_fn(backend: str, compiled: bool = False, validate: bool = False) -> LossFn:
    """``scc_loss(x, t, softmax=True, backend=backend)``, optionally under ``torch.compile``."""
    from .. import scc_loss

    def loss_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return scc_loss(x, t, softmax=True, backend=backend, validate=validate)

    if not compiled:
        return loss_fn
    torch._dynamo.reset()  # a clean cache per shape: no recompile limit, no dynamic-shape graph
    return torch.compile(loss_fn, dynamic=False)


def _call(fn: LossFn, x: torch.Tensor, t: torch.Tensor, mode: str) -> torch.Tensor:
    x.grad = None
    loss = fn(x, t)
    if mode == "fwdbwd":
        loss.backward()
    return loss


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


def summarize(samples_ms: list[float]) -> dict[str, Any]:
    """Median, quartiles (IQR), min and max of a list of times in ms."""
    s = sorted(samples_ms)
    if len(s) >= 2:
        q1, _, q3 = statistics.quantiles(s, n=4, method="inclusive")
    else:
        q1 = q3 = s[0]
    return {
        "median_ms": statistics.median(s),
        "q1_ms": q1,
        "q3_ms": q3,
        "min_ms": s[0],
        "max_ms": s[-1],
        "n": len(s),
        "samples_ms": s,
    }


#: What :func:`time_steps` can read around a call: ``events`` (CUDA events, the device's time),
#: ``wall`` (perf_counter, the device synchronised after the call: what a training loop waits for),
#: ``host`` (perf_counter until the call returns, without waiting: the host's cost of issuing it).
CLOCKS = ("events", "wall", "host")


def time_steps(steps: Mapping[str, Callable[[], object]], *, repeats: int, device: torch.device | str = "cpu",
               clocks: tuple[str, ...] = ("auto",), warmup: int = 0, block: int = 1, untimed_first: bool = False,
               alternate: bool = False, max_s: float | None = None,
               before_block: Callable[[str], object] | None = None) -> dict[str, dict[str, list[float]]]:
    """Milliseconds of each step, per clock: the one timing loop of ``scc-fast bench``'s modes.

    ``repeats`` rounds; each round runs every step in turn (in reverse order every other round
    with ``alternate``, so that no step always follows the same one), ``block`` timed calls in
    a row, after one untimed call with ``untimed_first`` (it meets what the previous step left:
    freed memory, cold caches); a step's sample for the round is the median of its block.
    ``before_block(name)``, untimed, starts each block (e.g. switches a setting for an A/B).
    ``warmup`` untimed calls of each step come first. ``clocks``: names from :data:`CLOCKS`,
    ``auto`` being ``events`` on CUDA and ``wall`` elsewhere; ``events`` needs CUDA. With
    ``max_s``, no round starts after that many seconds once three rounds are done.
    """
    device = torch.device(device)
    cuda = device.type == "cuda"
    clocks = tuple(("events" if cuda else "wall") if c == "auto" else c for c in clocks)
    if not set(clocks) <= set(CLOCKS) or ("events" in clocks and not cuda):
        raise ValueError(f"clocks must be from {CLOCKS} (events on CUDA only), got {clocks} on {device}")
    for step in steps.values():
        for _ in range(warmup):
            step()
    _sync(device)
    out: dict[str, dict[str, list[float]]] = {name: {c: [] for c in clocks} for name in steps}
    names = list(steps)
    t_start = time.perf_counter()
    for r in range(repeats):
        if max_s is not None and r >= 3 and time.perf_counter() - t_start > max_s:
            break
        for name in (names[::-1] if alternate and r % 2 else names):
            if before_block is not None:
                before_block(name)
            if untimed_first:
                steps[name]()
            block_ms: dict[str, list[float]] = {c: [] for c in clocks}
            for _ in range(block):
                for c, ms in _time_one(steps[name], device, clocks).items():
                    block_ms[c].append(ms)
            for c in clocks:
                out[name][c].append(statistics.median(block_ms[c]))
    return out


def _time_one(step: Callable[[], object], device: torch.device, clocks: tuple[str, ...]) -> dict[str, float]:
    """One call of ``step`` under every clock asked for (see :data:`CLOCKS`)."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
    start = end = None
    if "events" in clocks:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    t0 = time.perf_counter()
    if start is not None:
        start.record()
    step()
    if end is not None:
        end.record()
    t1 = time.perf_counter()
    if end is not None:
        end.synchronize()
    elif cuda and "wall" in clocks:
        torch.cuda.synchronize(device)
    t2 = time.perf_counter()
    got = {"host": (t1 - t0) * 1e3, "wall": (t2 - t0) * 1e3}
    if start is not None:
        got["events"] = start.elapsed_time(end)
    return {c: got[c] for c in clocks}


def time_step(step: Callable[[], object], *, repeats: int, device: torch.device | str = "cpu", **kw: Any) -> list[float]:
    """:func:`time_steps` of one step under one clock (``clock=``, default ``auto``): its samples in ms."""
    clock = kw.pop("clock", "auto")
    (samples,) = time_steps({"step": step}, repeats=repeats, device=device, clocks=(clock,), **kw)["step"].values()
    return samples


def time_calls(fn: LossFn, x: torch.Tensor, t: torch.Tensor, mode: str, repeats: int) -> dict[str, Any]:
    """Time ``repeats`` calls (already warmed up): CUDA events on a GPU, perf_counter on a CPU."""

    def step() -> None:
        loss = _call(fn, x, t, mode)
        del loss

    samples = time_step(step, repeats=repeats, device=x.device)
    x.grad = None
    return summarize(samples)


def copy_bandwidth(device: torch.device | str, nbytes: int = 1 << 30, repeats: int = 20) -> dict[str, Any]:
    """Device-to-device copy bandwidth (read + write bytes / time), the roofline's ceiling."""
    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError(f"copy_bandwidth measures a CUDA device, got {device}")
    free, _ = torch.cuda.mem_get_info(device)
    nbytes = int(min(nbytes, free // 4))
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    samples = time_step(lambda: dst.copy_(src), repeats=repeats, device=device, warmup=3)
    med = statistics.median(samples)
    src = dst = None  # noqa: F841 - freed before empty_cache
    torch.cuda.empty_cache()
    return {"bytes": nbytes, "median_ms": med, "GBps": 2 * nbytes / (med * 1e-3) / 1e9, "method": "dst.copy_(src), read + write"}


# --------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------


def read_rss() -> tuple[int, int] | None:
    """(VmRSS, VmHWM) of this process in bytes from /proc/self/status; None off Linux."""
    try:
        with open("/proc/self/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def reset_hwm() -> bool:
    """Reset VmHWM to the current RSS (Linux: write 5 to /proc/self/clear_refs). True if it worked."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    now = read_rss()
    return now is not None and now[1] <= now[0] + (1 << 20)


_LIBC = None


def trim_heap() -> None:
    """Give freed heap pages back to the OS (glibc ``malloc_trim``), so RSS starts from live data."""
    global _LIBC
    gc.collect()
    try:
        if _LIBC is None:
            _LIBC = ctypes.CDLL("libc.so.6")
        _LIBC.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _empty_backend_caches() -> None:
    """Free the released buffers backend ``native`` keeps for its next call (when it is loaded)."""
    from ..backends import native

    if native.unavailable_reason() is None:
        native.empty_cache()


def maxrss_bytes() -> int:
    """``getrusage`` high-water RSS of this process (KiB on Linux), in bytes."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_memory(fn: LossFn, x: torch.Tensor, t: torch.Tensor, mode: str) -> dict[str, Any]:
    """Peak memory of one call above what is resident just before it (see the module docstring)."""
    x.grad = None
    if x.device.type == "cuda":
        _sync(x.device)
        gc.collect()
        base = torch.cuda.memory_allocated(x.device)
        torch.cuda.reset_peak_memory_stats(x.device)
        loss = _call(fn, x, t, mode)
        _sync(x.device)
        peak = torch.cuda.max_memory_allocated(x.device)
        value = float(loss.detach())
        del loss
        x.grad = None
        return {"peak_bytes": peak - base, "base_bytes": base, "loss": value,
                "method": "cuda max_memory_allocated - memory_allocated before"}
    _empty_backend_caches()
    trim_heap()
    if not reset_hwm():
        loss = _call(fn, x, t, mode)
        return {"peak_bytes": None, "loss": float(loss.detach()),
                "method": "unavailable: cannot reset VmHWM (/proc/self/clear_refs)"}
    before = read_rss()
    loss = _call(fn, x, t, mode)
    after = read_rss()
    value = float(loss.detach())
    del loss
    x.grad = None
    return {
        "peak_bytes": after[1] - before[0],
        "base_bytes": before[0],
        "loss": value,
        "method": "VmHWM (reset via /proc/self/clear_refs) - VmRSS before, after malloc_trim",
    }


# --------------------------------------------------------------------------------------------
# One measurement
# --------------------------------------------------------------------------------------------


def _failure(exc: BaseException) -> tuple[str, str]:
    msg = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}".strip()
    if len(msg) > 300:
        msg = msg[:297] + "..."
    unsupported = isinstance(exc, RuntimeError) and "cannot run" in str(exc)
    return ("unsupported" if unsupported else "failed"), msg


def measure_one(spec: dict[str, Any]) -> dict[str, Any]:
    """Measure one (shape, backend[, compiled]) and return a JSON-able dict.

    ``spec`` keys: ``shape``, ``device``, ``backend``, ``compiled`` (bool), ``repeats``,
    ``warmup``, ``modes`` (subset of MODES), ``memory`` (bool), ``seed``, ``validate``.
    A failure (unsupported shape, compile error, out of memory) gives ``status`` "unsupported" or
    "failed" with a ``reason``; it never raises.
    """
    device = torch.device(spec["device"])
    shape = tuple(spec["shape"])
    modes = list(spec.get("modes", MODES))
    out: dict[str, Any] = {
        "backend": spec["backend"],
        "compiled": bool(spec.get("compiled", False)),
        "shape": list(shape),
        "device": str(device),
        "status": "ok",
        "time": {},
        "memory": {},
    }
    x = t = fn = None
    try:
        if spec.get("threads"):
            torch.set_num_threads(int(spec["threads"]))
        out["threads"] = torch.get_num_threads()
        x, t = make_inputs(shape, device, spec.get("seed", 0))
        _sync(device)
        out["input_bytes"] = x.numel() * x.element_size() + t.numel() * t.element_size()
        # First call, in a fresh process (CPU default): its high-water mark above the inputs is
        # "the high-water resident set of a fresh process" (docs/loss.md section 8), one-time costs (imports, JIT,
        # compilation, caches) included.
        hwm_ok = False
        if device.type == "cpu":
            trim_heap()
            out["rss_after_inputs_bytes"] = read_rss()[0] if read_rss() else None
            hwm_ok = reset_hwm()
        else:
            base_in = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
        fn = build_loss_fn(spec["backend"], out["compiled"], spec.get("validate", False))
        t0 = time.perf_counter()
        _call(fn, x, t, "fwdbwd")
        _sync(device)
        out["first_call_s"] = time.perf_counter() - t0  # includes compilation / JIT
        if device.type == "cpu":
            out["first_call_peak_bytes"] = read_rss()[1] - out["rss_after_inputs_bytes"] if hwm_ok else None
        else:
            out["first_call_peak_bytes"] = torch.cuda.max_memory_allocated(device) - base_in
        for _ in range(max(0, int(spec.get("warmup", 1)) - 1)):
            _call(fn, x, t, "fwdbwd")
        _sync(device)
        if spec.get("memory", True):
            for mode in modes:
                out["memory"][mode] = peak_memory(fn, x, t, mode)
                out["loss"] = out["memory"][mode].pop("loss")
            base = out["memory"][modes[0]].get("base_bytes")
            if "rss_after_inputs_bytes" in out and base is not None:
                # kept by the process after warm-up (caches, lazily loaded code, compiled graphs);
                # peak above the RSS right after the inputs = peak_bytes + this
                out["retained_after_warmup_bytes"] = base - out["rss_after_inputs_bytes"]
        else:
            out["loss"] = float(_call(fn, x, t, "fwd").detach())
        for mode in modes:
            out["time"][mode] = time_calls(fn, x, t, mode, int(spec.get("repeats", 5)))
    except Exception as exc:  # a row that cannot run is reported, not fatal
        out["status"], out["reason"] = _failure(exc)
        if out["status"] == "failed":
            out["traceback"] = traceback.format_exc(limit=8)
    finally:
        del x, t, fn
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if device.type == "cpu":
        out["ru_maxrss_bytes"] = maxrss_bytes()
    return out


def measure_series(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Scaling study for one backend: ``measure_one`` on each of ``spec["shapes"]``, in order.

    The shapes run in one process, ascending; on a CPU the peak is still per shape because VmHWM
    is reset and the heap trimmed before each measured call.
    """
    results = []
    for shape in spec["shapes"]:
        one = dict(spec, shape=shape)
        one.pop("shapes")
        res = measure_one(one)
        results.append(res)
        _emit(res)
    return results


def phase_timeline(spec: dict[str, Any]) -> dict[str, Any]:
    """Memory per phase (inputs, forward, backward) of one call, for the timeline plot.

    CPU: resident-set high-water mark and current RSS after each phase, in bytes above the RSS
    before the inputs were made (VmHWM reset before each phase). CUDA: the allocator's event
    trace from ``torch.cuda.memory._record_memory_history`` (allocated bytes after each
    alloc/free event), plus the event index at which forward ended.
    """
    device = torch.device(spec["device"])
    shape = tuple(spec["shape"])
    out: dict[str, Any] = {"backend": spec["backend"], "shape": list(shape), "device": str(device), "status": "ok"}
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    try:
        fn = build_loss_fn(spec["backend"])
        # Warm up on the same shape first: imports, code pages, JIT compilation are not phases.
        x, t = make_inputs(shape, device, spec.get("seed", 0))
        _call(fn, x, t, "fwdbwd")
        _sync(device)
        del x, t
        if device.type == "cuda":
            out.update(_cuda_trace(fn, shape, device, spec.get("seed", 0)))
        else:
            out.update(_cpu_phases(fn, shape, device, spec.get("seed", 0)))
    except Exception as exc:
        out["status"], out["reason"] = _failure(exc)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def _cpu_phases(fn: LossFn, shape, device, seed) -> dict[str, Any]:
    trim_heap()
    trim_heap()  # a second pass releases what the first pass's collection freed
    if not reset_hwm():
        raise RuntimeError("cannot reset VmHWM via /proc/self/clear_refs: no CPU memory timeline")
    start = read_rss()[0]
    phases = []

    def mark(name: str) -> None:
        hwm = read_rss()[1]
        trim_heap()  # what is still live after the phase, without freed-but-kept heap pages
        rss = read_rss()[0]
        phases.append({"phase": name, "hwm_bytes": hwm - start, "rss_bytes": rss - start})
        reset_hwm()

    x, t = make_inputs(shape, device, seed)
    mark("inputs")
    loss = fn(x, t)
    mark("forward")
    loss.backward()
    mark("backward")
    del loss, x, t
    mark("freed")
    return {"phases": phases, "start_rss_bytes": start, "method": "VmHWM per phase (reset between phases) and VmRSS after it (heap trimmed), above VmRSS at start"}


def _cuda_trace(fn: LossFn, shape, device, seed) -> dict[str, Any]:
    from torch.cuda import memory as cmem

    x, t = make_inputs(shape, device, seed)
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    cmem._record_memory_history(enabled="all", context="alloc", stacks="python", max_entries=200_000)
    try:
        loss = fn(x, t)
        torch.cuda.synchronize(device)
        n_fwd = _trace_length(cmem._snapshot(), device)
        loss.backward()
        torch.cuda.synchronize(device)
        del loss
        x.grad = None
        torch.cuda.synchronize(device)
        snap = cmem._snapshot()
    finally:
        cmem._record_memory_history(enabled=None)
    events = _device_trace(snap, device)
    curve, alloc = [], 0
    acts = {e.get("action") for e in events}
    free_action = "free_completed" if "free_completed" in acts else "free_requested"
    for e in events:
        if e.get("action") == "alloc":
            alloc += int(e.get("size", 0))
        elif e.get("action") == free_action:
            alloc -= int(e.get("size", 0))
        else:
            continue
        curve.append(alloc)
    # Events recorded before this call (e.g. the inputs) are not in the window: the curve starts
    # at 0 = memory_allocated() with the inputs resident.
    n_fwd_curve = sum(1 for e in events[:n_fwd] if e.get("action") in ("alloc", free_action))
    return {
        "allocated_bytes": curve,
        "forward_end_index": n_fwd_curve,
        "base_bytes": base,
        "peak_bytes": max(curve) if curve else 0,
        "method": "torch.cuda.memory._record_memory_history: allocated bytes above memory_allocated() "
        "before the call, after each alloc/free event",
        "snapshot": snap,
    }


def _device_trace(snap: dict, device: torch.device) -> list[dict]:
    traces = snap.get("device_traces", [])
    idx = device.index if device.index is not None else torch.cuda.current_device()
    return list(traces[idx]) if idx < len(traces) else []


def _trace_length(snap: dict, device: torch.device) -> int:
    return len(_device_trace(snap, device))


# --------------------------------------------------------------------------------------------
# Subprocess entry point
# --------------------------------------------------------------------------------------------


def _emit(result: dict[str, Any]) -> None:
    sys.stdout.write(RESULT_PREFIX + json.dumps(result, default=str) + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    """``python -m scc_fast.benchmark.measure '{"kind": "one"|"series"|"timeline", ...}'``."""
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(argv[0])
    kind = spec.pop("kind", "one")
    if kind == "series":
        measure_series(spec)  # emits one line per shape as it goes
    elif kind == "timeline":
        _emit(phase_timeline(spec))
    else:
        _emit(measure_one(spec))
    return 0


if __name__ == "__main__":
    sys.exit(main())
