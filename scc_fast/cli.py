"""``scc-fast`` command line: ``scc-fast bench ...``, ``scc-fast demo ...``, ``scc-fast backends``."""

from __future__ import annotations

import argparse
import sys


def _backends(args: argparse.Namespace) -> int:
    from . import available_backends

    if args.explain:
        from .backends.dispatch import explain_shape

        print(explain_shape(args.shape, args.device, args.backend, args.target))
        return 0
    for name, status in available_backends().items():
        detail = status.reason
        if name == "native" and status.available:
            from .backends import native

            engines = native.fft_engine()
            radix = native.fft_engine((64, 64))
            if radix != engines:
                engines = f"{radix} for float32 maps it fits (native.fft_engine(shape)), {engines} otherwise"
            detail += f" (transforms: {engines}; inner loops: {native.isa()}; cached buffers now: {native.cached_bytes() >> 20} MiB)"
        if name == "triton" and status.available:
            from .backends import triton_scc

            detail += f" (settings: {triton_scc.settings()})"
        if name == "triton_fft" and status.available:
            from .backends import triton_fft

            detail += f" (settings: {triton_fft.settings()})"
        print(f"{name:10s} {'yes' if status.available else 'no ':3s}  {detail}")
    return 0


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) not in (4, 5) or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected B,C,H,W or B,C,D,H,W positive integers, got {text!r}")
    return shape


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scc-fast", description="Spectral Correlation Coefficient loss tools")
    sub = parser.add_subparsers(dest="command", required=True)
    bk = sub.add_parser("backends", help="list backends and whether they run here")
    bk.set_defaults(func=_backends)
    bk.add_argument("--explain", action="store_true", help="say which backend 'auto' picks for --shape, and why")
    bk.add_argument("--shape", type=_shape, default=(2, 4, 128, 128, 128), help="B,C,H,W or B,C,D,H,W")
    bk.add_argument("--device", default="cuda" if _cuda() else "cpu", help="cuda or cpu")
    bk.add_argument("--backend", default="auto", help="the backend asked for (default auto)")
    bk.add_argument("--target", choices=("labels", "float"), default="labels", help="integer labels or a float target")

    from . import benchmark

    benchmark.add_parser(sub)
    try:
        from . import demo
    except ImportError:  # the demo's module arrives with its own issue
        demo = None
    if demo is not None:
        demo.add_parser(sub)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
