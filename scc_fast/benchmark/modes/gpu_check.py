"""``scc-fast bench gpu-check``: one-shot GPU check of backend "triton" at the 2D benchmark cases.

For each case (logits in, integer labels, softmax, forward + backward of ``scc_loss``):

1. correctness: loss and dL/dlogits of backend "triton" (TF32 default, 3xTF32, IEEE dots; and
   the 2D split mode, the setting ``triton_2d="split"``, at the first of them) against backend
   "reference" run in float64 on the same GPU, as ||out - ref|| / ||ref||
   (docs/loss.md section 6: TF32 <= 5e-3, IEEE / 3xTF32 <= 1e-5);
2. median forward + backward time and peak memory above the inputs for triton (fused and split;
   softmax in its kernels, or "p-first": the probabilities computed before them),
   torch, reference eager and reference under ``torch.compile``, with ratios against the
   reference, all measured in this run on this device; and the roofline (bytes that must move /
   measured copy bandwidth).

Every case and every measurement is wrapped so one failure does not lose the rest. Prints a
table and markdown rows; writes ``results.json`` and ``results.md`` to ``--out``. Budget: well
under 3 minutes (``--budget`` seconds; the compiled reference, the slowest part, is skipped when
time runs short). (Before the harness: ``bench/gpu_triton_check.py``.)

    scc-fast bench gpu-check --out /tmp/triton2d            # on the GPU
    scc-fast bench gpu-check --smoke --out /tmp/smoke       # CPU, tiny shapes, Triton interpreter
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import traceback
from pathlib import Path

import torch

import scc_fast
from scc_fast import _settings

from ..errors import writable_dir
from ..measure import _sync as sync, copy_bandwidth, time_step
from ._common import Clock, environment, interpreter_for_smoke

CASES = {"synapse-2d": (24, 9, 224, 224), "polyp-2d": (16, 2, 512, 512)}
SMOKE_CASES = {"smoke-a": (2, 3, 16, 16), "smoke-b": (1, 2, 24, 20)}
TOLERANCE = {"tf32": 5e-3, "tf32x3": 1e-5, "ieee": 1e-5}

def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.detach().double(), ref.detach().double()
    return ((out - ref).norm() / ref.norm()).item()


def make_case(shape, device, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    n_batch, n_chan, H, W = shape
    # Blobby labels (a few discs per image) and logits that partly follow them: like a network's.
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    labels = torch.zeros(n_batch, H, W, dtype=torch.long)
    for b in range(n_batch):
        for c in range(1, n_chan):
            for _ in range(2):
                cy, cx = torch.randint(0, H, (1,), generator=g).item(), torch.randint(0, W, (1,), generator=g).item()
                r = max(2, int(min(H, W) * (0.05 + 0.15 * torch.rand(1, generator=g).item())))
                labels[b][(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = c
    onehot = torch.nn.functional.one_hot(labels, n_chan).permute(0, 3, 1, 2).float()
    logits = torch.randn(shape, generator=g) + 3.0 * onehot
    return logits.to(device), labels.to(device)


def loss_fn(backend):
    def f(x, t):
        return scc_fast.scc_loss(x, t, softmax=True, backend=backend, validate=False)

    return f


def fwd_bwd(fn, logits, labels):
    x = logits.detach().requires_grad_(True)
    loss = fn(x, labels)
    (grad,) = torch.autograd.grad(loss, x)
    return loss.detach(), grad


def time_median(fn, logits, labels, device, warmup=3, reps=10, max_s=8.0):
    x = logits.detach().requires_grad_(True)

    def step():
        loss = fn(x, labels)
        torch.autograd.grad(loss, x)

    # Past max_s (and three steps) no more steps start: the budget is the device call's.
    return statistics.median(time_step(step, repeats=reps, device=device, warmup=warmup, max_s=max_s))


def peak_memory_mib(fn, logits, labels, device):
    """Peak allocated memory above what is live before the call (the inputs), in MiB."""
    if device.type != "cuda":
        return None
    x = logits.detach().requires_grad_(True)
    sync(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    loss = fn(x, labels)
    (g,) = torch.autograd.grad(loss, x)
    sync(device)
    peak = torch.cuda.max_memory_allocated(device) - base
    del loss, g
    return peak / 2**20


def copy_bandwidth_gbs(device):
    return copy_bandwidth(device)["GBps"] if device.type == "cuda" else None


def run_case(name, shape, device, args, budget_s, elapsed):
    row = {"case": name, "shape": list(shape), "errors": {}}
    defaults = _settings.current()
    logits, labels = make_case(shape, device)
    # --- correctness against the float64 reference on the same device ---
    try:
        ref_loss, ref_grad = fwd_bwd(loss_fn("reference"), logits.double(), labels)
        row["ref_loss"] = ref_loss.item()
    except Exception as exc:  # noqa: BLE001 - report and go on
        row["errors"]["reference_fp64"] = f"{type(exc).__name__}: {exc}"
        ref_loss = ref_grad = None
    row["accuracy"] = {}
    # The split mode at the first precision only: each of its variants compiles five more kernels.
    for prec, mode in [(p, "fused") for p in args.precisions] + [(args.precisions[0], "split")]:
        key = prec if mode == "fused" else f"{prec},{mode}"
        try:
            _settings.update(triton_precision=prec, triton_2d=mode)
            loss, grad = fwd_bwd(loss_fn("triton"), logits, labels)
            entry = {"loss": loss.item()}
            if ref_loss is not None:
                entry["rel_err_loss"] = rel_err(loss, ref_loss)
                entry["rel_err_grad"] = rel_err(grad, ref_grad)
                entry["tolerance"] = TOLERANCE[prec]
                entry["ok"] = entry["rel_err_loss"] <= TOLERANCE[prec] and entry["rel_err_grad"] <= TOLERANCE[prec]
            row["accuracy"][key] = entry
        except Exception as exc:  # noqa: BLE001
            row["errors"][f"triton_{key}"] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        finally:
            _settings.restore(defaults)
    del ref_grad
    if device.type == "cuda":
        torch.cuda.empty_cache()

    # --- speed and memory ---
    row["time_ms"], row["peak_mib"] = {}, {}
    # The headline ratios first (default precision in both 2D modes, reference eager and
    # compiled), then the rest.
    first = args.precisions[0]
    contenders = [(f"triton[{first}]", "triton", first), (f"triton[{first},split]", "triton", first)] + [
        ("reference", "reference", None),
        ("reference+compile", "reference", "compile"),
        ("torch", "torch", None),
        ("torch[unfused]", "torch", "unfused"),
        (f"triton[{first},p-first]", "triton", first),
        (f"triton[{first},unfused]", "triton", "unfused"),
    ] + [(f"triton[{p}]", "triton", p) for p in args.precisions[1:]]
    for label, backend, opt in contenders:
        if opt == "compile" and (args.no_compile or elapsed() > budget_s):
            row["errors"][label] = "skipped: time budget" if not args.no_compile else "skipped: --no-compile"
            continue
        try:
            fn = loss_fn(backend)
            if opt == "compile":
                torch._dynamo.reset()
                fn = torch.compile(fn)
                fwd_bwd(fn, logits, labels)  # compile outside the timed region
            if backend == "triton" and opt != "unfused":
                _settings.update(triton_precision=opt)
            _settings.update(
                triton_2d="split" if label.endswith(",split]") else "auto",
                # "p-first": the probabilities computed before the kernel (not from statistics inside it).
                triton_activation_in_kernel=not label.endswith(",p-first]"),
                # "unfused": the activation applied with torch ops outside the backend (A/B of the fusion).
                fuse_activation=opt != "unfused",
            )
            row["time_ms"][label] = time_median(fn, logits, labels, device, reps=args.reps)
            row["peak_mib"][label] = peak_memory_mib(fn, logits, labels, device)
        except Exception as exc:  # noqa: BLE001
            row["errors"][label] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        finally:
            _settings.restore(defaults)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    base_t = row["time_ms"].get("reference")
    base_tc = row["time_ms"].get("reference+compile")
    base_m = row["peak_mib"].get("reference")
    row["speedup_vs_reference"] = {k: base_t / v for k, v in row["time_ms"].items() if base_t and v}
    row["speedup_vs_compiled"] = {k: base_tc / v for k, v in row["time_ms"].items() if base_tc and v}
    row["memory_ratio_vs_reference"] = {k: base_m / v for k, v in row["peak_mib"].items() if base_m and v}
    # Roofline: read logits (fp32) and labels (int64) once, write dL/dlogits (fp32) once.
    row["bytes_min"] = logits.numel() * 4 * 2 + labels.numel() * labels.element_size()
    return row


def print_table(rows, device_name):
    print(f"\n== backend triton, {device_name} ==")
    for row in rows:
        print(f"\n{row['case']} {tuple(row['shape'])}  reference loss (fp64) = {row.get('ref_loss')}")
        for prec, e in row.get("accuracy", {}).items():
            print(
                f"  accuracy {prec:11s} rel err loss {e.get('rel_err_loss', float('nan')):.2e}  "
                f"grad {e.get('rel_err_grad', float('nan')):.2e}  (tol {e.get('tolerance')})  ok={e.get('ok')}"
            )
        print(f"  {'contender':20s} {'ms':>9s} {'x eager':>8s} {'x compiled':>10s} {'peak MiB':>9s} {'mem ratio':>9s}")
        for k, t in row["time_ms"].items():
            m = row["peak_mib"].get(k)
            print(
                f"  {k:20s} {t:9.3f} {row['speedup_vs_reference'].get(k, float('nan')):8.2f} "
                f"{row['speedup_vs_compiled'].get(k, float('nan')):10.2f} "
                f"{(m if m is not None else float('nan')):9.1f} {row['memory_ratio_vs_reference'].get(k, float('nan')):9.2f}"
            )
        if row.get("roofline_ms") is not None:
            print(f"  roofline (min bytes / copy bandwidth): {row['roofline_ms']:.3f} ms")
        for k, v in row["errors"].items():
            print(f"  ERROR {k}: {v}")


def markdown_rows(rows, meta):
    lines = [
        f"<!-- {meta['device']}, torch {meta['torch']}, triton {meta['triton']}, {meta['date']}, commit {meta['commit']}; "
        f"{meta['command']} -->",
        "| case | contender | fwd+bwd ms | x eager ref | x compiled ref | peak MiB above inputs | mem ratio vs ref |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        for k, t in row["time_ms"].items():
            m = row["peak_mib"].get(k)
            lines.append(
                f"| {row['case']} | {k} | {t:.3f} | {row['speedup_vs_reference'].get(k, float('nan')):.2f} | "
                f"{row['speedup_vs_compiled'].get(k, float('nan')):.2f} | "
                f"{'n/a' if m is None else f'{m:.1f}'} | {row['memory_ratio_vs_reference'].get(k, float('nan')):.2f} |"
            )
    return "\n".join(lines)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--out", required=True, type=Path, help="folder for results.json and results.md")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes (on a CPU under the Triton interpreter)")
    ap.add_argument("--cases", nargs="*", default=None, help="subset of case names")
    ap.add_argument("--precisions", nargs="*", default=["tf32", "ieee"], choices=list(TOLERANCE))
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument(
        "--budget", type=float, default=90.0,
        help="seconds; a compiled baseline is not started past its case's share of it (bench/gpu_run.sh allows 170 s)",
    )
    ap.add_argument("--no-compile", action="store_true")


def run(args: argparse.Namespace) -> int:
    interpreter_for_smoke(args.smoke)
    defaults = _settings.current()
    try:
        return _run(args)
    finally:
        _settings.restore(defaults)


def _run(args: argparse.Namespace) -> int:
    from scc_fast.backends import triton_scc

    elapsed = Clock()
    writable_dir(args.out)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # the reference stays IEEE
    cases = SMOKE_CASES if args.smoke else CASES
    _settings.update(triton_interpret_tf32=True)  # under the interpreter, show TF32's accuracy too
    if args.cases:
        cases = {k: v for k, v in cases.items() if k in args.cases}
    env = environment(args, device, card=None if device.type == "cuda"
                      else f"cpu ({platform.processor() or platform.machine()}), interpreter")
    meta = {
        "device": env["card"],
        **{k: env[k] for k in ("torch", "triton", "cuda", "date", "commit", "command")},
        "interpret": os.environ.get("TRITON_INTERPRET", ""),
        "triton_unavailable": triton_scc.unavailable_reason(),
        "triton_blocks": {k: list(v) for k, v in triton_scc.GPU_BLOCKS.items()},
        "four_step": {name: [triton_scc._four_step_factors(shape[2]), triton_scc._four_step_factors(shape[3])]
                      for name, shape in (SMOKE_CASES | CASES).items()},
    }
    print(json.dumps(meta))
    bw = None
    try:
        bw = copy_bandwidth_gbs(device)
        meta["copy_bandwidth_gbs"] = bw
    except Exception as exc:  # noqa: BLE001
        meta["copy_bandwidth_error"] = str(exc)

    rows = []
    n = len(cases)
    for i, (name, shape) in enumerate(cases.items()):
        # Leave the later cases their share of the budget for the compiled baseline.
        case_budget = args.budget * (i + 1) / n
        try:
            row = run_case(name, shape, device, args, case_budget, elapsed)
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc()
            row = {"case": name, "shape": list(shape), "errors": {"case": f"{type(exc).__name__}: {exc}"},
                   "time_ms": {}, "peak_mib": {}, "speedup_vs_reference": {}, "speedup_vs_compiled": {},
                   "memory_ratio_vs_reference": {}}
        if bw and row.get("bytes_min"):
            row["roofline_ms"] = row["bytes_min"] / (bw * 1e9) * 1e3
        rows.append(row)
        print(f"[{elapsed():.0f}s] {name} done", flush=True)
        with open(os.path.join(args.out, "results.json"), "w") as f:  # after each case: nothing lost
            json.dump({"meta": meta, "rows": rows}, f, indent=1)

    print_table(rows, meta["device"])
    md = markdown_rows(rows, meta)
    print("\n" + md)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(md + "\n")
    print(f"\nwrote {args.out}/results.json and results.md in {elapsed():.0f}s")
    return 0
