"""``scc-fast bench fft-peak``: backend triton_fft's forward peak memory at the benchmark cases,
predicted on a CPU: every tensor its forward allocates, with its Triton kernels stubbed out (no
computation; the tensors are made and freed as on a GPU), counted by
:class:`scc_fast.benchmark.live_bytes.LiveBytes`.

One row per case: the forward's own peak (inputs excepted) with every class transformed (the
setting ``fft_derive=False``), with class 0's P derived (the benchmarks' validate=False), and with
its Y derived too (validate=True). At GPU run 5's code the first column reproduced the measured
peaks above the inputs (bench/RESULTS.md): the forward is the step's peak, and cuFFT's workspace
did not show. Softmax, int64 labels, float32 logits. The stubs stay for the rest of the process:
run it as its own command. (Before the harness: ``bench/fft_forward_peak.py``.)

    scc-fast bench fft-peak                          # the four benchmark cases, about 2 GB of RAM
    scc-fast bench fft-peak --shape 2x3x16x16x16
"""

from __future__ import annotations

import argparse

from .host_overhead import parse_shape, stub_kernels

SETTINGS = {
    "every class": {},
    "class 0's P derived (validate=False)": {"derive_first": True},
    "P and Y derived (validate=True)": {"derive_first": True, "validate": True},
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shape", type=parse_shape, action="append",
                   help="BxCxHxW or BxCxDxHxW (repeatable); default: the benchmark cases")


def forward_peak_mib(shape: tuple[int, ...], **settings) -> float:
    """The peak MiB of the tensors triton_fft's forward (gradient included) makes for ``shape``."""
    import torch

    from scc_fast.backends import triton_fft

    from ..live_bytes import LiveBytes

    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g)
    labels = torch.randint(0, shape[1], (shape[0],) + tuple(shape[2:]), generator=g)
    with torch.no_grad(), LiveBytes(x, labels) as live:
        out = triton_fft._forward(x, labels, 0, False, 0.5, 0.5, True, activation=1, **settings)
    del out
    return live.peak / 2**20


def run(args: argparse.Namespace) -> int:
    stub_kernels("triton_fft")
    from scc_fast.backends import triton_fft

    from ..cases import BENCHMARK_CASES

    triton_fft.raise_flagged = lambda *a, **k: None  # the stubbed stage 1 writes no flags
    if args.shape:
        shapes = {f"shape {i + 1}": shape for i, shape in enumerate(args.shape)}
    else:
        shapes = {name: shape for name, (shape, _) in BENCHMARK_CASES.items()}
    print("| case | " + " | ".join(f"{name}, MiB" for name in SETTINGS) + " |")
    print("|---|" + "---|" * len(SETTINGS))
    for name, shape in shapes.items():
        peaks = [forward_peak_mib(tuple(shape), **kw) for kw in SETTINGS.values()]
        print(f"| {name} {'x'.join(map(str, shape))} | " + " | ".join(f"{p:.2f}" for p in peaks) + " |")
    return 0
