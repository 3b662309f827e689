"""Command-line mistakes: :class:`CLIError` and the one place that turns it into one line.

A subcommand (``bench``, ``demo``, ``backends``) raises :class:`CLIError` for anything the user
can fix: a wrong value, a missing extra, an unwritable folder. :func:`run_command` calls the
subcommand and prints such an error as ``scc-fast <command>: error: <message>`` on stderr, one
line, and returns exit code 2 (argparse's own usage errors also exit 2). Any other exception is
a bug and propagates with its traceback.

It lives here rather than in :mod:`scc_fast.cli` so that the subcommand packages can raise it
without importing the command line that imports them (no import cycle); ``scc_fast.cli``
re-exports it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

__all__ = ["CLIError", "MissingExtraError", "run_command", "one_line", "writable_dir"]


class CLIError(Exception):
    """A mistake on the command line; the message says what was wrong and what to do."""


class MissingExtraError(CLIError, ImportError):
    """An optional dependency a command needs is not installed (also an :class:`ImportError`)."""


def one_line(text: object) -> str:
    """``text`` with its line breaks and runs of spaces folded into single spaces."""
    return " ".join(str(text).split())


def run_command(args: argparse.Namespace) -> int:
    """Run ``args.func(args)``; a :class:`CLIError` becomes one stderr line and exit code 2."""
    try:
        return int(args.func(args) or 0)
    except CLIError as exc:
        command = getattr(args, "command", None)
        print(f"scc-fast{' ' + command if command else ''}: error: {one_line(exc)}", file=sys.stderr, flush=True)
        return 2


def writable_dir(path: Path | str, option: str = "--out") -> Path:
    """Create ``path`` (with its parents) and check a file can be written in it, else CLIError."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise CLIError(f"{option} {str(path)!r} is not a folder this process can write to ({why}); "
                       f"choose another with {option}") from exc
    return path
