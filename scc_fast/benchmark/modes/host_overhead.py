"""``scc-fast bench host-overhead``: the host's own cost of a loss step with a Triton backend,
measured on a CPU: Python and torch dispatch, with every Triton kernel stubbed out.

On a GPU the fast backends are host-bound (GPU run 5 in bench/RESULTS.md), so the host work of a
step is worth measuring where no GPU is. This mode runs ``scc_loss(..., softmax=True)`` forward +
backward on a tiny CPU input with the backend's Triton kernels replaced by no-ops
(``TRITON_INTERPRET=1`` makes the Triton backends accept CPU tensors; the stubs keep the
interpreter's cost out), and writes ``results.json`` with:

- ``host_us``: the median wall time of a step over ``--steps`` steps, per repeat;
- ``torch_ops``: the top-level torch operators a step dispatches (torch.profiler), by name:
  each is a dispatch on the host, and on a GPU most of them a launch;
- ``kernel_launches``: the Triton launches a step makes, by kernel.

The times are this machine's: compare commits in the same run or on the same quiet machine. On a
CPU some torch ops are cheaper than on CUDA (allocations), and torch.fft runs pocketfft, not cuFFT.
The loss's reduction is torch ops on a CPU and one Triton launch on CUDA: ``--cuda-reduction`` takes
the CUDA path (its kernel stubbed too). ``--validate`` times ``scc_loss``'s default
``validate=True``; where triton_fft's stage 1 makes the checks, its stubbed launch writes no
flags, so reading them is timed on a zeroed copy made before the timed steps (the read is a
device sync on a GPU: not a cost this CPU proxy sees). The stubs stay for the rest of the process:
run it as its own command. (Before the harness: ``bench/host_overhead.py``.)

    scc-fast bench host-overhead --out /tmp/host                  # triton_fft, 1x3x4x4x4
    scc-fast bench host-overhead --backend triton --shape 1x3x16x16 --out /tmp/host
    scc-fast bench host-overhead --cuda-reduction --validate --out /tmp/host
    scc-fast bench host-overhead --cuda-reduction --registered-op --out /tmp/host  # no eager loss node
"""

from __future__ import annotations

import argparse
import collections
import importlib
import json
import os
from pathlib import Path

from ..errors import CLIError, writable_dir

KERNEL_MODULES = {
    "triton_fft": ["scc_fast.backends.triton_fft", "scc_fast.backends._activation_kernel", "scc_fast._reduction_kernel"],
    "triton": ["scc_fast.backends.triton_scc", "scc_fast.backends._activation_kernel", "scc_fast._reduction_kernel"],
}


class _NoOpKernel:
    """Stands in for a Triton kernel: ``kernel[grid](...)`` counts the launch and does nothing."""

    def __init__(self, name: str, launches: collections.Counter):
        self.name, self.launches = name, launches

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches[self.name] += 1

        return launch


def stub_kernels(backend: str) -> collections.Counter:
    """Replace every Triton kernel of the backend's modules by a counting no-op; returns the counter."""
    # Before triton is imported: the Triton backends then take CPU tensors.
    os.environ["TRITON_INTERPRET"] = "1"
    from triton.runtime.jit import KernelInterface

    launches: collections.Counter = collections.Counter()
    for name in KERNEL_MODULES[backend]:
        module = importlib.import_module(name)
        for attr, obj in list(vars(module).items()):
            if isinstance(obj, KernelInterface):
                setattr(module, attr, _NoOpKernel(attr, launches))
    return launches


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) not in (4, 5) or min(shape) < 1 or shape[1] < 2:
        raise argparse.ArgumentTypeError(f"--shape must be BxCxHxW or BxCxDxHxW with C >= 2, got {text!r}")
    return shape


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, type=Path, help="output folder (results.json)")
    p.add_argument("--backend", choices=sorted(KERNEL_MODULES), default="triton_fft")
    p.add_argument("--shape", type=parse_shape, default=(1, 3, 4, 4, 4), help="BxCxHxW or BxCxDxHxW, C >= 2")
    p.add_argument("--steps", type=int, default=300, help="timed steps per repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--cuda-reduction", action="store_true",
                   help="the reduction's Triton kernel (stubbed) as on CUDA, not its torch ops")
    p.add_argument("--validate", action="store_true", help="scc_loss's default validate=True (value checks)")
    p.add_argument("--registered-op", action="store_true",
                   help="the registered op and the reduction's node, as under torch.compile, instead of the eager "
                        "loss node")


def _patch(args: argparse.Namespace) -> None:
    """The CUDA reduction, the registered op and zeroed validation flags, as the options ask."""
    import torch

    if args.cuda_reduction:
        from scc_fast import _reduction

        _reduction._use_kernel = lambda scc: True
    if args.registered_op:  # fused_loss then takes the route of traced code (the reduction's kernel stays)
        from scc_fast.backends import activation

        activation.plain_eager = lambda *tensors: False
    from scc_fast.backends import triton_fft

    if args.validate and hasattr(triton_fft, "raise_flagged"):
        # The stubbed stage 1 leaves its flags unwritten: read a zeroed tensor of their shape instead.
        check, zeroed = triton_fft.raise_flagged, {}

        def read_zeroed_flags(flags, *rest):
            if flags.shape not in zeroed:  # made once, in the warm-up
                zeroed[flags.shape] = torch.zeros_like(flags)
            check(zeroed[flags.shape], *rest)

        triton_fft.raise_flagged = read_zeroed_flags


def run(args: argparse.Namespace) -> int:
    for name in ("steps", "repeats"):
        if getattr(args, name) < 1:
            raise CLIError(f"--{name} must be >= 1, got {getattr(args, name)}")
    writable_dir(args.out)
    launches = stub_kernels(args.backend)
    _patch(args)
    import statistics

    import torch
    from torch.profiler import ProfilerActivity, profile

    import scc_fast

    from ..measure import time_steps
    from ._common import environment

    g = torch.Generator().manual_seed(0)
    x = torch.randn(*args.shape, generator=g, requires_grad=True)
    labels = torch.randint(0, args.shape[1], (args.shape[0], *args.shape[2:]), generator=g)

    def step():
        loss = scc_fast.scc_loss(x, labels, softmax=True, backend=args.backend, validate=args.validate)
        loss.backward()
        x.grad = None

    # One round per repeat, each the median of --steps steps.
    rounds = time_steps({"step": step}, repeats=args.repeats, block=args.steps, warmup=args.warmup)["step"]["wall"]
    host_us = [round(ms * 1e3, 1) for ms in rounds]
    launches.clear()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    # Top level: an operator not called from inside another operator.
    ops = collections.Counter(
        e.name for e in prof.events()
        if e.name.startswith("aten::") and not (e.cpu_parent is not None and e.cpu_parent.name.startswith("aten::"))
    )
    env = environment(args, "cpu")
    result = {
        "command": env["command"], "commit": env["commit"], "torch": env["torch"], "date": env["date"],
        "card": env["card"], "backend": args.backend, "shape": list(args.shape),
        "cuda_reduction": args.cuda_reduction, "validate": args.validate, "registered_op": args.registered_op,
        "host_us": host_us, "host_us_median": round(statistics.median(host_us), 1),
        "torch_ops": sum(ops.values()), "torch_ops_by_name": dict(sorted(ops.items())),
        "kernel_launches": sum(launches.values()), "kernel_launches_by_name": dict(sorted(launches.items())),
    }
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("backend", "shape", "host_us", "torch_ops", "kernel_launches")}))
    return 0
