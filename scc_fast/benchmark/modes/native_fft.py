"""``scc-fast bench native-fft``: backend native with each of its transform engines, in one process.

A forward + backward step (logits, integer labels, softmax, ``scc_loss(validate=False)``) per
engine, switched per block of steps through the setting ``native_fft`` (scc_fast._settings, read at
every call), engines in alternating order per round, one untimed step before each block. An
engine's time is the median over rounds of its block medians; the ratio against the first engine
is the median of per-round ratios (both engines then met the same machine state).

    scc-fast bench native-fft                                  # the CPU benchmark cases, radix vs MKL
    scc-fast bench native-fft --shapes 1x4x96x96x96 --engines auto mkl aten --rounds 9
    scc-fast bench native-fft --isa avx2 --reference --validate  # the AVX2 builds, against the reference

Engines: ``auto`` (the default: the operator's own radix transform where
``scc_fast.backends.native.fft_engine(shape)`` says ``radix_avx512`` or ``radix_avx2``), ``mkl``,
``aten``. ``--isa`` caps the build of the inner loops and of the radix transform (the setting
``native_isa``: on an AVX-512 CPU, ``avx2`` measures what an AVX2-only CPU runs); ``--reference``
adds the eager reference to every round and reports reference / engine per round.
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
    p.add_argument("--isa", choices=("auto", "baseline", "avx2", "avx512"), default="auto",
                   help="cap the operator's instruction set (inner loops and radix transform; default auto)")
    p.add_argument("--reference", action="store_true", help="time the eager reference in the same rounds")
    p.add_argument("--validate", action="store_true", help="scc_loss(validate=True), as bench native-cpu times it")


def compare(shape: tuple[int, ...], engines: list[str], rounds: int, block: int, reference: bool = False,
            validate: bool = False) -> dict[str, dict[str, float]]:
    """Per engine (and ``"reference"``): median step ms, the median per-round ratio against
    engines[0] and, with ``reference``, the median and quartiles of reference / this per round."""
    import torch

    import scc_fast
    from scc_fast import _settings

    from ..measure import time_steps

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(shape, generator=g)
    labels = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=g)

    def step(backend: str):
        def run() -> None:
            x = logits.detach().requires_grad_(True)
            scc_fast.scc_loss(x, labels, softmax=True, backend=backend, validate=validate).backward()
        return run

    steps = {e: step("native") for e in engines}
    if reference:
        steps["reference"] = step("reference")
    samples = time_steps(steps, repeats=rounds, block=block, untimed_first=True, alternate=True,
                         before_block=lambda name: name in ENGINES and _settings.update(native_fft=name))
    times = {e: s["wall"] for e, s in samples.items()}
    out = {}
    for e, t in times.items():
        row = {"ms": statistics.median(t), "ratio": statistics.median([a / b for a, b in zip(t, times[engines[0]])])}
        if reference:
            r = [a / b for a, b in zip(times["reference"], t)]
            q = statistics.quantiles(r, n=4) if len(r) > 1 else [r[0]] * 3
            row.update(vs_reference=statistics.median(r), vs_reference_q1=q[0], vs_reference_q3=q[2])
        out[e] = row
    return out


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
    try:
        _settings.update(native_isa=args.isa)
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, inner loops {native.isa()}, "
              f"validate={args.validate}")
        for shape in args.shapes:
            label = "x".join(map(str, shape))
            names = {"reference": "torch.fft"}
            for e in args.engines:
                _settings.update(native_fft=e)
                names[e] = native.fft_engine(shape[2:])
            rows = compare(shape, args.engines, args.rounds, args.block, args.reference, args.validate)
            for e, row in rows.items():
                engine = f"({names[e]})"
                line = f"{label:18s} {e:9s} {engine:14s} {row['ms']:8.2f} ms   /{args.engines[0]}: {row['ratio']:.3f}"
                if args.reference:
                    line += (f"   reference/this: {row['vs_reference']:.2f}x "
                             f"(IQR {row['vs_reference_q1']:.2f}-{row['vs_reference_q3']:.2f})")
                print(line)
    finally:
        _settings.restore(saved)
    return 0
