"""The host's own cost of a loss step with a Triton backend, measured on a CPU: Python and torch
dispatch, with every Triton kernel stubbed out.

On a GPU the fast backends are host-bound (GPU run 5: triton_fft's eager step spends 1.2-1.5 ms of
host time issuing 16-19 kernels that take 0.4-1.6 ms), so the host work of a step is worth
measuring where no GPU is. This script runs ``scc_loss(..., softmax=True)`` forward + backward on a
tiny CPU input with the backend's Triton kernels replaced by no-ops (``TRITON_INTERPRET=1`` makes
the Triton backends accept CPU tensors; the stubs keep the interpreter's cost out), and reports:

- ``host_us``: the median wall time of a step over ``--steps`` steps, per repeat;
- ``torch_ops``: the top-level torch operators a step dispatches (torch.profiler), by name:
  each is a dispatch on the host, and on a GPU most of them a launch;
- ``kernel_launches``: the Triton launches a step makes, by kernel.

The times are this machine's: compare commits in the same run or on the same quiet machine. On a
CPU some torch ops are cheaper than on CUDA (allocations), and torch.fft runs pocketfft, not cuFFT.
The loss's reduction is torch ops on a CPU and one Triton launch on CUDA: ``--cuda-reduction`` takes
the CUDA path (its kernel stubbed too), for the step a GPU host issues. ``--validate`` times
``scc_loss``'s default ``validate=True`` (label range and NaN/Inf checks); where triton_fft's stage
1 makes them, its stubbed launch writes no flags, so reading them is timed on a zeroed copy made
before the timed steps (the read, ``int(flags.max())``, is a device sync on a GPU: not a cost this
CPU proxy sees).

    python bench/host_overhead.py --out /tmp/host                  # triton_fft, 1x3x4x4x4
    python bench/host_overhead.py --backend triton --shape 1x3x16x16 --out /tmp/host
    python bench/host_overhead.py --cuda-reduction --out /tmp/host      # the reduction as on CUDA
    python bench/host_overhead.py --cuda-reduction --validate --out /tmp/host   # validate=True
    python bench/host_overhead.py --cuda-reduction --registered-op --out /tmp/host  # no eager loss node
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported: the Triton backends take CPU tensors

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import scc_fast  # noqa: E402
from scc_fast.benchmark.suite import _commit  # noqa: E402

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
    import importlib

    from triton.runtime.jit import KernelInterface

    launches: collections.Counter = collections.Counter()
    for name in KERNEL_MODULES[backend]:
        module = importlib.import_module(name)
        for attr, obj in list(vars(module).items()):
            if isinstance(obj, KernelInterface):
                setattr(module, attr, _NoOpKernel(attr, launches))
    return launches


def parse_shape(text: str) -> tuple[int, ...]:
    shape = tuple(int(v) for v in text.lower().split("x"))
    if len(shape) not in (4, 5) or min(shape) < 1 or shape[1] < 2:
        raise argparse.ArgumentTypeError(f"--shape must be BxCxHxW or BxCxDxHxW with C >= 2, got {text!r}")
    return shape


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--backend", choices=sorted(KERNEL_MODULES), default="triton_fft")
    ap.add_argument("--shape", type=parse_shape, default=(1, 3, 4, 4, 4))
    ap.add_argument("--steps", type=int, default=300, help="timed steps per repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--cuda-reduction", action="store_true",
                    help="the reduction's Triton kernel (stubbed) as on CUDA, not its torch ops")
    ap.add_argument("--validate", action="store_true", help="scc_loss's default validate=True (value checks)")
    ap.add_argument("--registered-op", action="store_true",
                    help="the registered op and the reduction's node, as under torch.compile, instead of the eager "
                         "loss node")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    launches = stub_kernels(args.backend)
    if args.cuda_reduction:
        from scc_fast import _reduction

        _reduction._use_kernel = lambda scc: True
    if args.registered_op:  # fused_loss then takes the route of traced code (the reduction's kernel stays)
        from scc_fast.backends import activation

        activation.plain_eager = lambda *tensors: False
    from scc_fast.backends import triton_fft

    if args.validate and hasattr(triton_fft, "raise_flagged"):  # (commits before the checks in stage 1: none)
        # The stubbed stage 1 leaves its flags unwritten: read a zeroed tensor of their shape instead.

        check, zeroed = triton_fft.raise_flagged, {}

        def read_zeroed_flags(flags, *rest):
            if flags.shape not in zeroed:  # made once, in the warm-up
                zeroed[flags.shape] = torch.zeros_like(flags)
            check(zeroed[flags.shape], *rest)

        triton_fft.raise_flagged = read_zeroed_flags
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*args.shape, generator=g, requires_grad=True)
    labels = torch.randint(0, args.shape[1], (args.shape[0], *args.shape[2:]), generator=g)

    def step():
        loss = scc_fast.scc_loss(x, labels, softmax=True, backend=args.backend, validate=args.validate)
        loss.backward()
        x.grad = None

    for _ in range(args.warmup):
        step()
    host_us = []
    for _ in range(args.repeats):
        times = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        host_us.append(round(statistics.median(times) * 1e6, 1))

    launches.clear()
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    # Top level: an operator not called from inside another operator.
    ops = collections.Counter(
        e.name for e in prof.events()
        if e.name.startswith("aten::") and not (e.cpu_parent is not None and e.cpu_parent.name.startswith("aten::"))
    )
    result = {
        "command": "python bench/host_overhead.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "commit": _commit(),
        "torch": torch.__version__,
        "backend": args.backend,
        "shape": list(args.shape),
        "cuda_reduction": args.cuda_reduction,
        "validate": args.validate,
        "registered_op": args.registered_op,
        "host_us": host_us,
        "torch_ops": sum(ops.values()),
        "torch_ops_by_name": dict(sorted(ops.items())),
        "kernel_launches": sum(launches.values()),
        "kernel_launches_by_name": dict(sorted(launches.items())),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("backend", "shape", "host_us", "torch_ops", "kernel_launches")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
