"""``scc-fast bench native-fft``: backend native with each of its transform engines, in one process.

A forward + backward step (logits, integer labels, softmax, ``scc_loss(validate=False)``) per
engine, switched per block of steps through the setting ``native_fft`` (scc_fast._settings, read at
every call), engines in alternating order per round, one untimed step before each block. An
engine's time is the median over rounds of its block medians; the ratio against the first engine
is the median of per-round ratios (both engines then met the same machine state).

    scc-fast bench native-fft                                  # the CPU benchmark cases, radix vs MKL
    scc-fast bench native-fft --shapes 1x4x96x96x96 --engines auto mkl aten --rounds 9

Engines: ``auto`` (the default: the operator's own radix transform where
``scc_fast.backends.native.fft_engine(shape)`` says ``radix_avx512``), ``mkl``, ``aten``.
(Before the harness: ``bench/native_fft_ab.py``.)
"""

from __future__ import annotations

import argparse
import statistics

from ..errors import CLIError
from ._common import shape_arg

ENGINES = ("auto", "mkl", "aten")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shapes", type=shape_arg, nargs="+", default=[(8, 9, 224, 224), (2, 4, 64, 64, 64)],
                   help="BxCxHxW or BxCxDxHxW (default: the CPU benchmark cases)")
    p.add_argument("--engines", nargs="+", choices=ENGINES, default=["auto", "mkl"])
    p.add_argument("--rounds", type=int, default=11, help="rounds of one block per engine")
    p.add_argument("--block", type=int, default=5, help="timed steps per engine per round")


def compare(shape: tuple[int, ...], engines: list[str], rounds: int, block: int) -> dict[str, tuple[float, float]]:
    """Per engine: (median step ms, median per-round ratio against engines[0])."""
    import torch

    import scc_fast
    from scc_fast import _settings

    from ..measure import time_steps

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(shape, generator=g)
    labels = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=g)

    def step() -> None:
        x = logits.detach().requires_grad_(True)
        scc_fast.scc_loss(x, labels, softmax=True, backend="native", validate=False).backward()

    samples = time_steps({e: step for e in engines}, repeats=rounds, block=block, untimed_first=True, alternate=True,
                         before_block=lambda engine: _settings.update(native_fft=engine))
    times = {e: s["wall"] for e, s in samples.items()}
    base = times[engines[0]]
    return {e: (statistics.median(t), statistics.median([a / b for a, b in zip(t, base)])) for e, t in times.items()}


def run(args: argparse.Namespace) -> int:
    if args.rounds < 1 or args.block < 1:
        raise CLIError(f"--rounds and --block must be >= 1, got {args.rounds} and {args.block}")
    import torch

    from scc_fast import _settings
    from scc_fast.backends import native

    reason = native.unavailable_reason()
    if reason is not None:
        raise CLIError(f"backend 'native' is not available: {reason}; build it (docs/backends.md) first")
    saved = _settings.current()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, inner loops {native.isa()}")
    try:
        for shape in args.shapes:
            label = "x".join(map(str, shape))
            names = {}
            for e in args.engines:
                _settings.update(native_fft=e)
                names[e] = native.fft_engine(shape[2:])
            for e, (ms, ratio) in compare(shape, args.engines, args.rounds, args.block).items():
                engine = f"({names[e]})"
                print(f"{label:18s} {e:5s} {engine:14s} {ms:8.2f} ms   /{args.engines[0]}: {ratio:.3f}")
    finally:
        _settings.restore(saved)
    return 0
