"""``scc-fast`` command line: ``scc-fast bench ...``, ``scc-fast demo ...``, ``scc-fast backends``.

A mistake the user can fix is one line on stderr, ``scc-fast <command>: error: <what to do>``,
and exit code 2: the subcommands raise :class:`CLIError` and :func:`main` prints it. Other
exceptions are bugs and keep their traceback.
"""

from __future__ import annotations

import argparse
import sys

from .benchmark.errors import CLIError, run_command

__all__ = ["main", "build_parser", "CLIError"]


def _backends(args: argparse.Namespace) -> int:
    from . import available_backends

    if args.explain:
        from .backends import explain_shape

        _check_explain(args, available_backends())

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

            detail += f" (settings: {_pairs(triton_scc.settings())})"
        if name == "triton_fft" and status.available:
            from .backends import triton_fft

            detail += f" (settings: {_pairs(triton_fft.settings())})"
        print(f"{name:10s} {'yes' if status.available else 'no ':3s}  {detail}")
    return 0


def _pairs(settings: dict) -> str:
    """A backend's settings as ``name=value`` pairs."""
    return ", ".join(f"{k}={v}" for k, v in settings.items())


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


def _check_explain(args: argparse.Namespace, status: dict) -> None:
    """``backends --explain``: a device torch does not know or a backend that is not there is a CLIError."""
    import torch

    try:
        dev = torch.device(args.device)
    except (RuntimeError, ValueError):
        raise CLIError(f"--device {args.device!r} is not a torch device; use cpu or cuda") from None
    if args.backend == "auto":
        return
    if args.backend not in status:
        raise CLIError(f"--backend: unknown backend {args.backend!r}; choose from auto, {', '.join(status)}")
    usable = dev.type == "cpu" or (dev.type == "cuda" and torch.cuda.is_available())
    if usable and not status[args.backend].available:  # on an absent device only the table is read
        raise CLIError(f"--backend: backend {args.backend!r} is not available here: {status[args.backend].reason}; "
                       "ask for another (`scc-fast backends` lists what runs here)")


def build_parser() -> argparse.ArgumentParser:
    """The ``scc-fast`` parser with its subcommands ``backends``, ``bench`` and ``demo``."""
    parser = argparse.ArgumentParser(prog="scc-fast", description="Spectral Correlation Coefficient loss tools")
    sub = parser.add_subparsers(dest="command", required=True)
    bk = sub.add_parser("backends", help="list backends and whether they run here")
    bk.set_defaults(func=_backends)
    bk.add_argument("--explain", action="store_true", help="say which backend 'auto' picks for --shape, and why")
    bk.add_argument("--shape", type=_shape, default=(2, 4, 128, 128, 128), help="B,C,H,W or B,C,D,H,W")
    bk.add_argument("--device", default="cuda" if _cuda() else "cpu", help="cuda or cpu")
    bk.add_argument("--backend", default="auto", help="the backend asked for (default auto)")
    bk.add_argument("--target", choices=("labels", "float"), default="labels", help="integer labels or a float target")

    from . import benchmark, demo  # neither imports anything beyond the standard library here

    benchmark.add_parser(sub)
    demo.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """``scc-fast ARGS``; returns the exit code (2 for a mistake on the command line)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args._argv = argv  # the command as typed, for the record of a measurement
    return run_command(args)


if __name__ == "__main__":
    sys.exit(main())
