"""Running the three studies (cases, scaling, timeline) and writing their files."""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import pickle
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import measure, report
from .cases import Case

__all__ = ["Config", "run_cases", "run_scaling", "run_timeline", "environment", "write_reports", "RESULT_FILES"]

#: The JSON files the studies write, which ``--report-only`` reads back.
RESULT_FILES = ("results.json", "scaling.json", "timeline.json")

_PKG_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Config:
    device: str
    out: Path
    cases: list[Case]
    labels: list[str]
    quick: bool = False
    repeats: int = 5
    warmup: int = 2
    isolation: str = "process"
    job_timeout: float = 300.0
    time_budget: float | None = None
    validate: bool = False
    threads: int | None = None
    plots: bool = True
    compile_reserve: float = 0.0  # seconds of budget a compiled row needs to be started
    compile_skip: dict[str, str] = field(default_factory=dict)  # case name -> reason not to compile it
    label_notes: dict[str, str] = field(default_factory=dict)  # backends left out, and why
    scaling_sizes: dict[int, tuple[tuple[int, int], list[int]]] = field(default_factory=dict)
    scaling_repeats: int = 3
    command: str = ""
    started: float = field(default_factory=time.monotonic)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def budget_left(self) -> float | None:
        return None if self.time_budget is None else self.time_budget - self.elapsed()


def split_label(label: str) -> tuple[str, bool]:
    """Row label -> (registry backend, compiled)."""
    return ("reference", True) if label == "reference-compile" else (label, False)


def progress(cfg: Config, msg: str) -> None:
    m, s = divmod(int(cfg.elapsed()), 60)
    print(f"[bench {m}:{s:02d}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------------------------


def _commit() -> str:
    """The commit measured: the checkout's ``.git_commit`` where one was written (a copy whose
    .git is missing or stale, as on the device machine: GPU run 4 read a stale HEAD there), else
    git's HEAD, marked when the tracked tree differs from it."""
    f = _PKG_ROOT / ".git_commit"
    if f.exists():
        return f.read_text().strip()
    try:
        sha = subprocess.run(["git", "-C", str(_PKG_ROOT), "rev-parse", "--short=12", "HEAD"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(_PKG_ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        if sha:
            return sha + (" (+ uncommitted changes)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(cfg: Config) -> dict[str, Any]:
    """Device, versions, date, commit and command: printed with every table."""
    import torch

    try:
        from importlib.metadata import version

        triton_version = version("triton")
    except Exception:  # not installed
        triton_version = "not installed"
    ncpu = os.cpu_count()
    meta: dict[str, Any] = {
        "device": cfg.device,
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": cfg.command,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton_version,
        "platform": platform.platform(),
        "cpu": f"{_cpu_name()}, {ncpu} logical cores",
        "torch_threads": cfg.threads or torch.get_num_threads(),
        "commit": _commit(),
        "repeats": cfg.repeats,
        "warmup": cfg.warmup,
        "quick": cfg.quick,
        "isolation": cfg.isolation,
        "labels": cfg.labels,
        "left_out": cfg.label_notes,
        "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET", ""),
    }
    if cfg.device == "cuda":
        meta["device_name"] = torch.cuda.get_device_name()
        meta["cuda"] = torch.version.cuda
    else:
        meta["device_name"] = f"CPU: {meta['cpu']}"
    return meta


# --------------------------------------------------------------------------------------------
# Jobs: in-process or a fresh subprocess
# --------------------------------------------------------------------------------------------


def _run_subprocess(spec: dict[str, Any], timeout: float) -> tuple[list[dict], str | None]:
    """Run ``measure.main`` in a fresh interpreter; returns (results, failure reason or None)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(_PKG_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.Popen(
        [sys.executable, "-m", "scc_fast.benchmark.measure", json.dumps(spec)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    failure = None
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        failure = f"timed out after {timeout:.0f} s (--job-timeout)"
    except BaseException:  # interrupted: leave no worker behind
        proc.kill()
        proc.wait()
        raise
    results = [json.loads(line[len(measure.RESULT_PREFIX):]) for line in stdout.splitlines()
               if line.startswith(measure.RESULT_PREFIX)]
    if failure is None and proc.returncode != 0:
        tail = " | ".join(stderr.strip().splitlines()[-3:])
        failure = f"worker exited with code {proc.returncode}: {tail}"
    return results, failure


def _run(cfg: Config, spec: dict[str, Any]) -> tuple[list[dict], str | None]:
    kind = spec.get("kind", "one")
    if cfg.isolation == "process":
        timeout = cfg.job_timeout
        left = cfg.budget_left()
        if left is not None:
            timeout = max(30.0, min(timeout, left + 60.0))
        return _run_subprocess(spec, timeout)
    spec = dict(spec)
    spec.pop("kind", None)
    if kind == "timeline":
        return [measure.phase_timeline(spec)], None
    return [measure.measure_one(spec)], None


def _skipped(reason: str, status: str = "skipped") -> dict[str, Any]:
    return {"status": status, "reason": reason, "time": {}, "memory": {}}


def _budget_exhausted(cfg: Config) -> str | None:
    left = cfg.budget_left()
    if left is not None and left <= 0:
        return f"not run: the time budget (--time-budget {cfg.time_budget:.0f} s) was used up"
    return None


# --------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    tmp.replace(path)


def run_cases(cfg: Config) -> dict[str, Any]:
    """The benchmark cases x every row label; writes results.json / results.md (after every row) and cases.png."""
    cfg.out.mkdir(parents=True, exist_ok=True)
    meta = environment(cfg)
    meta["study"] = "cases"
    if cfg.device == "cuda":
        progress(cfg, "measuring device-to-device copy bandwidth")
        meta["copy_bandwidth"] = measure.copy_bandwidth("cuda")
        progress(cfg, f"copy bandwidth {meta['copy_bandwidth']['GBps']:.0f} GB/s")
    meta["auto"] = {c.name: _auto_choice(c, cfg.device) for c in cfg.cases}
    jobs = _job_order(cfg)
    rows: list[dict] = []
    data = {"meta": meta, "cases": [c.as_dict() for c in cfg.cases], "rows": rows}
    for i, (case, label) in enumerate(jobs):
        backend, compiled = split_label(label)
        tag = f"({i + 1}/{len(jobs)}) {case.name} {'x'.join(map(str, case.shape))} {label}"
        reason = cfg.compile_skip.get(case.name) if compiled else None
        reason = reason or _budget_exhausted(cfg)
        left = cfg.budget_left()
        if reason is None and compiled and left is not None and left < cfg.compile_reserve:
            reason = (f"not run: {max(left, 0):.0f} s were left of the time budget (--time-budget "
                      f"{cfg.time_budget:.0f} s) and compiling needs about {cfg.compile_reserve:.0f} s")
        if reason is not None:
            res = _skipped(reason)
        else:
            progress(cfg, f"{tag} ...")
            spec = {"kind": "one", "shape": list(case.shape), "device": cfg.device, "backend": backend,
                    "compiled": compiled, "repeats": cfg.repeats, "warmup": cfg.warmup + (2 if compiled else 0),
                    "modes": list(measure.MODES), "memory": True, "validate": cfg.validate, "threads": cfg.threads}
            got, failure = _run(cfg, spec)
            res = got[0] if got else _skipped(failure or "no result", "failed")
        res.update(case=case.as_dict(), label=label, device=res.get("device", cfg.device), shape=list(case.shape))
        rows.append(res)
        report.add_derived(rows, meta)
        progress(cfg, f"{tag}: {_row_summary(res)}")
        write_case_files(cfg.out, data, plots=False)
    if cfg.plots:
        write_case_files(cfg.out, data, plots=True)
    return data


def _job_order(cfg: Config) -> list[tuple[Case, str]]:
    """Eager rows first, compiled rows after the eager rows of the last case that is compiled.

    If a --time-budget runs out, the cheap eager rows of the first cases are there, and so are
    the compiled baselines of the cases that get one (on a CPU --quick, the acceptance shapes).
    """
    eager = [lb for lb in cfg.labels if lb != "reference-compile"]
    compiled = "reference-compile" in cfg.labels
    with_compile = [i for i, c in enumerate(cfg.cases) if compiled and c.name not in cfg.compile_skip]
    cut = with_compile[-1] + 1 if with_compile else len(cfg.cases)
    jobs = [(c, lb) for c in cfg.cases[:cut] for lb in eager]
    jobs += [(cfg.cases[i], "reference-compile") for i in with_compile]
    jobs += [(c, lb) for c in cfg.cases[cut:] for lb in eager]
    if compiled:  # compile rows that are skipped, listed last with their reason
        jobs += [(c, "reference-compile") for c in cfg.cases if c.name in cfg.compile_skip]
    return jobs


def _auto_choice(case: Case, device: str) -> str:
    """The backend ``backend="auto"`` resolves to for this case's tensors (no data touched)."""
    import torch

    from .. import explain_backend

    probs = torch.empty(case.shape, device=device)
    labels = torch.empty((case.shape[0], *case.spatial), dtype=torch.long, device=device)
    try:
        return explain_backend(probs, labels).splitlines()[0].removeprefix("backend: ").strip()
    except Exception as exc:  # no backend can run it
        return f"none ({exc})"
    finally:
        del probs, labels


def _row_summary(r: dict) -> str:
    if r.get("status") != "ok":
        return f"{r.get('status')}: {r.get('reason')}"
    t = r["time"].get("fwdbwd", {}).get("median_ms")
    p = (r["memory"].get("fwdbwd") or {}).get("peak_bytes")
    sp = r.get("derived", {}).get("speedup", {}).get("fwdbwd")
    s = f"fwd+bwd {t:.2f} ms"
    if p is not None:
        s += f", peak {p / 2**20:.1f} MiB"
    if sp is not None:
        s += f", {sp:.2f}x vs reference"
    return s


def write_case_files(out: Path, data: dict, plots: bool = True) -> list[Path]:
    report.add_derived(data["rows"], data["meta"])
    paths = [out / "results.json", out / "results.md"]
    _write_json(paths[0], data)
    paths[1].write_text(report.cases_markdown(data))
    if plots and any(r.get("status") == "ok" for r in data["rows"]):
        paths.append(report.plot_cases(data, out / "cases.png"))
    return paths


# --------------------------------------------------------------------------------------------
# Scaling
# --------------------------------------------------------------------------------------------


def run_scaling(cfg: Config) -> dict[str, Any]:
    """Time and memory against N per rank and backend, with growth exponents; scaling.{json,md,png}."""
    cfg.out.mkdir(parents=True, exist_ok=True)
    meta = environment(cfg)
    meta["study"] = "scaling"
    meta["repeats"] = cfg.scaling_repeats
    labels = [lb for lb in cfg.labels if lb != "reference-compile"]
    points: list[dict] = []

    def add(nd: int, label: str, shape: list[int], r: dict) -> None:
        r.update(ndim=nd, label=label, shape=shape, voxels=math.prod(shape[2:]))
        points.append(r)
        if r.get("status") == "ok":
            progress(cfg, f"  {'x'.join(map(str, shape))}: {_row_summary(r)}")
        # after every point: a run killed from outside keeps what it measured
        _write_json(cfg.out / "scaling.json", _scaling_data(cfg, meta, labels, points))

    for nd, ((b, c), sizes) in sorted(cfg.scaling_sizes.items()):
        for label in labels:
            shapes = [[b, c] + [s] * nd for s in sizes]
            spec = {"kind": "series", "shapes": shapes, "device": cfg.device, "backend": label,
                    "compiled": False, "repeats": cfg.scaling_repeats, "warmup": max(1, cfg.warmup - 1),
                    "modes": ["fwdbwd"], "memory": True, "validate": cfg.validate, "threads": cfg.threads}
            reason = _budget_exhausted(cfg)
            if reason is None:
                progress(cfg, f"scaling {nd}D {label}: {b}x{c}x{sizes[0]}^{nd} .. {sizes[-1]}^{nd}")
            if reason is not None:
                for shape in shapes:
                    add(nd, label, shape, _skipped(reason))
            elif cfg.isolation == "none":  # one shape at a time, the budget checked before each
                for shape in shapes:
                    reason = _budget_exhausted(cfg)
                    one = {k: v for k, v in spec.items() if k not in ("kind", "shapes")}
                    add(nd, label, shape, _skipped(reason) if reason else measure.measure_one(dict(one, shape=shape)))
            else:  # one fresh process per (rank, backend), shapes ascending
                got, failure = _run(cfg, spec)
                got = got + [_skipped(failure or "no result", "failed") for _ in shapes[len(got):]]
                for shape, r in zip(shapes, got):
                    add(nd, label, shape, r)
    data = _scaling_data(cfg, meta, labels, points)
    _write_json(cfg.out / "scaling.json", data)
    (cfg.out / "scaling.md").write_text(report.scaling_markdown(data))
    if cfg.plots and any(p.get("status") == "ok" for p in points):
        report.plot_scaling(data, cfg.out / "scaling.png")
    print(format_exponents(data["fits"]))
    return data


def _scaling_data(cfg: Config, meta: dict, labels: list[str], points: list[dict]) -> dict[str, Any]:
    """Points plus the growth-exponent fits of every (rank, backend) measured so far."""
    fits = []
    for nd, ((b, c), sizes) in sorted(cfg.scaling_sizes.items()):
        for label in labels:
            if not any(p["ndim"] == nd and p["label"] == label for p in points):
                continue
            pts = [p for p in points if p["ndim"] == nd and p["label"] == label and p.get("status") == "ok"]
            n = [p["voxels"] for p in pts]
            t = [p["time"]["fwdbwd"]["median_ms"] for p in pts]
            m = [(p["memory"].get("fwdbwd") or {}).get("peak_bytes") for p in pts]
            half = len(pts) // 2
            fits.append({
                "ndim": nd, "label": label, "batch_channels": f"{b}x{c}",
                "n_min": min(n) if n else None, "n_max": max(n) if n else None,
                "time": report.fit_exponent(n, t), "memory": report.fit_exponent(n, m),
                "time_large": report.fit_exponent(n[half:], t[half:]) if len(pts) >= 4 else None,
                "memory_large": report.fit_exponent(n[half:], m[half:]) if len(pts) >= 4 else None,
                "largest_ms": t[-1] if t else None,
            })
    return {"meta": meta, "points": points, "fits": fits}


def format_exponents(fits: list[dict]) -> str:
    lines = ["growth exponents (slope of log time / log peak memory against log N; all sizes / largest half):"]
    for f in fits:
        def e(x):
            return "   -" if not x else f"{x['exponent']:5.2f}"

        lines.append(f"  {f['ndim']}D {f['label']:18s} time {e(f['time'])} / {e(f['time_large'])}   "
                     f"memory {e(f['memory'])} / {e(f['memory_large'])}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Timeline
# --------------------------------------------------------------------------------------------


def run_timeline(cfg: Config) -> dict[str, Any]:
    """Memory over one forward + backward for the reference and each backend; timeline.{json,md,png}."""
    cfg.out.mkdir(parents=True, exist_ok=True)
    meta = environment(cfg)
    meta["study"] = "timeline"
    case = cfg.cases[0]
    labels = [lb for lb in cfg.labels if lb != "reference-compile"]
    rows = []
    for label in labels:
        reason = _budget_exhausted(cfg)
        if reason is not None:
            r = _skipped(reason)
        else:
            progress(cfg, f"timeline {case.name} {'x'.join(map(str, case.shape))} {label}")
            spec = {"kind": "timeline", "shape": list(case.shape), "device": cfg.device, "backend": label,
                    "threads": cfg.threads}
            got, failure = _run(cfg, spec)
            r = got[0] if got else _skipped(failure or "no result", "failed")
        r["label"] = label
        snap = r.pop("snapshot", None)
        if snap is not None:
            # Open with https://pytorch.org/memory_viz for the full allocator view.
            with open(cfg.out / f"timeline_{label}.pickle", "wb") as f:
                pickle.dump(snap, f)
        rows.append(r)
        _write_json(cfg.out / "timeline.json", {"meta": meta, "case": case.as_dict(), "rows": rows})
    data = {"meta": meta, "case": case.as_dict(), "rows": rows}
    _write_json(cfg.out / "timeline.json", data)
    (cfg.out / "timeline.md").write_text(report.timeline_markdown(data))
    if cfg.plots and any(r.get("status") == "ok" for r in rows):
        report.plot_timeline(data, cfg.out / "timeline.png")
    print(report.timeline_markdown(data))
    return data


def write_reports(out: Path, plots: bool = True) -> list[Path]:
    """Rewrite the Markdown (and with ``plots`` the PNG) files from the JSON files in ``out`` (``--report-only``)."""
    written = []
    if (out / "results.json").exists():
        written += write_case_files(out, json.loads((out / "results.json").read_text()), plots=plots)
    if (out / "scaling.json").exists():
        data = json.loads((out / "scaling.json").read_text())
        (out / "scaling.md").write_text(report.scaling_markdown(data))
        written.append(out / "scaling.md")
        if plots:
            written.append(report.plot_scaling(data, out / "scaling.png"))
    if (out / "timeline.json").exists():
        data = json.loads((out / "timeline.json").read_text())
        (out / "timeline.md").write_text(report.timeline_markdown(data))
        written.append(out / "timeline.md")
        if plots:
            written.append(report.plot_timeline(data, out / "timeline.png"))
    return written
