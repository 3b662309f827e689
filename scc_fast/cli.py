"""``scc-fast`` command line: ``scc-fast bench ...``, ``scc-fast demo ...``, ``scc-fast backends``."""

from __future__ import annotations

import argparse
import sys


def _backends(args: argparse.Namespace) -> int:
    from . import available_backends

    for name, status in available_backends().items():
        print(f"{name:10s} {'yes' if status.available else 'no ':3s}  {status.reason}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scc-fast", description="Spectral Correlation Coefficient loss tools")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("backends", help="list backends and whether they run here").set_defaults(func=_backends)

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
