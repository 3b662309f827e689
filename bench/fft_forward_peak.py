"""Backend triton_fft's forward peak memory at the benchmark cases, predicted on a CPU: every tensor its
forward allocates, with its Triton kernels stubbed out (no computation; the tensors are made and
freed as on a GPU), counted by :class:`scc_fast.benchmark.live_bytes.LiveBytes`.

One row per case: the forward's own peak (inputs excepted) with every class transformed
(the setting ``fft_derive=False``), with class 0's P derived (the benchmarks' validate=False), and with
its Y derived too (validate=True). At GPU run 5's code the first column reproduced the measured
peaks above the inputs (brats-3d 194, btcv-3d 288, synapse-2d 125, polyp-2d 96 MiB): the forward is
the step's peak, and cuFFT's workspace did not show. Softmax, int64 labels, float32 logits.

    python bench/fft_forward_peak.py                      # the four benchmark cases, about 2 GB of RAM
    python bench/fft_forward_peak.py --shape 2x3x16x16x16
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported: the kernels take CPU tensors

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from host_overhead import parse_shape, stub_kernels  # noqa: E402
from scc_fast.backends import triton_fft  # noqa: E402
from scc_fast.benchmark.cases import BENCHMARK_CASES  # noqa: E402
from scc_fast.benchmark.live_bytes import LiveBytes  # noqa: E402

SETTINGS = {
    "every class": {},
    "class 0's P derived (validate=False)": {"derive_first": True},
    "P and Y derived (validate=True)": {"derive_first": True, "validate": True},
}


def forward_peak_mib(shape: tuple[int, ...], **settings) -> float:
    """The peak MiB of the tensors triton_fft's forward (gradient included) makes for ``shape``."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g)
    labels = torch.randint(0, shape[1], (shape[0],) + tuple(shape[2:]), generator=g)
    with torch.no_grad(), LiveBytes(x, labels) as live:
        out = triton_fft._forward(x, labels, 0, False, 0.5, 0.5, True, activation=1, **settings)
    del out
    return live.peak / 2**20


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", type=parse_shape, action="append", help="BxCxHxW or BxCxDxHxW (repeatable); "
                    "default: the benchmark cases")
    args = ap.parse_args(argv)
    stub_kernels("triton_fft")
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


if __name__ == "__main__":
    sys.exit(main())
