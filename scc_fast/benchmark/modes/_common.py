"""What the modes of ``scc-fast bench`` share: the record of a run, option checks, the run's clock.

Every table a mode writes carries :func:`environment` (device, versions, date, commit, command),
what bench/RESULTS.md quotes with each measurement.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
from typing import Any

from ..errors import CLIError

__all__ = ["Clock", "environment", "interpreter_for_smoke", "pick", "require_cuda", "shape_arg"]


class Clock:
    """Seconds since the mode started (for ``--budget`` and the progress lines)."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.t0

    def restart(self) -> None:
        self.t0 = time.perf_counter()


def environment(args: argparse.Namespace, device: Any, card: str | None = None) -> dict[str, Any]:
    """Device, versions, date (UTC), commit and command of this run."""
    import torch

    from .. import command_of
    from ..suite import _commit

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    device = torch.device(device)
    if card is None:
        card = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU {platform.machine()}"
    return {
        "card": card,
        "device": str(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton_version,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _commit(),
        "command": command_of(args),
    }


def require_cuda(device: Any, hint: str = "run on the GPU, or pass --smoke for a CPU dry run") -> None:
    """A CLIError when ``device`` is CUDA and this torch has no CUDA device."""
    import torch

    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device cuda: no CUDA device is available to this torch ({torch.__version__}); {hint}")


def interpreter_for_smoke(smoke: bool) -> None:
    """A CPU dry run (``--smoke``) runs Triton kernels in its interpreter, chosen before triton is
    imported by the backends (the mode's module imports them inside ``run``)."""
    import torch

    if smoke and not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")


def pick(option: str, text: str | None, known: dict[str, Any] | tuple[str, ...]) -> list[str]:
    """The comma-separated names of ``option`` (all of ``known`` when None), each checked."""
    if text is None:
        return list(known)
    wanted = [w.strip() for w in text.split(",") if w.strip()]
    unknown = sorted(set(wanted) - set(known))
    if unknown or not wanted:
        raise CLIError(f"{option}: unknown {option.lstrip('-')} {unknown}; expected comma-separated names from "
                       f"{list(known)}, got {text!r}")
    return wanted


def shape_arg(text: str, min_channels: int = 1) -> tuple[int, ...]:
    """An argparse type: BxCxHxW or BxCxDxHxW, positive sizes and at least ``min_channels`` classes."""
    try:
        shape = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) not in (4, 5) or min(shape) < 1 or shape[1] < min_channels:
        raise argparse.ArgumentTypeError(
            f"a shape needs B, C and 2 or 3 spatial sizes, all >= 1 (C >= {min_channels}), written like "
            f"2x4x64x64x64; got {text!r}")
    return shape
