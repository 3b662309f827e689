"""Backend "torch": the fast pure-torch fallback, on any device.

docs/loss.md section 5: a real-to-complex ``rfftn`` per map, the half spectrum weighted back to the
full one, the quadratic sums taken in the spatial domain by Parseval, and an analytic gradient
computed in the forward call. Only that gradient (B x C' x spatial) is kept for backward (the
registered op of :mod:`scc_fast.backends.activation`), whose work is one multiplication by the
upstream gradient. Classes are processed one at a time, so
the complex spectra of one class are alive at a time and integer labels are never expanded
into a B x C' x spatial one-hot tensor.

``kind="complex"`` needs no transform at all (:func:`complex_correlation`).
"""

from __future__ import annotations

import sys

import torch

from .._numerics import (
    DEGENERATE_TARGET_RTOL,
    accumulation_dtype,
    is_constant_map,
    product_is_zero,
    safe_div,
    variance_is_zero,
)
from ._protocol import FieldRequest, LossOptions
from .activation import (
    field_backward, field_fake, fused_entry, fused_loss, kernel_backward, probability_correlation, probability_field,
)

__all__ = ["correlation", "complex_correlation", "field", "loss", "PairStatistics", "pair_coefficients"]


def unavailable_reason() -> str | None:
    return None


def unsupported_reason(probs: torch.Tensor, target: torch.Tensor) -> str | None:
    return None


def half_spectrum_weights(shape: tuple[int, ...], include_dc: bool, device, dtype) -> torch.Tensor:
    """Weights that turn sums over the ``rfftn`` half spectrum into full-spectrum sums.

    Each bin of the last axis counts twice, except bin 0 and (for even length) the Nyquist bin,
    which count once; the DC bin gets weight 0 when it is left out of K.

    Built with device ops only: assigning a Python number into a CUDA tensor element copies a CPU
    scalar to the device, which a CUDA graph cannot capture (bench/RESULTS.md, GPU run 4, rows
    ``torch:graph``).
    """
    last = shape[-1]
    k = torch.arange(last // 2 + 1, device=device)
    w_last = torch.where((k == 0) | (2 * k == last), 1.0, 2.0).to(dtype)
    half_shape = (*shape[:-1], last // 2 + 1)
    w = w_last.expand(half_shape).clone()
    if not include_dc:
        w.view(-1)[:1].zero_()  # the DC bin: flat index 0 of the contiguous clone
    return w


class PairStatistics:
    """The per-pair sums of docs/loss.md sections 4 and 5, batched over images (1-D tensors of length B).

    Attributes mirror docs/loss.md section 4: ``energy_a/b`` = sum_K A^2, B^2 (Parseval, centered when DC is
    out); ``cross`` = sum_K Re(P conj Y); ``t_a``, ``t_b``, ``t_ab`` = sum_K A, B, A B (the three
    sums that need the transform); ``total_a/b`` = energy over all frequencies; ``n`` = |K|.
    """

    def __init__(self, n, energy_a, energy_b, cross, total_a, total_b, t_a, t_b, t_ab):
        self.n = n
        self.energy_a, self.energy_b, self.cross = energy_a, energy_b, cross
        self.total_a, self.total_b = total_a, total_b
        self.t_a, self.t_b, self.t_ab = t_a, t_b, t_ab


def pair_coefficients(s: PairStatistics, magnitude_weight: float, phase_weight: float):
    """SCC per pair and the coefficients of its gradient (docs/loss.md section 4).

    With ``U_k = P_k / |P_k|`` the gradient of SCC with respect to p is
    ``Re(DFT^H[(c_a + c_ab B_k) U_k]) + c_aa * d(sum_K A^2)/dp + c_re * d(sum_K Re P conj Y)/dp``.

    Returns:
        ``(scc, c_a, c_ab, c_aa, c_re)``, each a tensor like ``s.t_ab``.
    """
    n = s.n
    var_a = s.energy_a - s.t_a * s.t_a / n
    var_b = s.energy_b - s.t_b * s.t_b / n
    cov = s.t_ab - s.t_a * s.t_b / n
    zero_mag = variance_is_zero(var_a, s.energy_a, s.total_a) | variance_is_zero(var_b, s.energy_b, s.total_b)
    zero_phase = product_is_zero(s.t_ab, s.energy_a, s.energy_b, s.total_a, s.total_b)
    one = torch.ones_like(var_a)
    den = torch.sqrt(torch.where(zero_mag, one, var_a * var_b))
    rho_mag = safe_div(cov, den, zero_mag)
    rho_phase = safe_div(s.cross, s.t_ab, zero_phase)

    wm = torch.where(zero_mag, torch.zeros_like(var_a), magnitude_weight / den)  # w_mag / D
    var_a_safe = torch.where(zero_mag, one, var_a)
    wp = torch.where(zero_phase, torch.zeros_like(var_a), phase_weight / torch.where(zero_phase, one, s.t_ab))
    c_ab = wm - wp * rho_phase
    c_a = (-wm * s.t_b + magnitude_weight * rho_mag * s.t_a / var_a_safe) / n
    c_aa = -0.5 * magnitude_weight * rho_mag / var_a_safe
    c_re = wp
    scc = magnitude_weight * rho_mag + phase_weight * rho_phase
    return scc, c_a, c_ab, c_aa, c_re


def _bshape(v: torch.Tensor, ndim: int) -> torch.Tensor:
    return v.view((-1,) + (1,) * (ndim - 1))


def _one_class(p, y, y_is_label, include_dc, magnitude_weight, phase_weight, need_grad):
    """SCC, validity and (optionally) dSCC/dp for one class over the batch. p, y: B x spatial."""
    dims = tuple(range(1, p.dim()))
    shape = p.shape[1:]
    n_vox = p[0].numel()
    n = n_vox if include_dc else n_vox - 1

    # Spatial sums. With DC out the Parseval terms are centered sums, taken in two passes (mean,
    # then squared deviations) so that N sum p^2 - S_p^2 does not cancel for near-constant maps.
    # (torch.var_mean computes the same but was much slower here: bench/RESULTS.md, 'Figures moved
    # out of the code's comments'.)
    nd = p.dim()
    mean_p = p.mean(dims)
    dev_p = p - _bshape(mean_p, nd)
    var_p = (dev_p * dev_p).sum(dims) / n_vox
    total_a = n_vox * n_vox * (var_p + mean_p * mean_p)
    if y_is_label:
        count = y.sum(dims)
        mean_y = count / n_vox
        total_b = n_vox * count
        energy_b = total_b if include_dc else count * (n_vox - count)
        valid = count > 0 if include_dc else count * (n_vox - count) > 0
    else:
        mean_y = y.mean(dims)
        dev_y = y - _bshape(mean_y, nd)
        var_y = (dev_y * dev_y).sum(dims) / n_vox
        del dev_y
        total_b = n_vox * n_vox * (var_y + mean_y * mean_y)
        energy_b = total_b if include_dc else n_vox * n_vox * var_y
        valid = ~(energy_b <= DEGENERATE_TARGET_RTOL * total_b)  # a NaN target stays valid: NaN propagates
    if include_dc:
        energy_a = total_a
        cross = n_vox * (p * y).sum(dims)
    else:
        energy_a = n_vox * n_vox * var_p
        cross = n_vox * (dev_p * y).sum(dims)
    del dev_p

    P = torch.fft.rfftn(p, dim=dims)
    A = P.abs()
    if not need_grad:
        del P
    w = half_spectrum_weights(tuple(shape), include_dc, p.device, p.dtype)
    B = torch.fft.rfftn(y, dim=dims).abs()
    wA = A * w
    t_a = wA.sum(dims)
    t_ab = (wA * B).sum(dims)
    del wA
    t_b = (B * w).sum(dims)
    stats = PairStatistics(n, energy_a, energy_b, cross, total_a, total_b, t_a, t_b, t_ab)
    scc, c_a, c_ab, c_aa, c_re = pair_coefficients(stats, magnitude_weight, phase_weight)
    if not need_grad:
        return scc, valid, None

    # Field (c_a + c_ab B_k) U_k on the half spectrum, 0 at DC when DC is out of K and where
    # |P_k| = 0; its DFT^H is irfftn with norm="forward" (unscaled: no pass multiplying by 1 / N),
    # which extends it by Hermitian symmetry, as P and B are.
    mag = _bshape(c_a, nd) + _bshape(c_ab, nd) * B
    del B
    if not include_dc:
        mag[(slice(None),) + (0,) * (nd - 1)].zero_()  # DC of every map (no CPU scalar copied)
    nonzero = A > 0
    if include_dc:
        # A constant p's spectrum off DC is rounding noise, taken as 0 (docs/loss.md, section 2).
        # (Without DC a constant p has zero denominators, so its field is 0 already.)
        flat = _bshape(is_constant_map(n_vox * n_vox * var_p, total_a), nd)
        off_dc = torch.ones_like(nonzero)
        off_dc[(slice(None),) + (0,) * (nd - 1)].fill_(False)  # (no CPU scalar copied)
        nonzero &= ~(flat & off_dc)
    mag = torch.where(nonzero, mag / torch.where(nonzero, A, torch.ones_like(A)), torch.zeros_like(A))
    del A, nonzero
    grad = torch.fft.irfftn(P * mag, s=shape, dim=dims, norm="forward")
    del P, mag
    c_p = 2 * n_vox * c_aa
    c_y = n_vox * c_re
    grad.addcmul_(p, _bshape(c_p, nd)).addcmul_(y, _bshape(c_y, nd))
    if not include_dc:
        grad -= _bshape(c_p * mean_p + c_y * mean_y, nd)
    return scc, valid, grad


#: Elements per chunk of classes (B x k x spatial), per device type. On the CPU one class at a
#: time measured fastest (whole-batch ops over all classes were much slower: bench/RESULTS.md,
#: 'Figures moved out of the code's comments') and keeps the transient spectra to one class. On a
#: GPU the per-class loop is launch-bound (far slower than the reference: bench/RESULTS.md, GPU
#: run 1), so classes are batched up to this many elements (a few times that in transient float32
#: spectra).
CHUNK_ELEMENTS = {"cpu": 1, "cuda": 1 << 25}


def _forward(probs, target, first_class, include_dc, magnitude_weight, phase_weight, need_grad):
    acc = accumulation_dtype(probs.dtype)
    probs = probs.to(acc)
    n_batch, n_chan = probs.shape[:2]
    spatial = probs.shape[2:]
    labels = not target.is_floating_point()
    scc = probs.new_empty(n_batch, n_chan)
    valid = torch.empty(n_batch, n_chan, dtype=torch.bool, device=probs.device)
    grad = torch.empty_like(probs, memory_format=torch.contiguous_format) if need_grad else None
    per_class = probs[:, 0].numel()
    budget = CHUNK_ELEMENTS.get(probs.device.type, CHUNK_ELEMENTS["cpu"])
    step = max(1, min(n_chan, budget // max(per_class, 1)))
    for c0 in range(0, n_chan, step):
        c1 = min(n_chan, c0 + step)
        k = c1 - c0
        # Contiguous copies: reductions over a strided class slice were far slower
        # (bench/RESULTS.md, 'Figures moved out of the code's comments').
        p = probs[:, c0:c1].reshape(n_batch * k, *spatial).contiguous()
        if labels:
            classes = torch.arange(first_class + c0, first_class + c1, device=probs.device)
            y = target.unsqueeze(1) == classes.view((1, k) + (1,) * len(spatial))
            y = y.to(acc).reshape(n_batch * k, *spatial)
        else:
            y = target[:, c0:c1].to(acc).reshape(n_batch * k, *spatial)
        s, v, g = _one_class(p, y, labels, include_dc, magnitude_weight, phase_weight, need_grad)
        scc[:, c0:c1] = s.view(n_batch, k)
        valid[:, c0:c1] = v.view(n_batch, k)
        if need_grad:
            grad[:, c0:c1] = g.view(n_batch, k, *spatial)
    return scc, valid, grad


def correlation(
    probs: torch.Tensor,
    target: torch.Tensor,
    *,
    first_class: int = 0,
    include_dc: bool = False,
    magnitude_weight: float = 0.5,
    phase_weight: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair SCC and the non-degenerate mask; see :mod:`scc_fast.backends` for the contract."""
    return probability_correlation("torch", probs, target, first_class=first_class, include_dc=include_dc,
                                   magnitude_weight=magnitude_weight, phase_weight=phase_weight)


def _probs_field(probs, target, first_class, include_dc, magnitude_weight, phase_weight, need_grad):
    """``(scc, valid, field)`` of probabilities: field = dSCC/dp (B x C' x spatial, or (0,))."""
    scc, valid, grad = _forward(probs, target, first_class, include_dc, magnitude_weight, phase_weight, need_grad)
    return scc, valid, grad if grad is not None else scc.new_empty((0,))


def field(x: torch.Tensor, target: torch.Tensor, request: FieldRequest, field_weights=None):
    """``(scc, valid, field)`` (:class:`scc_fast.backends._protocol.FusedBackend`): the activation
    with torch ops, then the spectra and the analytic field."""
    return probability_field(_probs_field, x, target, request)


# The registered op's backward and fake implementation, and the activation fused around field
# (scc_fast.backends.activation).
backward, fake = field_backward, field_fake
activated_correlation = fused_entry("torch", sys.modules[__name__])


def loss(x: torch.Tensor, target: torch.Tensor, options: LossOptions) -> torch.Tensor:
    """The loss (:class:`scc_fast.backends._protocol.Backend`); the activation is fused where the
    one-pass backward kernel runs (CUDA), applied with torch ops elsewhere."""
    outside = options.activation is not None and not kernel_backward(x, "torch")
    return fused_loss("torch", x, target, options, activation_outside=outside)


def complex_correlation(
    probs: torch.Tensor,
    target: torch.Tensor,
    *,
    first_class: int = 0,
    include_dc: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``kind="complex"`` with no transform: by Parseval every term is a spatial sum.

    Over K, ``sum_K P conj(Y) = N sum p y - [DC out] S_p S_y``, and the mean of P over K is
    ``p_0`` (all frequencies) or ``(N p_0 - S_p) / (N - 1)`` (DC out), so the Pearson correlation
    of the complex spectra needs the voxel-0 values and three spatial sums. Autograd handles the
    gradient (it is elementwise).
    """
    from ..reference import dense_target

    acc = accumulation_dtype(probs.dtype)
    p = probs.to(acc).flatten(2)
    y = dense_target(target, probs.shape[1], first_class, acc).flatten(2)
    n_vox = p.shape[-1]
    var_p, mean_p = torch.var_mean(p, dim=-1, correction=0)
    var_y, mean_y = torch.var_mean(y, dim=-1, correction=0)
    total_p = n_vox * n_vox * (var_p + mean_p * mean_p)
    total_y = n_vox * n_vox * (var_y + mean_y * mean_y)
    p0, y0 = p[..., 0], y[..., 0]
    if include_dc:
        # mean_K P = p_0: remove the voxel-0 term from each sum.
        energy_p, energy_y = total_p, total_y
        cov = n_vox * ((p * y).sum(-1) - p0 * y0)
        var_sp = n_vox * ((p * p).sum(-1) - p0 * p0)
        var_sy = n_vox * ((y * y).sum(-1) - y0 * y0)
    else:
        n = n_vox - 1
        energy_p = n_vox * n_vox * var_p
        energy_y = n_vox * n_vox * var_y
        # Means over k != 0 in centered form: (N p_0 - S_p) / (N - 1) = N (p_0 - mean p) / (N - 1).
        mp = n_vox * (p0 - mean_p) / n
        my = n_vox * (y0 - mean_y) / n
        cov = n_vox * ((p - mean_p.unsqueeze(-1)) * y).sum(-1) - n * mp * my
        var_sp = energy_p - n * mp * mp
        var_sy = energy_y - n * my * my
    zero = variance_is_zero(var_sp, energy_p, total_p) | variance_is_zero(var_sy, energy_y, total_y)
    den = torch.sqrt(torch.where(zero, torch.ones_like(var_sp), var_sp * var_sy))
    if target.is_floating_point():
        valid = ~(energy_y <= DEGENERATE_TARGET_RTOL * total_y)  # a NaN target stays valid: NaN propagates
    else:
        count = y.sum(-1).round()
        valid = count > 0 if include_dc else count * (n_vox - count) > 0
    return safe_div(cov, den, zero), valid
