"""The reference: docs/loss.md section 1 written directly with ``torch.fft.fftn`` and autograd.

This is the correctness oracle (run it in float64) and the "torch.fft baseline" every
benchmark is measured against. It is deliberately plain: full complex spectra, means and
variances over the frequency set K formed as written, gradients left to autograd. Do not
optimise it; optimise a backend and compare against this.
"""

from __future__ import annotations

import torch

from ._numerics import (
    DEGENERATE_TARGET_RTOL,
    accumulation_dtype,
    is_constant_map,
    product_is_zero,
    safe_div,
    variance_is_zero,
)

__all__ = ["reference_correlation", "reference_complex_correlation", "dense_target"]


def dense_target(target: torch.Tensor, num_channels: int, first_class: int, dtype: torch.dtype) -> torch.Tensor:
    """The B x C' x spatial float target: one-hot of integer labels, or the float target as given.

    Label ``first_class + j`` maps to channel ``j``; any other label (``-1`` marks ignored voxels)
    is 0 in every channel.
    """
    if target.is_floating_point():
        return target.to(dtype)
    classes = torch.arange(first_class, first_class + num_channels, device=target.device)
    classes = classes.view((1, -1) + (1,) * (target.dim() - 1))
    return (target.unsqueeze(1) == classes).to(dtype)


def _flat_spectra(probs: torch.Tensor, target: torch.Tensor, first_class: int):
    acc = accumulation_dtype(probs.dtype)
    p = probs.to(acc)
    y = dense_target(target, probs.shape[1], first_class, acc)
    dims = tuple(range(2, probs.dim()))
    P = torch.fft.fftn(p, dim=dims).flatten(2)
    Y = torch.fft.fftn(y, dim=dims).flatten(2)
    return p, y, P, Y


def _target_is_degenerate(target: torch.Tensor, y: torch.Tensor, energy_k: torch.Tensor, include_dc: bool) -> torch.Tensor:
    n_vox = y[0, 0].numel()
    if not target.is_floating_point():
        count = y.flatten(2).sum(-1).round().to(torch.int64)
        return count == 0 if include_dc else count * (n_vox - count) == 0
    total = n_vox * (y.flatten(2) ** 2).sum(-1)
    return energy_k <= DEGENERATE_TARGET_RTOL * total


def reference_correlation(
    probs: torch.Tensor,
    target: torch.Tensor,
    *,
    first_class: int = 0,
    include_dc: bool = False,
    magnitude_weight: float = 0.5,
    phase_weight: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair SCC and the mask of non-degenerate pairs, by the definition.

    Args:
        probs: B x C' x spatial probabilities (any float dtype; fp16/bf16 computed in float32).
        target: integer labels B x spatial (label ``first_class + j`` is channel ``j``; -1 is
            ignored) or a float target B x C' x spatial.
        first_class: the label of channel 0, for integer targets.
        include_dc: keep the DC bin in the frequency set K.
        magnitude_weight, phase_weight: w_mag and w_phase.

    Returns:
        ``(scc, valid)``: B x C' correlation (differentiable in ``probs``) and a bool B x C'
        tensor, False for degenerate pairs (target without energy over K).
    """
    p, y, P, Y = _flat_spectra(probs, target, first_class)
    energy_total_p = (P.abs() ** 2).sum(-1)
    energy_total_y = (Y.abs() ** 2).sum(-1)
    A, B = P.abs(), Y.abs()
    # A constant map's spectrum off DC is rounding noise: taken as exactly 0 (docs/loss.md, section 2).
    p_flat = p.flatten(2)
    energy_off_dc = p_flat.shape[-1] * ((p_flat - p_flat.mean(-1, keepdim=True)) ** 2).sum(-1)
    flat = is_constant_map(energy_off_dc, energy_total_p)
    off_dc = torch.arange(A.shape[-1], device=A.device) > 0
    A = torch.where(flat.unsqueeze(-1) & off_dc, torch.zeros_like(A), A)
    if not include_dc:
        P, Y, A, B = P[..., 1:], Y[..., 1:], A[..., 1:], B[..., 1:]
    A_c = A - A.mean(-1, keepdim=True)
    B_c = B - B.mean(-1, keepdim=True)
    cov = (A_c * B_c).sum(-1)
    var_a = (A_c**2).sum(-1)
    var_b = (B_c**2).sum(-1)
    energy_a = (A**2).sum(-1)
    energy_b = (B**2).sum(-1)

    zero_mag = variance_is_zero(var_a, energy_a, energy_total_p) | variance_is_zero(var_b, energy_b, energy_total_y)
    den_mag = torch.sqrt(torch.where(zero_mag, torch.ones_like(var_a), var_a * var_b))
    rho_mag = safe_div(cov, den_mag, zero_mag)

    cross = (A * B).sum(-1)
    real_cross = (P * Y.conj()).real.sum(-1)
    rho_phase = safe_div(real_cross, cross, product_is_zero(cross, energy_a, energy_b, energy_total_p, energy_total_y))

    valid = ~_target_is_degenerate(target, y, energy_b, include_dc)
    return magnitude_weight * rho_mag + phase_weight * rho_phase, valid


def reference_complex_correlation(
    probs: torch.Tensor,
    target: torch.Tensor,
    *,
    first_class: int = 0,
    include_dc: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``kind="complex"`` by its FFT formula: Pearson correlation of the complex spectra over K."""
    p, y, P, Y = _flat_spectra(probs, target, first_class)
    energy_total_p = (P.abs() ** 2).sum(-1)
    energy_total_y = (Y.abs() ** 2).sum(-1)
    if not include_dc:
        P, Y = P[..., 1:], Y[..., 1:]
    P_c = P - P.mean(-1, keepdim=True)
    Y_c = Y - Y.mean(-1, keepdim=True)
    cov = (P_c * Y_c.conj()).real.sum(-1)
    var_p = (P_c.abs() ** 2).sum(-1)
    var_y = (Y_c.abs() ** 2).sum(-1)
    energy_y = (Y.abs() ** 2).sum(-1)
    zero = variance_is_zero(var_p, (P.abs() ** 2).sum(-1), energy_total_p) | variance_is_zero(
        var_y, energy_y, energy_total_y
    )
    den = torch.sqrt(torch.where(zero, torch.ones_like(var_p), var_p * var_y))
    valid = ~_target_is_degenerate(target, y, energy_y, include_dc)
    return safe_div(cov, den, zero), valid
