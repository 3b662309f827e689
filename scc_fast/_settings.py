"""Private settings: the backends' tuning, comparison and test switches, in one object.

Users need none of them (the defaults are the measured best); tests and the modes of ``scc-fast bench`` set them::

    from scc_fast import _settings

    with _settings.override(native_isa="avx2", fft_derive=False):
        ...                                   # restored on exit
    _settings.update(triton_2d="split")       # until changed again

Every environment variable the package reads is read here, and there are three (``setup.py``
reads a fourth, ``SCC_FAST_SKIP_NATIVE``, at install):

* ``SCC_FAST_BACKEND``: the backend ``backend="auto"`` resolves to (read at every call);
* ``SCC_FAST_DISPATCH_TABLE``: a dispatch table of the user's own measurements for ``"auto"``
  (``scc-fast bench`` writes one; read at every call);
* ``SCC_FAST_TRITON_PRECISION``: the Triton backends' dot precision, ``tf32`` (default),
  ``tf32x3`` or ``ieee`` (read at import; the setting ``triton_precision`` afterwards).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Callable, Iterator

__all__ = ["Settings", "current", "update", "restore", "override", "on_change", "env_backend", "env_dispatch_table"]

BACKEND_ENV = "SCC_FAST_BACKEND"
DISPATCH_TABLE_ENV = "SCC_FAST_DISPATCH_TABLE"
PRECISION_ENV = "SCC_FAST_TRITON_PRECISION"

PRECISIONS = ("tf32", "tf32x3", "ieee")
MODES_2D = ("auto", "fused", "split")
NATIVE_FFTS = ("auto", "mkl", "aten")
NATIVE_ISAS = ("auto", "baseline", "avx2", "avx512")


@dataclasses.dataclass(frozen=True)
class Settings:
    """The switches. ``None`` means the backend's own default."""

    #: Hand logits to backends that fuse the activation; False applies it with torch ops first (A/B).
    fuse_activation: bool = True
    #: Keep only the input for backward and compute the gradient field again there (less memory
    #: held, one more forward pass of the loss); where the activation is fused.
    recompute_field: bool = False
    #: Backend "triton": dot precision; 2D mode (one fused launch a pair, the 3D passes, or by pair
    #: count); rounding to TF32 under the interpreter too; rows per slice of the 2D split; workspace
    #: bytes per chunk of pairs of the sliced passes; programs per SM of the persistent grids (None:
    #: per path); softmax/sigmoid computed in the kernels (False: torch computes p first).
    triton_precision: str = "tf32"
    triton_2d: str = "auto"
    triton_interpret_tf32: bool = False
    triton_split_rows: int | None = None
    triton_workspace_bytes: int = 1 << 26
    triton_programs_per_sm: int | None = None
    triton_activation_in_kernel: bool = True
    #: Backend "triton_fft": elements per chunk of classes; class 0 derived from the others;
    #: softmax/sigmoid in stage 1 (False: torch computes p first); stage 1's GPU tile (values,
    #: warps, threads down the channels first).
    fft_chunk_elements: int = 1 << 26
    fft_derive: bool = True
    fft_activation_in_kernel: bool = True
    fft_stage1_values: int = 1024
    fft_stage1_warps: int = 8
    fft_stage1_channel_threads: bool = False
    #: Backend "native": transforms, the inner loops' widest instruction set, the buffer cache's
    #: cap (MiB), the workspace per chunk of pairs (bytes), the workspace rows' padding (elements),
    #: one class's spectrum derived from the others'.
    native_fft: str = "auto"
    native_isa: str = "auto"
    native_cache_mb: int | None = None
    native_chunk_bytes: int | None = None
    native_row_pad: int | None = None
    native_complement: bool = True

    def __post_init__(self) -> None:
        for name, choices in (("triton_precision", PRECISIONS), ("triton_2d", MODES_2D),
                              ("native_fft", NATIVE_FFTS), ("native_isa", NATIVE_ISAS)):
            value = getattr(self, name)
            if value not in choices:
                raise ValueError(f"setting {name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type == "bool" and not isinstance(value, bool):
                raise ValueError(f"setting {f.name} must be True or False, got {value!r}")
            if f.type.startswith("int"):
                if value is None and "None" in f.type:
                    continue
                low = 0 if f.name in ("native_cache_mb", "native_row_pad") else 1
                if not isinstance(value, int) or isinstance(value, bool) or value < low:
                    raise ValueError(f"setting {f.name} must be an int >= {low}, got {value!r}")


def _from_environment() -> Settings:
    precision = os.environ.get(PRECISION_ENV, "").strip() or "tf32"
    if precision not in PRECISIONS:
        raise ValueError(f"{PRECISION_ENV} must be one of {', '.join(map(repr, PRECISIONS))}, got {precision!r}")
    return Settings(triton_precision=precision)


_current: Settings = _from_environment()
_listeners: list[Callable[[Settings], None]] = []


def current() -> Settings:
    """The settings in force."""
    return _current


def on_change(listener: Callable[[Settings], None]) -> None:
    """Call ``listener(settings)`` now and whenever the settings change (the native operator keeps
    its own copy of its switches)."""
    _listeners.append(listener)
    listener(_current)


def _replace(new: Settings) -> None:
    global _current
    _current = new
    for listener in _listeners:
        listener(new)


def update(**changes) -> Settings:
    """Change the named settings (ValueError for an unknown name or a bad value); returns the new ones."""
    unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(Settings)})
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(unknown)}; known: "
                         + ", ".join(f.name for f in dataclasses.fields(Settings)))
    new = dataclasses.replace(_current, **changes)
    _replace(new)
    return new


def restore(settings: Settings) -> None:
    """Put back settings taken earlier with :func:`current`."""
    _replace(settings)


@contextlib.contextmanager
def override(**changes) -> Iterator[Settings]:
    """The named settings changed inside the ``with`` block, the previous ones restored after it."""
    before = _current
    try:
        yield update(**changes)
    finally:
        _replace(before)


def env_backend() -> str:
    """``$SCC_FAST_BACKEND``, stripped ("" when unset)."""
    return os.environ.get(BACKEND_ENV, "").strip()


def env_dispatch_table() -> str:
    """``$SCC_FAST_DISPATCH_TABLE``, stripped ("" when unset)."""
    return os.environ.get(DISPATCH_TABLE_ENV, "").strip()
