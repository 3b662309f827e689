"""Shared numerical conventions: the zero tests every backend applies the same way.

docs/loss.md section 2 defines a correlation whose denominator is 0 as 0 and leaves degenerate
pairs out of the loss. In floating point "is 0" needs a tolerance; these helpers give
the one tolerance the reference and every backend use, scaled to the working dtype.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

#: Relative test for a float target with no energy over K (docs/loss.md section 2).
DEGENERATE_TARGET_RTOL = 1e-9


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype sums are accumulated in: float64 for float64 input, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def to_accumulation(x: torch.Tensor) -> torch.Tensor:
    """``x`` in :func:`accumulation_dtype`; ``x`` itself where it already is (no ``to`` dispatched:
    host time on a host-bound GPU step)."""
    acc = accumulation_dtype(x.dtype)
    return x if x.dtype == acc else x.to(acc)


def variance_is_zero(var: torch.Tensor, energy: torch.Tensor, total_energy: torch.Tensor) -> torch.Tensor:
    """True where a variance over K is rounding noise.

    ``var`` is ``sum_K (A - mean A)^2``, ``energy`` is ``sum_K A^2`` and ``total_energy`` is the
    energy over all frequencies, DC included. The variance of a spectrum whose magnitude is flat
    (a constant map, a single voxel) is 0 exactly; computed, it is a few ulps of ``energy``, and
    the spectral energy of a constant map is a few ulps squared of ``total_energy``.
    """
    eps = torch.finfo(var.dtype).eps
    # An Inf energy (Inf in the input, validate=False) is not "zero": let it propagate as NaN.
    zero = (var <= 64 * eps * energy) | (energy <= 1e3 * eps * eps * total_energy)
    return zero & torch.isfinite(total_energy)


def product_is_zero(
    cross: torch.Tensor,
    energy_a: torch.Tensor,
    energy_b: torch.Tensor,
    total_a: torch.Tensor | None = None,
    total_b: torch.Tensor | None = None,
) -> torch.Tensor:
    """True where ``sum_K A B`` is rounding noise next to ``sqrt(sum A^2 sum B^2)``, or (given the
    total energies) where A or B itself is rounding noise over K: a constant map, whose FFT leaves
    eps-sized residues off DC that would otherwise make a noise-driven phase correlation."""
    eps = torch.finfo(cross.dtype).eps
    zero = cross <= 64 * eps * torch.sqrt(energy_a * energy_b)
    if total_a is not None:
        zero = zero | (energy_a <= 1e3 * eps * eps * total_a)
    if total_b is not None:
        zero = zero | (energy_b <= 1e3 * eps * eps * total_b)
    return zero & torch.isfinite(cross)


def is_constant_map(energy_off_dc: torch.Tensor, total_energy: torch.Tensor) -> torch.Tensor:
    """True where a map counts as constant (docs/loss.md, section 2): its energy off DC,
    ``sum_{k != 0} |P_k|^2 = N sum (p - mean p)^2``, is at most ``1e3 eps^2`` of its total energy.

    Its spectrum off DC is then rounding noise, whose phase is random; every backend takes it as
    exactly 0 there (``|P_k| := 0``, ``P_k / |P_k| := 0``), so the gradient field off DC is 0.
    """
    eps = torch.finfo(total_energy.dtype).eps
    return (energy_off_dc <= 1e3 * eps * eps * total_energy) & torch.isfinite(total_energy)


def safe_div(num: torch.Tensor, den: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """``num / den`` where ``zero`` is False, exactly 0 (with a 0 gradient) where it is True."""
    ones = torch.ones_like(den)
    return torch.where(zero, torch.zeros_like(num), num / torch.where(zero, ones, den))


def refuse_double_backward(backend: str) -> None:
    """Raise if a fast backend's backward runs under ``create_graph=True``.

    The fast backends save the gradient computed in forward and treat it as a constant, so a
    second derivative through them would be silently wrong.
    """
    if torch.is_grad_enabled():
        raise RuntimeError(
            f"scc_fast backend '{backend}' does not support double backward (create_graph=True): its "
            "gradient is computed analytically in the forward pass and is not differentiable. "
            "Use backend='reference' for higher-order derivatives."
        )


def plain_eager(*tensors: torch.Tensor) -> bool:
    """Whether a call may skip registered ops and run kernels directly (the eager loss node,
    the reduction's kernel): eager mode, plain tensors and no dispatch mode (anything else may trace,
    and needs a registered op's fake implementation or plain torch ops)."""
    if torch.compiler.is_compiling() or _get_current_dispatch_mode() is not None:
        return False
    return all(type(t) is torch.Tensor or type(t) is torch.nn.Parameter for t in tensors)
