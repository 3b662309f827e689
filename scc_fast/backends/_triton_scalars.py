"""Per-pair scalars of docs/loss.md sections 4 and 5 as Triton device functions, shared by backends "triton"
(inside its fused kernel and its scalars launch) and "triton_fft" (its pair kernel).

They compute what :func:`scc_fast.backends.torch_fft.pair_coefficients` computes on tensors, with
the zero tests of :mod:`scc_fast._numerics`: ``EPS`` is the working dtype's epsilon and ``FMAX``
its largest finite value (``|x| <= FMAX`` is False for NaN and Inf), so float32 and float64 sums
get the tolerance the torch backends give them. Import only where triton is importable.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

FP32_EPS = tl.constexpr(float(torch.finfo(torch.float32).eps))
FP32_MAX = tl.constexpr(float(torch.finfo(torch.float32).max))
FP64_EPS = tl.constexpr(float(torch.finfo(torch.float64).eps))
FP64_MAX = tl.constexpr(float(torch.finfo(torch.float64).max))


@triton.jit
def energies(s_p, s_y, m2_p, pyc, py, m2_y, n_vox, LABELS: tl.constexpr, INCLUDE_DC: tl.constexpr):
    """docs/loss.md section 5's Parseval sums from the spatial sums of a pair (n_vox voxels): s_p, s_y
    (sum p, sum y; for labels s_y is the class count), m2_p, m2_y (sums of squared deviations from
    the means), pyc (sum (p - mean p) y), py (sum p y). Returns (mean_p, mean_y, var_p, total_a,
    energy_a, total_b, energy_b, cross, valid)."""
    mean_p = s_p / n_vox
    mean_y = s_y / n_vox
    var_p = m2_p / n_vox
    total_a = n_vox * (n_vox * (var_p + mean_p * mean_p))
    if LABELS:
        count = s_y
        total_b = n_vox * count
        if INCLUDE_DC:
            energy_b = total_b
            valid = count > 0
        else:
            energy_b = count * (n_vox - count)
            valid = energy_b > 0
    else:
        var_y = m2_y / n_vox
        total_b = n_vox * n_vox * (var_y + mean_y * mean_y)
        if INCLUDE_DC:
            energy_b = total_b
        else:
            energy_b = n_vox * n_vox * var_y
        valid = (energy_b > 1e-9 * total_b) | (energy_b != energy_b)  # NaN target: NaN propagates
    if INCLUDE_DC:
        energy_a = total_a
        cross = n_vox * py
    else:
        energy_a = n_vox * n_vox * var_p
        cross = n_vox * pyc
    return mean_p, mean_y, var_p, total_a, energy_a, total_b, energy_b, cross, valid


@triton.jit
def pair_scalars(energy_a, total_a, energy_b, total_b, cross, t_a, t_b, t_ab, n_k, magnitude_weight, phase_weight,
                 EPS: tl.constexpr, FMAX: tl.constexpr):
    """SCC and the correlations of one pair (or a block of pairs), as pair_coefficients. Returns
    (scc, rho_mag, rho_phase, den, zero_mag, zero_phase, var_a)."""
    var_a = energy_a - t_a * t_a / n_k
    var_b = energy_b - t_b * t_b / n_k
    cov = t_ab - t_a * t_b / n_k
    # An Inf energy (Inf in the input) is not "zero": it propagates as NaN (_numerics).
    zero_a = (var_a <= 64 * EPS * energy_a) | (energy_a <= 1e3 * EPS * EPS * total_a)
    zero_a = zero_a & (tl.abs(total_a) <= FMAX)
    zero_b = (var_b <= 64 * EPS * energy_b) | (energy_b <= 1e3 * EPS * EPS * total_b)
    zero_b = zero_b & (tl.abs(total_b) <= FMAX)
    zero_mag = zero_a | zero_b
    # product_is_zero, and also 0 when A or B is rounding noise over K (a constant map):
    # then T_ab is noise too, and 1 / T_ab would blow the gradient up.
    zero_phase = (t_ab <= 64 * EPS * tl.sqrt(energy_a * energy_b)) | (energy_a <= 1e3 * EPS * EPS * total_a)
    zero_phase = (zero_phase | (energy_b <= 1e3 * EPS * EPS * total_b)) & (tl.abs(t_ab) <= FMAX)
    den = tl.sqrt(tl.where(zero_mag, 1.0, var_a * var_b))
    rho_mag = tl.where(zero_mag, 0.0, cov / den)
    t_ab_safe = tl.where(zero_phase, 1.0, t_ab)
    rho_phase = tl.where(zero_phase, 0.0, cross / t_ab_safe)
    scc = magnitude_weight * rho_mag + phase_weight * rho_phase
    return scc, rho_mag, rho_phase, den, zero_mag, zero_phase, var_a


@triton.jit
def grad_coefficients(
    rho_mag, rho_phase, den, zero_mag, zero_phase, var_a, t_a, t_b, t_ab, n_k, var_p, total_a, n_vox,
    magnitude_weight, phase_weight, EPS: tl.constexpr,
):
    """dSCC/dp = Re DFT^H[(c_a + c_ab B) P/|P|] + 2N c_aa (p - [DC out] mean p) + N c_re (y - [DC
    out] mean y). Returns (c_a, c_ab, c_aa, c_re, flat_p)."""
    wm = tl.where(zero_mag, 0.0, magnitude_weight / den)
    var_a_safe = tl.where(zero_mag, 1.0, var_a)
    wp = tl.where(zero_phase, 0.0, phase_weight / tl.where(zero_phase, 1.0, t_ab))
    c_ab = wm - wp * rho_phase
    c_a = (-wm * t_b + magnitude_weight * rho_mag * t_a / var_a_safe) / n_k
    c_aa = -0.5 * magnitude_weight * rho_mag / var_a_safe
    # A constant p has no spectrum off DC: there P_k is rounding noise and its phase
    # U_k is random, where the exact U_k is 0 (as the float64 reference has it).
    flat_p = n_vox * n_vox * var_p <= 1e3 * EPS * EPS * total_a
    return c_a, c_ab, c_aa, wp, flat_p
