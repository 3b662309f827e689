"""``scc-fast bench tune``: tile configurations of backend "triton" on the GPU, a stage of the prepared GPU call.

The tile sizes were first chosen without a GPU, only so that ptxas reports no spills. GPU run 3
timed the 2D fused kernel and split mode under eight configurations, GPU run 4 the 3D path
(``bench/RESULTS.md``); the defaults are now 32/32/32, 4 warps, 2 stages, 2 programs per SM for
the sliced passes (3D and the 2D split, ``triton_scc.GPU_BLOCKS``) and 64/32/32, 8 warps, 2
stages, 1 program per SM for the fused 2D kernel (``GPU_BLOCKS_FUSED``: less scratch). This
mode times, per benchmark case, the 3D path (mode ``3d``: brats-3d, btcv-3d) and the 2D fused kernel
and split mode (the setting ``triton_2d``) under their defaults and a few others; TF32 dots,
logits + int64 labels + softmax, ``scc_loss(..., validate=False)``; the first configuration of
each mode is the default. Each row: median forward + backward ms (CUDA events, after a warm-up
call that compiles), peak memory above the inputs, and the relative difference of loss and
gradient to the case's first row (all should agree within TF32's 5e-3).

Rows go in the order of ``CONFIGS`` x cases, so when ``--budget`` runs out the most informative
ones are done; ``results.json`` / ``results.md`` are written after every row.

    scc-fast bench tune --out /tmp/tune                    # on the GPU
    scc-fast bench tune --smoke --out /tmp/tune            # CPU dry run (Triton interpreter)

(Before the harness: ``bench/gpu_tune.py``.)
"""

from __future__ import annotations

import argparse
import json
import traceback
from pathlib import Path

import torch

from scc_fast import _settings

from ..errors import writable_dir
from ..measure import _sync as sync, build_loss_fn, time_calls
from ._common import Clock, environment, interpreter_for_smoke, require_cuda

CASES = {"synapse-2d": (24, 9, 224, 224), "polyp-2d": (16, 2, 512, 512)}
CASES_3D = {"brats-3d": (2, 4, 128, 128, 128), "btcv-3d": (2, 14, 96, 96, 96)}
SMOKE_CASES = {"smoke-2d": (2, 3, 16, 20)}
SMOKE_CASES_3D = {"smoke-3d": (1, 2, 8, 12, 10)}
# (mode, BM, BN, BK, num_warps, num_stages, programs per SM); the first of each mode is the default.
# Mode "3d" runs the 3D cases (the 2D mode setting does not apply to them).
CONFIGS = [
    ("3d", 32, 32, 32, 4, 2, 2),
    ("3d", 64, 32, 32, 8, 2, 1),  # the default up to GPU run 3
    ("fused", 64, 32, 32, 8, 2, 1),
    ("split", 32, 32, 32, 4, 2, 2),
    ("3d", 32, 32, 16, 4, 3, 3),
    ("3d", 32, 32, 32, 4, 2, 3),  # the default of GPU run 4
    ("3d", 64, 64, 32, 8, 2, 1),
    ("fused", 32, 32, 32, 4, 2, 3),  # GPU run 4: faster, more scratch (137 against 110 MiB)
]
#: scc_loss(x, labels, softmax=True, backend="triton", validate=False)
triton_loss = build_loss_fn("triton")


def step(x, labels):
    x.grad = None
    loss = triton_loss(x, labels)
    loss.backward()
    return loss.detach()


def peak_mib(x, labels, device):
    if device.type != "cuda":
        return None
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    step(x, labels)
    sync(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--out", required=True, type=Path, help="output folder")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on CPU under the Triton interpreter")
    ap.add_argument("--budget", type=float, default=60.0, help="seconds: no row starts after this")
    ap.add_argument("--reps", type=int, default=7, help="timed steps per row")
    ap.add_argument("--configs", type=int, default=len(CONFIGS), help="only the first N configurations")


def run(args: argparse.Namespace) -> int:
    if not args.smoke:
        require_cuda("cuda", "use --smoke for a dry run on CPU")
    interpreter_for_smoke(args.smoke)
    from scc_fast.backends import triton_scc

    out = writable_dir(args.out)
    elapsed = Clock()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    cases_2d = SMOKE_CASES if args.smoke else CASES
    cases_3d = SMOKE_CASES_3D if args.smoke else CASES_3D
    default_blocks, defaults = triton_scc.GPU_BLOCKS["tf32"], _settings.current()
    default_fused = triton_scc.GPU_BLOCKS_FUSED["tf32"]
    env = environment(args, device, card=None if device.type == "cuda" else "cpu (interpreter)")
    env["device"] = env["card"]
    inputs, baseline, rows = {}, {}, []
    for mode, bm, bn, bk, warps, stages, pps in CONFIGS[: args.configs]:
        for name, shape in (cases_3d if mode == "3d" else cases_2d).items():
            row = dict(case=name, shape=list(shape), mode=mode, blocks=[bm, bn, bk], num_warps=warps,
                       num_stages=stages, programs_per_sm=pps)
            rows.append(row)
            if elapsed() > args.budget:
                row["skipped"] = f"time budget ({args.budget:.0f} s) used"
                continue
            try:
                if name not in inputs:
                    g = torch.Generator(device=device).manual_seed(0)
                    logits = (2.0 * torch.randn(shape, generator=g, device=device)).requires_grad_(True)
                    labels = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=g, device=device)
                    inputs[name] = (logits, labels)
                x, labels = inputs[name]
                table = triton_scc.GPU_BLOCKS_FUSED if mode == "fused" else triton_scc.GPU_BLOCKS
                table["tf32"] = (bm, bn, bk, warps, stages)
                _settings.update(triton_programs_per_sm=pps, triton_2d="auto" if mode == "3d" else mode)
                t = elapsed()
                loss = step(x, labels)
                sync(device)
                row["first_call_s"] = round(elapsed() - t, 2)  # compilation included
                grad = x.grad.detach().clone()
                if name not in baseline:
                    baseline[name] = (loss, grad)
                row["rel_diff_loss"] = rel(loss, baseline[name][0])
                row["rel_diff_grad"] = rel(grad, baseline[name][1])
                del grad
                row["peak_mib"] = peak_mib(x, labels, device)
                row["ms"] = time_calls(triton_loss, x, labels, "fwdbwd", args.reps)["median_ms"]
            except Exception as exc:  # noqa: BLE001 - one configuration failing must not lose the rest
                row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
                traceback.print_exc()
            finally:
                triton_scc.GPU_BLOCKS["tf32"] = default_blocks
                triton_scc.GPU_BLOCKS_FUSED["tf32"] = default_fused
                _settings.restore(defaults)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            print(f"[{elapsed():5.0f}s] {json.dumps(row)}", flush=True)
            write(out, env, rows)
    write(out, env, rows)
    print(markdown(env, rows))
    return 0


def markdown(env, rows) -> str:
    lines = [
        f"<!-- {env['device']}, torch {env['torch']}, triton {env.get('triton')}, {env['date']}, "
        f"commit {env['commit']}; {env['command']} -->",
        "| case | mode | BM, BN, BK | warps | stages | programs/SM | fwd+bwd ms | peak MiB | rel diff loss / grad "
        "| first call s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "ms" in r:
            peak = "-" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
            res = (f"{r['ms']:.3f} | {peak} | {r['rel_diff_loss']:.1e} / {r['rel_diff_grad']:.1e} | "
                   f"{r['first_call_s']}")
        else:
            res = f"{r.get('error') or r.get('skipped')} | - | - | -"
        lines.append(f"| {r['case']} | {r['mode']} | {', '.join(map(str, r['blocks']))} | {r['num_warps']} | "
                     f"{r['num_stages']} | {r['programs_per_sm']} | {res} |")
    return "\n".join(lines)


def write(out: Path, env, rows) -> None:
    (out / "results.json").write_text(json.dumps({"environment": env, "rows": rows}, indent=1) + "\n")
    (out / "results.md").write_text(markdown(env, rows) + "\n")

