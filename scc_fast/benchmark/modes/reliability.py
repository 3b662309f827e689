"""``scc-fast bench reliability``: the CUDA half of issue 6, a stage of the prepared GPU call (bench/gpu_run.sh).

For every fast backend available on the device:
- determinism: the same inputs twice (forward + backward, logits, softmax) give bitwise equal loss
  and gradient; with ``torch.use_deterministic_algorithms(True)`` as well;
- mixed precision: under ``torch.autocast`` (float16 and bfloat16) a small conv net plus the loss
  computes the loss in float32 and the gradient reaches the input in its dtype, finite, and close
  to the float32 loss;
- out of memory: a request far beyond the device raises ``torch.OutOfMemoryError`` and the next
  normal call gives the same result as before.

Writes results.json and results.md into --out. Runs on CPU too (``--device cpu``; Triton backends
under TRITON_INTERPRET=1, which it sets there) to check the mode itself. (Before the harness:
``bench/gpu_reliability_check.py``.)

    scc-fast bench reliability --out gpu_out/reliability
    scc-fast bench reliability --device cpu --out /tmp/rel
"""

from __future__ import annotations

import argparse
import json
import os
import time
import traceback
from pathlib import Path

import torch

import scc_fast
from scc_fast import backends

from ..errors import writable_dir
from ._common import environment, interpreter_for_smoke, require_cuda

FAST = ("triton", "triton_fft", "torch", "native")


def step(x, t, backend, net=None):
    leaf = x.detach().clone().requires_grad_(True)
    out = net(leaf) if net is not None else leaf
    loss = scc_fast.scc_loss(out, t, softmax=True, backend=backend)
    (grad,) = torch.autograd.grad(loss, leaf)
    return loss.detach(), grad


def check_determinism(backend, device, shape):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g).to(device)
    t = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=g).to(device)
    a = step(x, t, backend)
    b = step(x, t, backend)
    same = torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    previous = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        c = step(x, t, backend)
        same_det = torch.equal(a[0], c[0]) and torch.equal(a[1], c[1])
        det_error = None
    except RuntimeError as exc:  # an op without a deterministic implementation
        same_det, det_error = False, f"{type(exc).__name__}: {exc}"
    finally:
        torch.use_deterministic_algorithms(previous)
    return {"bitwise_equal_twice": same, "equal_under_deterministic_algorithms": same_det, "error": det_error}


class TinyNet(torch.nn.Module):
    def __init__(self, c_in, c_out, dims):
        super().__init__()
        conv = torch.nn.Conv2d if dims == 2 else torch.nn.Conv3d
        self.a = conv(c_in, 8, 3, padding=1)
        self.b = conv(8, c_out, 3, padding=1)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def check_autocast(backend, device, shape, amp_dtype):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=g).to(device)
    t = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=g).to(device)
    torch.manual_seed(0)
    net = TinyNet(shape[1], shape[1], len(shape) - 2).to(device)
    ref_loss, _ = step(x, t, backend, net)
    leaf = x.detach().clone().requires_grad_(True)
    with torch.autocast(device.type, dtype=amp_dtype):
        out = net(leaf)
        loss = scc_fast.scc_loss(out, t, softmax=True, backend=backend)
    (grad,) = torch.autograd.grad(loss, leaf)
    return {
        "logits_dtype": str(out.dtype),
        "loss_dtype": str(loss.dtype),
        "grad_dtype": str(grad.dtype),
        "finite": bool(torch.isfinite(loss)) and bool(torch.isfinite(grad).all()),
        "loss_vs_fp32_abs_diff": abs(loss.item() - ref_loss.item()),
        "ok": loss.dtype == torch.float32 and grad.dtype == leaf.dtype and bool(torch.isfinite(grad).all())
        and abs(loss.item() - ref_loss.item()) <= 5e-2,
    }


def check_oom(backend, device, shape):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(shape, generator=g).to(device)
    t = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=g).to(device)
    before = step(x, t, backend)
    # Hundreds of GiB as a stride-0 view: costs nothing to build, fails at the first real buffer. The
    # batch is what is huge, so every backend's shape limits still accept it.
    spatial = (64, 64) if len(shape) == 4 else (32, 32, 32)
    n_batch = 2**24 if len(shape) == 4 else 2**20
    huge = torch.full((1,) * (2 + len(spatial)), 0.5, device=device).expand(n_batch, 2, *spatial)
    labels = torch.zeros((1,) * (1 + len(spatial)), dtype=torch.long, device=device).expand(n_batch, *spatial)
    reason = backends.load(backend).unsupported_reason(huge, labels)
    if reason is not None:
        return {"skipped": reason}
    try:
        scc_fast.scc_loss(huge, labels, backend=backend, validate=False)
        raised = "nothing"
    except torch.OutOfMemoryError:
        raised = "torch.OutOfMemoryError"
    except Exception as exc:  # noqa: BLE001 - report what came instead
        raised = f"{type(exc).__name__}: {str(exc)[:200]}"
    after = step(x, t, backend)
    same = torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])
    return {"raised": raised, "next_call_equal": same, "ok": raised == "torch.OutOfMemoryError" and same}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, type=Path, help="output folder (results.json, results.md)")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: a dry run of the mode")


def run(args: argparse.Namespace) -> int:
    device = torch.device(args.device)
    require_cuda(device, "use --device cpu for a dry run of the mode")
    interpreter_for_smoke(device.type == "cpu")
    writable_dir(args.out)
    t0 = time.time()
    env = environment(args, device, card=None if device.type == "cuda" else "cpu")
    meta = {"device": env["card"], "date_utc": env["date"], **{k: env[k] for k in ("torch", "triton", "commit", "command")}}
    big = device.type == "cuda"
    shapes = {"2d": (2, 4, 64, 64) if big else (1, 3, 16, 16), "3d": (1, 3, 32, 32, 32) if big else (1, 3, 8, 8, 8)}
    rows = []
    status = backends.available_backends()
    for backend in FAST:
        if not status[backend].available:
            rows.append({"backend": backend, "skipped": status[backend].reason})
            continue
        for rank, shape in shapes.items():
            probe = torch.zeros(shape, device=device)
            labels = torch.zeros((shape[0], *shape[2:]), dtype=torch.long, device=device)
            reason = backends.load(backend).unsupported_reason(probe, labels)
            if reason is not None:
                rows.append({"backend": backend, "rank": rank, "skipped": reason})
                continue
            row = {"backend": backend, "rank": rank, "shape": list(shape)}
            for name, fn in (
                ("determinism", lambda: check_determinism(backend, device, shape)),
                ("autocast_float16", lambda: check_autocast(backend, device, shape, torch.float16)),
                ("autocast_bfloat16", lambda: check_autocast(backend, device, shape, torch.bfloat16)),
                ("oom", lambda: check_oom(backend, device, shape)),
            ):
                if name == "autocast_float16" and device.type == "cpu":
                    continue  # CPU autocast is bfloat16
                try:
                    row[name] = fn()
                except Exception as exc:  # noqa: BLE001 - report and go on
                    row[name] = {"error": f"{type(exc).__name__}: {exc}"}
                    traceback.print_exc()
            rows.append(row)
            print(json.dumps(row), flush=True)
    meta["seconds"] = round(time.time() - t0, 1)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    lines = markdown_lines(meta, rows)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {args.out}/results.json and results.md in {meta['seconds']} s")
    return 0


def markdown_lines(meta: dict, rows: list[dict]) -> list[str]:
    """The results.md table: a row per backend and rank."""
    lines = [
        f"### Reliability on {meta['device']} (torch {meta['torch']}, triton {meta['triton']}, {meta['date_utc']})",
        "",
        f"- commit {meta['commit']}; command: `{meta['command']}`",
        "",
        "| backend | rank | deterministic (twice / deterministic algorithms) | autocast fp16 | autocast bf16 | OOM raised, next call equal |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['backend']} | {r.get('rank', '-')} | skipped: {r['skipped'][:80]} | | | |")
            continue
        d = r.get("determinism", {})

        def amp(key):
            v = r.get(key)
            if v is None:
                return "-"
            return v.get("error", f"{'ok' if v.get('ok') else 'FAIL'} (loss {v.get('loss_dtype')}, grad {v.get('grad_dtype')})")

        o = r.get("oom", {})
        oom = o.get("error") or o.get("skipped") or f"{o.get('raised')}, {o.get('next_call_equal')}"
        lines.append(
            f"| {r['backend']} | {r['rank']} | {d.get('bitwise_equal_twice')} / {d.get('equal_under_deterministic_algorithms')}"
            f"{' (' + d['error'][:60] + ')' if d.get('error') else ''} | {amp('autocast_float16')} | {amp('autocast_bfloat16')} | {oom} |"
        )
    return lines
