"""The tables of ``scc-fast bench gpu-3d``: ``results.md`` and the dispatch table it writes.

``dispatch_table.json`` ranks, per measured case, the accelerated backends that were correct by
their median forward + backward time, with N ranges split between the cases, in the format
:mod:`scc_fast.backends.dispatch` reads (and validates here before writing).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from scc_fast.backends import dispatch

#: The backends the dispatch table ranks; the other rows of gpu-3d are variants for comparison.
ACCELERATED = ("torch", "triton_fft", "triton")


def write_outputs(out: Path, results: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(markdown(results))
    (out / "dispatch_table.json").write_text(json.dumps(dispatch_table(results), indent=2) + "\n")


def _fmt(v, spec=".3g", suffix=""):
    return "-" if v is None else f"{v:{spec}}{suffix}"


def markdown(results: dict) -> str:
    env = results["environment"]
    bw = results.get("bandwidth") or {}
    lines = [
        f"### scc_fast GPU check, 3D and 2D cases ({env.get('card')}, {env.get('date')})",
        "",
        f"torch {env.get('torch')}, triton {env.get('triton')}, commit {env.get('commit', '')[:12]}, "
        f"`{env.get('command')}`. Logits in, integer labels, softmax, forward + backward, float32; "
        f"correctness against the reference in float64 on the same device. Copy bandwidth "
        f"{_fmt(bw.get('GBps'), '.0f')} GB/s (read + write).",
        "",
        "| case | shape | backend | rel err loss | rel err grad | ok | median ms | x vs eager | x vs compiled "
        "| peak MiB | held MiB | mem / eager | mem / compiled | roofline ms | roofline frac |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case in results["cases"]:
        shape = "x".join(map(str, case["shape"]))
        if case.get("error"):
            lines.append(f"| {case['name']} | {shape} | error: {case['error'][:80]} |" + " |" * 12)
            continue
        eager = case["backends"].get("reference", {})
        comp = case["backends"].get("reference-compiled", {})
        for name, r in case["backends"].items():
            if r.get("skipped") or r.get("error"):
                why = r.get("skipped") or "error: " + r["error"]
                lines.append(f"| {case['name']} | {shape} | {name} | {why[:100]} |" + " |" * 11)
                continue
            ms = r.get("median_ms")
            lines.append(
                "| "
                + " | ".join(
                    [
                        case["name"],
                        shape,
                        name,
                        _fmt(r.get("rel_err_loss"), ".1e"),
                        _fmt(r.get("rel_err_grad"), ".1e"),
                        {True: "yes", False: "**NO**", None: "-"}[r.get("correct")],
                        _fmt(ms, ".2f"),
                        _fmt(_ratio(eager.get("median_ms"), ms), ".1f", "x"),
                        _fmt(_ratio(comp.get("median_ms"), ms), ".1f", "x"),
                        _fmt(r.get("peak_mib"), ".0f"),
                        _fmt(r.get("held_mib"), ".0f"),
                        _fmt(_ratio(eager.get("peak_mib"), r.get("peak_mib")), ".1f", "x"),
                        _fmt(_ratio(comp.get("peak_mib"), r.get("peak_mib")), ".1f", "x"),
                        _fmt(case.get("roofline_ms"), ".3f"),
                        _fmt(_ratio(case.get("roofline_ms"), ms), ".2f"),
                    ]
                )
                + " |"
            )
    lines += ["", "Ratios: reference / backend (higher is better), measured in this run on this device. Peak: "
              "above the inputs during forward + backward; held: what the graph keeps between them."]
    return "\n".join(lines) + "\n"


def _ratio(a, b):
    return None if a is None or b is None or b <= 0 else a / b


def dispatch_table(results: dict) -> dict:
    env = results["environment"]
    device_kind = env["device"].split(":")[0]
    measured_cases = []
    for case in results["cases"]:
        timed = {
            name: r["median_ms"]
            for name, r in case.get("backends", {}).items()
            if name in ACCELERATED and r.get("correct") and r.get("median_ms") is not None
        }
        if timed:
            spatial = case["shape"][2:]
            measured_cases.append(
                dict(
                    case=case["name"],
                    shape=case["shape"],
                    ndim=len(spatial),
                    n=math.prod(spatial),
                    timed=timed,
                    baselines={
                        name: case["backends"].get(name, {}).get("median_ms")
                        for name in ("reference", "reference-compiled")
                    },
                    peak={
                        name: round(r["peak_mib"], 1)
                        for name, r in case.get("backends", {}).items()
                        if r.get("peak_mib") is not None
                    },
                )
            )
    ranges = dispatch.ranges_for([dict(device_kind=device_kind, ndim=c["ndim"], n=c["n"]) for c in measured_cases])
    rows = []
    for c, (lo, hi) in zip(measured_cases, ranges):
        ranking = sorted(c["timed"], key=c["timed"].get)
        median = {k: round(v, 4) for k, v in c["timed"].items()}
        median.update({k: round(v, 4) for k, v in c["baselines"].items() if v is not None})
        rows.append(
            dict(
                case=c["case"],
                device_kind=device_kind,
                card=env.get("card"),
                ndim=c["ndim"],
                n_min=lo,
                n_max=hi,
                shape=c["shape"],
                ranking=ranking,
                median_ms=median,
                peak_mib=c["peak"],
            )
        )
    table = {
        "format": dispatch.FORMAT,
        "measured": bool(rows),
        "smoke": bool(env.get("smoke")),
        "note": "ranking of the correct accelerated backends by median forward+backward time per case; "
        "N ranges split at geometric midpoints between measured cases"
        if rows
        else "no backend measured correctly in this run",
        "provenance": {k: env.get(k) for k in ("card", "date", "command", "commit", "torch", "triton")},
        "rows": rows,
    }
    dispatch.validate_table(table, "emitted dispatch table")
    return table
