"""Backend "native" with each of its transform engines, in one process: a forward + backward step
(logits, integer labels, softmax, ``scc_loss(validate=False)``) per engine, switched per block of
steps through the setting ``native_fft`` (scc_fast._settings, read at every call), engines in alternating order per round.

An engine's time is the median over rounds of its block medians; the ratio against the first
engine is the median of per-round ratios (both engines then met the same machine state).

    python bench/native_fft_ab.py                                  # the CPU benchmark cases, radix vs MKL
    python bench/native_fft_ab.py --shapes 1x4x96x96x96 --engines auto mkl aten --rounds 9

Engines: ``auto`` (the default: the operator's own radix transform where
``scc_fast.backends.native.fft_engine(shape)`` says ``radix_avx512``), ``mkl``, ``aten``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

ENGINES = ("auto", "mkl", "aten")


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a shape is B x C x spatial written like 2x4x64x64x64, got {text!r}")
    if len(shape) not in (4, 5) or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"a shape needs B, C and 2 or 3 spatial sizes, all >= 1, got {text!r}")
    return shape


def _set_engine(engine: str) -> None:
    from scc_fast import _settings

    _settings.update(native_fft=engine)


def compare(shape: tuple[int, ...], engines: list[str], rounds: int, block: int) -> dict[str, tuple[float, float]]:
    """Per engine: (median step ms, median per-round ratio against engines[0])."""
    import scc_fast

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(shape, generator=g)
    labels = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=g)

    def step() -> None:
        x = logits.detach().requires_grad_(True)
        scc_fast.scc_loss(x, labels, softmax=True, backend="native", validate=False).backward()

    times: dict[str, list[float]] = {e: [] for e in engines}
    for r in range(rounds):
        for engine in engines if r % 2 == 0 else engines[::-1]:
            _set_engine(engine)
            step()  # not timed: meets the memory the other engine left
            block_times = []
            for _ in range(block):
                t0 = time.perf_counter()
                step()
                block_times.append(time.perf_counter() - t0)
            times[engine].append(statistics.median(block_times) * 1e3)
    base = times[engines[0]]
    return {
        e: (statistics.median(t), statistics.median([a / b for a, b in zip(t, base)])) for e, t in times.items()
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", type=_shape, nargs="+", default=[(8, 9, 224, 224), (2, 4, 64, 64, 64)])
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=["auto", "mkl"])
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--block", type=int, default=5)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.block < 1:
        parser.error(f"--rounds and --block must be >= 1, got {args.rounds} and {args.block}")
    from scc_fast.backends import native

    reason = native.unavailable_reason()
    if reason is not None:
        raise SystemExit(f"backend 'native' is not available: {reason}")
    from scc_fast import _settings

    saved = _settings.current()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, inner loops {native.isa()}")
    try:
        for shape in args.shapes:
            label = "x".join(map(str, shape))
            names = {}
            for e in args.engines:
                _set_engine(e)
                names[e] = native.fft_engine(shape[2:])
            result = compare(shape, args.engines, args.rounds, args.block)
            for e, (ms, ratio) in result.items():
                engine = f"({names[e]})"
                print(f"{label:18s} {e:5s} {engine:14s} {ms:8.2f} ms   /{args.engines[0]}: {ratio:.3f}")
    finally:
        _settings.restore(saved)


if __name__ == "__main__":
    main()
