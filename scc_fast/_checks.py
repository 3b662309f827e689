"""The value checks of ``validate=True``, shared by the backends: :func:`check_values` where a
backend makes them in passes of their own, :func:`raise_flagged` where it makes them inside its
operator (backends "native" and "triton_fft": their first pass reads every logit and label
anyway, so the checks cost no pass of their own there).

Each check raises the same ``ValueError`` wherever it runs.
"""

from __future__ import annotations

import torch

NONFINITE_INPUT = "input contains NaN or Inf (pass validate=False to skip this check)"
NONFINITE_TARGET = "target contains NaN or Inf (pass validate=False to skip this check)"


def all_finite(t: torch.Tensor) -> bool:
    """``torch.isfinite(t).all()``, fast: the sum is finite when every element is (a NaN or Inf
    makes it NaN or Inf); only a non-finite sum, which finite values can also give by overflow,
    is checked element by element."""
    return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


def label_range(n_chan: int) -> int:
    """The number of valid labels for ``n_chan`` channels: 0 .. C - 1 (with C = 1, labels 0/1)."""
    return max(n_chan, 2)


def check_labels(target: torch.Tensor, n_chan: int, ignore_index: int | None) -> None:
    """Integer labels must be in [0, :func:`label_range` - 1] or equal ``ignore_index``."""
    n_labels = label_range(n_chan)
    if ignore_index is None:  # (never empty: scc_loss wants B >= 1 and spatial sizes >= 2)
        low, high = torch.aminmax(target)  # one pass, the common case
        out_of_range = bool((low < 0) | (high >= n_labels))  # one device sync
        bad = (target < 0) | (target >= n_labels) if out_of_range else None
    else:
        bad = ((target < 0) | (target >= n_labels)) & (target != ignore_index)
        bad = bad if bool(bad.any()) else None
    if bad is not None:
        raise_label_error(target, n_chan, ignore_index, bad)


def raise_label_error(
    target: torch.Tensor, n_chan: int, ignore_index: int | None, bad: torch.Tensor | None = None
) -> None:
    """Raise the out-of-range error for ``target``, naming the range of the values outside it."""
    n_labels = label_range(n_chan)
    if bad is None:
        bad = (target < 0) | (target >= n_labels)
        if ignore_index is not None:
            bad &= target != ignore_index
    found = target[bad]
    raise ValueError(
        f"target labels must be in [0, {n_labels - 1}] for {n_chan} channel(s)"
        + (f" or equal ignore_index={ignore_index}" if ignore_index is not None else "")
        + f", got values from {int(found.min())} to {int(found.max())}"
    )


def check_target_values(target: torch.Tensor, n_chan: int, ignore_index: int | None) -> None:
    """A float target must be finite; integer labels in range (:func:`check_labels`)."""
    if target.is_floating_point():
        if not all_finite(target):
            raise ValueError(NONFINITE_TARGET)
    else:
        check_labels(target, n_chan, ignore_index)


def check_values(x: torch.Tensor, target: torch.Tensor, ignore_index: int | None) -> None:
    """``validate=True``'s checks in passes of their own: the target (for ``x``'s C channels), then
    the input ``x``."""
    check_target_values(target, x.shape[1], ignore_index)
    if not all_finite(x):
        raise ValueError(NONFINITE_INPUT)


# Bits of the per-image (or per-program) flags a backend's first pass sets where it makes the
# checks itself (csrc/cpu/scc_cpu.cpp, enum InputFlag; triton_fft's stage 1).
FLAG_NONFINITE_INPUT = 1
FLAG_LABEL_OUTSIDE = 2


def raise_flagged(flags: torch.Tensor, target: torch.Tensor, n_chan: int, ignore_index: int | None = None) -> None:
    """Raise ``validate=True``'s error for what an operator's pass flagged (a non-empty int tensor of
    FLAG_* bits; one device sync): the target's error first, as :func:`check_values`
    orders them."""
    seen = int(flags.max())
    if seen & FLAG_LABEL_OUTSIDE:
        raise_label_error(target, n_chan, ignore_index)
    if seen & FLAG_NONFINITE_INPUT:
        raise ValueError(NONFINITE_INPUT)
