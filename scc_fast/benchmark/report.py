"""Turning benchmark results into derived numbers, Markdown tables, PNG plots and exponent fits."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

__all__ = [
    "fit_exponent",
    "add_derived",
    "cases_markdown",
    "scaling_markdown",
    "timeline_markdown",
    "plot_cases",
    "plot_scaling",
    "plot_timeline",
    "plots_unavailable",
    "PLOTS_HINT",
]

MiB = 1024.0 * 1024.0
MODE_NAMES = {"fwd": "forward", "fwdbwd": "forward + backward"}


# --------------------------------------------------------------------------------------------
# Numbers
# --------------------------------------------------------------------------------------------


def fit_exponent(sizes: list[float], values: list[float]) -> dict[str, float] | None:
    """Least-squares fit of log(value) = a * log(size) + b: the growth exponent ``a``.

    Non-positive or missing values are dropped. Returns ``{"exponent", "intercept", "r2", "points"}``
    or None with fewer than two usable points.
    """
    pts = [(math.log(s), math.log(v)) for s, v in zip(sizes, values) if s and v and s > 0 and v > 0]
    if len(pts) < 2 or len({p[0] for p in pts}) < 2:
        return None
    n = len(pts)
    mx = sum(p[0] for p in pts) / n
    my = sum(p[1] for p in pts) / n
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    sxy = sum((p[0] - mx) * (p[1] - my) for p in pts)
    slope = sxy / sxx
    intercept = my - slope * mx
    ss_tot = sum((p[1] - my) ** 2 for p in pts)
    ss_res = sum((p[1] - (slope * p[0] + intercept)) ** 2 for p in pts)
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0
    return {"exponent": slope, "intercept": intercept, "r2": r2, "points": n}


def _median(row: dict, mode: str) -> float | None:
    t = row.get("time", {}).get(mode)
    return t["median_ms"] if t else None


def _peak(row: dict, mode: str) -> int | None:
    m = row.get("memory", {}).get(mode)
    return m.get("peak_bytes") if m else None


def add_derived(rows: list[dict], meta: dict) -> None:
    """Ratios against the reference (eager and compiled) of the same case, bandwidth, roofline.

    ``speedup[mode]`` = reference time / this time; ``memory_ratio[mode]`` = reference peak / this
    peak (above 1: this row needs less). On CUDA, bytes that must move are the logits and labels
    read once (forward) plus the gradient written once (forward + backward); the roofline
    fraction divides the achieved bandwidth by the device-to-device copy bandwidth.
    """
    by_case: dict[str, dict[str, dict]] = {}
    for r in rows:
        if r.get("status") == "ok":
            by_case.setdefault(r["case"]["name"], {})[r["label"]] = r
    copy_gbps = (meta.get("copy_bandwidth") or {}).get("GBps")
    for r in rows:
        if r.get("status") != "ok":
            continue
        refs = by_case.get(r["case"]["name"], {})
        d: dict[str, Any] = {"speedup": {}, "speedup_vs_compiled": {}, "memory_ratio": {}, "loss_rel_diff": None}
        for mode in r.get("time", {}):
            med = _median(r, mode)
            for key, label in (("speedup", "reference"), ("speedup_vs_compiled", "reference-compile")):
                ref_med = _median(refs[label], mode) if label in refs else None
                if ref_med and med:
                    d[key][mode] = ref_med / med
            ref_peak = _peak(refs["reference"], mode) if "reference" in refs else None
            peak = _peak(r, mode)
            # Below 1 MiB a CPU peak is page-granularity noise: no ratio.
            floor = 1 if r["device"].startswith("cuda") else MiB
            if ref_peak is not None and peak is not None and peak >= floor and ref_peak >= floor:
                d["memory_ratio"][mode] = ref_peak / peak
        first, ref_first = r.get("first_call_peak_bytes"), refs.get("reference", {}).get("first_call_peak_bytes")
        floor = 1 if r["device"].startswith("cuda") else MiB
        if first is not None and ref_first is not None and first >= floor and ref_first >= floor:
            d["first_call_memory_ratio"] = ref_first / first
        if "reference" in refs and "loss" in r and "loss" in refs["reference"]:
            ref_loss = refs["reference"]["loss"]
            d["loss_rel_diff"] = abs(r["loss"] - ref_loss) / max(abs(ref_loss), 1e-30)
        if r["device"].startswith("cuda"):
            shape = r["shape"]
            logits = math.prod(shape) * 4
            labels = shape[0] * math.prod(shape[2:]) * 8
            moved = {"fwd": logits + labels, "fwdbwd": 2 * logits + labels}
            d["bytes_moved"] = moved
            d["GBps"], d["roofline"] = {}, {}
            for mode in r.get("time", {}):
                med = _median(r, mode)
                if med:
                    gbps = moved[mode] / (med * 1e-3) / 1e9
                    d["GBps"][mode] = gbps
                    if copy_gbps:
                        d["roofline"][mode] = gbps / copy_gbps
        r["derived"] = d


# --------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------


def _fmt_ms(t: dict | None) -> str:
    if not t:
        return "-"
    med = t["median_ms"]
    prec = 3 if med < 10 else 1 if med < 1000 else 0

    def f(v: float) -> str:
        return f"{v:.{prec}f}"

    return f"{f(med)} [{f(t['q1_ms'])}-{f(t['q3_ms'])}]"


def _fmt_mib(b: int | None) -> str:
    if b is None:
        return "-"
    v = b / MiB
    return f"{v:.0f}" if abs(v) >= 10 else f"{v:.1f}"


def _fmt_ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def meta_lines(meta: dict) -> list[str]:
    dev = meta.get("device_name", meta.get("device", "?"))
    lines = [
        f"- device: **{dev}** ({meta.get('device')}); {meta.get('machine_note', '')}".rstrip("; "),
        f"- versions: python {meta.get('python')}, torch {meta.get('torch')}, triton {meta.get('triton')}; "
        f"torch threads {meta.get('torch_threads')}",
        f"- date {meta.get('date_utc')}, commit {meta.get('commit')}",
        f"- command: `{meta.get('command')}`",
    ]
    if meta.get("copy_bandwidth"):
        cb = meta["copy_bandwidth"]
        lines.append(f"- device-to-device copy bandwidth (roofline ceiling): {cb['GBps']:.0f} GB/s ({cb['method']})")
    return lines


def cases_markdown(data: dict) -> str:
    """The results table: one row per (case, backend), failures with their reasons below it."""
    meta, rows = data["meta"], data["rows"]
    cuda = str(meta.get("device", "")).startswith("cuda")
    out = ["# scc-fast bench", "", *meta_lines(meta), ""]
    out.append(
        f"Logits in, int64 labels, softmax, `scc_loss(..., softmax=True, backend=NAME, validate=False)`, float32. "
        f"Times: median [IQR] in ms over {meta.get('repeats')} calls after {meta.get('warmup')} warm-up calls "
        f"({'CUDA events' if cuda else 'time.perf_counter'}); *fwd* is the forward call of a training step "
        f"(input requires grad), *fwd+bwd* adds `loss.backward()`. Peak (steady state): MiB above what was resident "
        f"just before one call after warm-up ({'torch.cuda.max_memory_allocated' if cuda else 'VmHWM reset before the call'}). "
        f"First-call peak: high-water mark of the first fwd+bwd above the inputs, one-time costs (JIT, compilation, "
        f"caches, lazily loaded code) included ({'max_memory_allocated' if cuda else 'VmHWM'}"
        f"{', a fresh process per row' if meta.get('isolation') == 'process' else ', all rows in one process'}). Speedup = "
        f"reference time / row time (eager / compiled reference, same run); memory = reference peak / row peak. "
        f"Scale: fraction of the benchmark case's elements measured."
    )
    out.append("")
    head = ["case", "shape (scale)", "backend", "fwd ms", "fwd+bwd ms", "speedup fwd+bwd (eager / compiled)",
            "peak MiB fwd / fwd+bwd", "first-call peak MiB", "memory vs eager (steady / first call)"]
    if cuda:
        head += ["GB/s fwd+bwd", "% of copy BW"]
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "---|" * len(head))
    notes: list[str] = []
    case_order = {c["name"]: i for i, c in enumerate(data.get("cases", []))}
    label_order = {lb: i for i, lb in enumerate(meta.get("labels", []))}
    rows = sorted(rows, key=lambda r: (case_order.get(r["case"]["name"], 99), label_order.get(r["label"], 99)))
    for r in rows:
        case = r["case"]
        scale = case["scale_text"]
        cells = [case["name"], f"{'x'.join(map(str, case['shape']))} ({scale})", r["label"]]
        if r.get("status") != "ok":
            notes.append(f"{r['label']} on {case['name']}: {r.get('status')}: {r.get('reason', '')}")
            cells += [f"n/a [{len(notes)}]"] + ["-"] * (len(head) - 4)
        else:
            d = r.get("derived", {})
            cells += [
                _fmt_ms(r["time"].get("fwd")),
                _fmt_ms(r["time"].get("fwdbwd")),
                f"{_fmt_ratio(d.get('speedup', {}).get('fwdbwd'))} / {_fmt_ratio(d.get('speedup_vs_compiled', {}).get('fwdbwd'))}",
                f"{_fmt_mib(_peak(r, 'fwd'))} / {_fmt_mib(_peak(r, 'fwdbwd'))}",
                _fmt_mib(r.get("first_call_peak_bytes")),
                f"{_fmt_ratio(d.get('memory_ratio', {}).get('fwdbwd'))} / {_fmt_ratio(d.get('first_call_memory_ratio'))}",
            ]
            if cuda:
                g = d.get("GBps", {}).get("fwdbwd")
                rf = d.get("roofline", {}).get("fwdbwd")
                cells += ["-" if g is None else f"{g:.0f}", "-" if rf is None else f"{100 * rf:.1f}%"]
            if d.get("loss_rel_diff") is not None and d["loss_rel_diff"] > 1e-4:
                notes.append(f"{r['label']} on {case['name']}: loss differs from the reference by "
                             f"{d['loss_rel_diff']:.2e} (relative)")
        out.append("| " + " | ".join(cells) + " |")
    auto = meta.get("auto") or {}
    if auto:
        out += ["", "`backend=\"auto\"` picks, with its forward + backward against the reference eager:"]
        for case_name, name in auto.items():
            row = next((r for r in rows if r["case"]["name"] == case_name and r["label"] == name
                        and r.get("status") == "ok"), None)
            d = (row or {}).get("derived", {})
            sp, mr = d.get("speedup", {}).get("fwdbwd"), d.get("memory_ratio", {}).get("fwdbwd")
            extra = "" if row is None else (f": {_fmt_ratio(sp)} faster, {_fmt_ratio(mr)} less peak memory"
                                            if sp is not None else ": not compared")
            out.append(f"- {case_name}: {name}{extra}")
    if notes:
        out += ["", *[f"[{i + 1}] {n}" for i, n in enumerate(notes)]]
    return "\n".join(out) + "\n"


def scaling_markdown(data: dict) -> str:
    meta = data["meta"]
    out = ["# scc-fast bench --scaling", "", *meta_lines(meta), ""]
    out.append(
        "Forward + backward, logits in, softmax, int64 labels. N = voxels per image; exponent = slope of "
        "log(time) (or log(peak memory)) against log(N), fitted over all sizes and over the largest half "
        "(small sizes are dominated by fixed costs)."
    )
    out += ["", "| rank | B x C | backend | N range | time exponent (all / large) | memory exponent (all / large) | time at largest N (ms) |",
            "|---|---|---|---|---|---|---|"]
    for f in data["fits"]:
        def e(x):
            return "-" if not x else f"{x['exponent']:.2f}"

        out.append(
            f"| {f['ndim']}D | {f['batch_channels']} | {f['label']} | {f['n_min']}..{f['n_max']} | "
            f"{e(f['time'])} / {e(f['time_large'])} | {e(f['memory'])} / {e(f['memory_large'])} | "
            f"{'-' if f['largest_ms'] is None else format(f['largest_ms'], '.2f')} |"
        )
    out += ["", "Points (median fwd+bwd ms, peak MiB above the inputs):", ""]
    out += ["| rank | backend | shape | ms | peak MiB |", "|---|---|---|---|---|"]
    for p in data["points"]:
        if p.get("status") == "ok":
            out.append(f"| {p['ndim']}D | {p['label']} | {'x'.join(map(str, p['shape']))} | "
                       f"{_fmt_ms(p['time'].get('fwdbwd'))} | {_fmt_mib(_peak(p, 'fwdbwd'))} |")
        else:
            out.append(f"| {p['ndim']}D | {p['label']} | {'x'.join(map(str, p['shape']))} | "
                       f"n/a: {p.get('status')}: {p.get('reason', '')} | - |")
    return "\n".join(out) + "\n"


def timeline_markdown(data: dict) -> str:
    meta = data["meta"]
    out = ["# scc-fast bench --timeline", "", *meta_lines(meta), ""]
    out.append(f"Case {data['case']['name']} {'x'.join(map(str, data['case']['shape']))}, one forward + backward "
               "after a warm-up call on the same shape.")
    out.append("")
    for r in data["rows"]:
        if r.get("status") != "ok":
            out.append(f"- {r['label']}: {r.get('status')}: {r.get('reason', '')}")
        elif "phases" in r:
            parts = ", ".join(f"{p['phase']} high-water {_fmt_mib(p['hwm_bytes'])} MiB (then {_fmt_mib(p['rss_bytes'])})"
                              for p in r["phases"])
            out.append(f"- {r['label']}: {parts}")
        else:
            out.append(f"- {r['label']}: peak {_fmt_mib(r['peak_bytes'])} MiB above the inputs over "
                       f"{len(r['allocated_bytes'])} allocator events (forward ends at event {r['forward_end_index']})")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------


#: What to install for the PNG files; matplotlib is not a base dependency of scc_fast.
PLOTS_HINT = 'pip install "scc_fast[bench]" or matplotlib to get them'


def plots_unavailable() -> str | None:
    """Why the PNG files cannot be drawn here (matplotlib missing or broken), or None if they can."""
    try:
        _plt()
    except ImportError as exc:
        if (exc.name or "").split(".")[0] == "matplotlib":
            return "matplotlib is not installed"
        return f"matplotlib cannot be imported: {exc}"
    return None


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _loglog(ax) -> None:
    from matplotlib.ticker import NullFormatter

    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels collide on short decades
    ax.grid(True, which="both", alpha=0.3)


def _style(label: str, labels: list[str]) -> dict:
    if label == "reference":
        return {"color": "black", "linestyle": "-", "marker": "s"}
    if label == "reference-compile":
        return {"color": "gray", "linestyle": "--", "marker": "s"}
    markers = "o^vD<>ph*"
    i = [lb for lb in labels if not lb.startswith("reference")].index(label) if label in labels else 0
    return {"color": f"C{i}", "linestyle": "-", "marker": markers[i % len(markers)]}


def plot_cases(data: dict, path: Path) -> Path:
    """Time and peak memory (forward + backward) against the number of logits, log-log."""
    plt = _plt()
    rows = [r for r in data["rows"] if r.get("status") == "ok" and "fwdbwd" in r.get("time", {})]
    labels = list(dict.fromkeys(r["label"] for r in data["rows"]))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for label in labels:
        pts = sorted((r["case"]["elements"], r["time"]["fwdbwd"]["median_ms"], _peak(r, "fwdbwd"), r["case"]["name"])
                     for r in rows if r["label"] == label)
        if not pts:
            continue
        st = _style(label, labels)
        axes[0].plot([p[0] for p in pts], [p[1] for p in pts], label=label, **st)
        mem = [(p[0], p[2] / MiB) for p in pts if p[2] is not None and p[2] > 0]
        if mem:
            axes[1].plot([m[0] for m in mem], [m[1] for m in mem], label=label, **st)
    names = {}
    for r in rows:
        names.setdefault(r["case"]["elements"], r["case"]["name"])
    for ax, ylab in ((axes[0], "forward + backward time (ms)"), (axes[1], "peak memory above inputs (MiB)")):
        _loglog(ax)
        ax.set_xlabel("volume size: B x C x voxels (logits)")
        ax.set_ylabel(ylab)
        for x, name in names.items():
            ax.axvline(x, color="0.85", linewidth=0.8, zorder=0)
            ax.annotate(name, (x, 1), xycoords=("data", "axes fraction"), rotation=90, fontsize=7,
                        va="top", ha="right", color="0.4")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"scc-fast bench on {data['meta'].get('device_name', data['meta'].get('device'))}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_scaling(data: dict, path: Path) -> Path:
    """Time and memory against N per rank, one line per backend, with the fitted exponents."""
    plt = _plt()
    ranks = sorted({p["ndim"] for p in data["points"]})
    labels = list(dict.fromkeys(p["label"] for p in data["points"]))
    fig, axes = plt.subplots(len(ranks), 2, figsize=(12, 4.4 * len(ranks)), squeeze=False)
    fits = {(f["ndim"], f["label"]): f for f in data["fits"]}
    for i, nd in enumerate(ranks):
        for label in labels:
            pts = [p for p in data["points"] if p["ndim"] == nd and p["label"] == label and p.get("status") == "ok"]
            if not pts:
                continue
            st = _style(label, labels)
            f = fits.get((nd, label), {})
            te = f.get("time")
            me = f.get("memory")
            n = [p["voxels"] for p in pts]
            axes[i][0].plot(n, [p["time"]["fwdbwd"]["median_ms"] for p in pts],
                            label=f"{label} (N^{te['exponent']:.2f})" if te else label, **st)
            mem = [(p["voxels"], _peak(p, "fwdbwd")) for p in pts]
            mem = [(a, b / MiB) for a, b in mem if b is not None and b > 0]
            if mem:
                axes[i][1].plot([m[0] for m in mem], [m[1] for m in mem],
                                label=f"{label} (N^{me['exponent']:.2f})" if me else label, **st)
        for j, ylab in enumerate(("forward + backward time (ms)", "peak memory above inputs (MiB)")):
            ax = axes[i][j]
            _loglog(ax)
            ax.set_xlabel(f"N = voxels per image ({nd}D)")
            ax.set_ylabel(ylab)
            ax.legend(fontsize=8)
    fig.suptitle(f"scc-fast bench --scaling on {data['meta'].get('device_name', data['meta'].get('device'))}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_timeline(data: dict, path: Path) -> Path:
    """CUDA: allocated bytes vs allocator event; CPU: RSS high-water per phase; one line per backend."""
    plt = _plt()
    rows = [r for r in data["rows"] if r.get("status") == "ok"]
    labels = [r["label"] for r in data["rows"]]
    fig, ax = plt.subplots(figsize=(9, 4.8))
    for r in rows:
        st = _style(r["label"], labels)
        if "allocated_bytes" in r:
            y = [0.0] + [b / MiB for b in r["allocated_bytes"]]
            ax.step(range(len(y)), y, where="post", label=r["label"], color=st["color"], linestyle=st["linestyle"])
            fe = r.get("forward_end_index")
            if fe:
                ax.axvline(fe, color=st["color"], linestyle=":", linewidth=0.8)
            ax.set_xlabel("allocator event index (dotted: end of forward)")
            ax.set_ylabel("allocated MiB above the inputs")
        else:
            phases = ["start"] + [p["phase"] for p in r["phases"]]
            hwm = [0.0] + [p["hwm_bytes"] / MiB for p in r["phases"]]
            rss = [0.0] + [p["rss_bytes"] / MiB for p in r["phases"]]
            ax.plot(phases, hwm, label=f"{r['label']} high-water", **st)
            ax.plot(phases, rss, color=st["color"], linestyle=":", marker=".", label=f"{r['label']} after phase")
            ax.set_xlabel("phase")
            ax.set_ylabel("resident MiB above the start")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    c = data["case"]
    ax.set_title(f"memory timeline, {c['name']} {'x'.join(map(str, c['shape']))} on "
                 f"{data['meta'].get('device_name', data['meta'].get('device'))}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
