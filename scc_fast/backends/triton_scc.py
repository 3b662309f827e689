"""Backend "triton": SCC forward and gradient in Triton kernels that do the DFT themselves, for
2D input in one fused launch and for 3D input in five launches that share its code; 2D input can
also take the 3D passes (the split mode).

2D input (B x C' x H x W): :func:`_scc_fused_kernel`. A persistent grid (one program per SM at
most) loops over the (image, class) pairs and does all of docs/loss.md sections 4 and 5 for each:
spatial sums of p and y, row DFTs along W onto the ``W // 2 + 1`` half spectrum and column DFTs
along H as ``tl.dot`` products with cosine and sine tables, the per-pair scalars, the gradient
field and its inverse column and row DFTs plus the spatial terms: dSCC/dp is written. Each
program keeps its intermediates in a scratch in global memory, which stays in L2 (the phases are
listed above the kernel). Integer labels are compared inside the kernel: no one-hot tensor. Axes
from ``FOUR_STEP_MIN_H`` (128) up whose length 16 divides are factored (four-step, N = N1 N2: work
per output N1 + N2 instead of N); other lengths use the direct DFT-as-dot, masked to the block.

Precision of the dots: ``SCC_FAST_TRITON_PRECISION`` (``"tf32"``, the default, ``"tf32x3"`` or
``"ieee"``), the setting ``triton_precision`` of :mod:`scc_fast._settings` after import. With TF32
the operands are rounded to nearest TF32 in the kernel (tensor cores would truncate them). The
interpreter (``TRITON_INTERPRET=1``) computes float32 dots whatever the setting, unless the
setting ``triton_interpret_tf32`` is set.

3D input (B x C' x D x H x W), per chunk of pairs: ``_scc3d_slices_fwd`` (each depth slice's sums
and half spectra, by the 2D kernel's helpers), ``_scc3d_depth_fwd`` (the DFT along D and the
spectral sums), ``_scc3d_scalars``, ``_scc3d_depth_inv`` and ``_scc3d_slices_inv`` (the field and
its inverse transforms); three launches without the gradient. D may be 2 to 1024 (``MIN_DEPTH``,
``MAX_DEPTH``). The pairs go in chunks whose workspace, about 10 bytes per voxel and pair
(:func:`workspace_bytes_per_pair`), fits the setting ``triton_workspace_bytes``. Only the gradient
field is kept for backward; with the setting ``recompute_field`` nothing is, and backward runs all
five launches again: slower for the same peak (bench/RESULTS.md, GPU run 3), so it is off by default.

Activation inside the kernels (:func:`field`, while :func:`activation_in_kernel` is True): for
softmax and sigmoid the kernels read the logits and 2 floats per voxel of statistics, made by
``_activation_kernel.activation_stats``, and compute p where they load it (``_load_p``): no
B x C x spatial probability tensor is made (less memory at the forward's peak), for a few
exponentials per voxel more (bench/RESULTS.md, GPU run 3).

2D split mode (the setting ``triton_2d``): the fused kernel gives a pair to one program, so a call
with fewer pairs than SMs leaves SMs idle. The split mode runs 2D input through the five 3D
launches, with blocks of rows as the slices; ``"auto"`` (the default) takes it for such calls
(bench/RESULTS.md, GPU run 3; ``scc-fast bench gpu-check`` measures both).

The launches run inside the one registered op, ``torch.ops.scc_fast.activated_correlation``
(:mod:`scc_fast.backends.activation`), whose fake implementation lets ``torch.compile`` trace
them without a graph break and whose backward applies the saved field.
"""

from __future__ import annotations

import sys

import os
from typing import NamedTuple

import torch

from .. import _settings
from ._protocol import FieldRequest, LossOptions
from .activation import (
    field_backward, field_fake, fused_entry, fused_loss, probability_correlation, probability_field, with_no_aux,
)

try:  # Triton is optional: without it the backend reports itself unavailable.
    import triton
    import triton.language as tl

    _IMPORT_ERROR: str | None = None
except ImportError as exc:  # pragma: no cover - depends on the installation
    triton = None
    tl = None
    _IMPORT_ERROR = f"triton is not importable ({exc})"

__all__ = [
    "correlation", "unavailable_reason", "unsupported_reason", "PRECISIONS", "MODES_2D",
    "activation_in_kernel", "field", "loss", "settings",
]

#: Read once: the interpreter is chosen by Triton when the kernel is decorated (at import).
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

PRECISIONS = _settings.PRECISIONS

MIN_SIZE, MAX_SIZE = 8, 1024
_SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

NOT_IMPLEMENTED = (
    "four-step DFT for lengths that 16 does not divide (e.g. 250, 1000) or under 128 (e.g. a depth of 96): "
    "they use the direct DFT-as-dot, whose work per output grows as the length"
)


# --------------------------------------------------------------------------------------------
# The kernel
# --------------------------------------------------------------------------------------------

if triton is not None:
    from ._triton_scalars import FP32_EPS, FP32_MAX
    from ._triton_scalars import energies as _energies
    from ._triton_scalars import grad_coefficients as _grad_coefficients
    from ._triton_scalars import pair_scalars as _pair_scalars

    @triton.jit
    def _dot(a, b, PRECISION: tl.constexpr):
        """tl.dot; for TF32, both operands rounded to nearest TF32 first. The tensor cores would
        otherwise truncate the 13 low mantissa bits: a biased error, over the 5e-3 of docs/loss.md
        section 6 (measured: bench/RESULTS.md, 'Figures moved out of the code's comments')."""
        if PRECISION == "tf32":
            ua = (a.to(tl.uint32, bitcast=True) + 4096) >> 13
            ub = (b.to(tl.uint32, bitcast=True) + 4096) >> 13
            a = (ua << 13).to(tl.float32, bitcast=True)
            b = (ub << 13).to(tl.float32, bitcast=True)
        return tl.dot(a, b, input_precision=PRECISION)

    @triton.jit
    def _tdot(t, x, RIGHT: tl.constexpr, PRECISION: tl.constexpr):
        """t @ x, or with RIGHT x @ t: a table on the left (transforms along H) or right (along W)."""
        if RIGHT:
            y = _dot(x, t, PRECISION)
        else:
            y = _dot(t, x, PRECISION)
        return y

    @triton.jit
    def _cdot(c, s, xr, xi, INV: tl.constexpr, RIGHT: tl.constexpr, PRECISION: tl.constexpr):
        """(C - iS) @ X, or with INV (C + iS) @ X, for X = xr + i xi (with RIGHT, X @ (C -+ iS)):
        (re, im). re is finished before im is begun: the order of the dots sets where the compiler
        puts shared-memory barriers."""
        if INV:
            re = _tdot(c, xr, RIGHT, PRECISION) - _tdot(s, xi, RIGHT, PRECISION)
            im = _tdot(c, xi, RIGHT, PRECISION) + _tdot(s, xr, RIGHT, PRECISION)
        else:
            re = _tdot(c, xr, RIGHT, PRECISION) + _tdot(s, xi, RIGHT, PRECISION)
            im = _tdot(c, xi, RIGHT, PRECISION) - _tdot(s, xr, RIGHT, PRECISION)
        return re, im

    @triton.jit
    def _twiddle(zr, zi, twc, tws, INV: tl.constexpr):
        """Z times (c - i s), or with INV (c + i s): the four-step twiddle of step 2."""
        if INV:
            re = zr * twc - zi * tws
            im = zi * twc + zr * tws
        else:
            re = zr * twc + zi * tws
            im = zi * twc - zr * tws
        return re, im

    @triton.jit
    def _twiddles_at(tw_c_ptr, tw_s_ptr, n1, r2, N2):
        """Row n1 of the N1 x N2 twiddle tables (cos, sin), 0 past N2."""
        twc = tl.load(tw_c_ptr + n1 * N2 + r2, mask=r2 < N2, other=0.0)
        tws = tl.load(tw_s_ptr + n1 * N2 + r2, mask=r2 < N2, other=0.0)
        return twc, tws

    @triton.jit
    def _load_p(p_base, a_base, A_OFF, offs, mask, ACT: tl.constexpr):
        """p at offs of one map, float32, 0 where masked. ACT 0: p itself is at p_base. ACT 1
        (softmax) / 2 (sigmoid): p_base holds the logits and a_base the image's per-voxel
        statistics, max m (softmax) at a_base and r at a_base + A_OFF: p = exp(x - m) r with
        r = keep / sum_c exp(x_c - m), or p = r / (1 + exp(-x)) with r = keep (0 at an ignored
        voxel, else 1), so no probability tensor is ever made."""
        x = tl.load(p_base + offs, mask=mask, other=0.0).to(tl.float32)
        if ACT == 1:
            m = tl.load(a_base + offs, mask=mask, other=0.0)
            r = tl.load(a_base + A_OFF + offs, mask=mask, other=0.0)
            x = tl.exp(x - m) * r
        elif ACT == 2:
            r = tl.load(a_base + A_OFF + offs, mask=mask, other=0.0)
            x = r / (1.0 + tl.exp(-x))
        return x

    @triton.jit
    def _load_map(
        p_base, t_base, a_base, A_OFF, offs, mask, cls, TARGET: tl.constexpr, LABELS: tl.constexpr, ACT: tl.constexpr
    ):
        """p (or y, when TARGET: 1 where the label is cls, or the float target) at offs, float32,
        0 where masked."""
        if TARGET:
            if LABELS:
                lab = tl.load(t_base + offs, mask=mask, other=0)
                x = tl.where(mask & (lab == cls), 1.0, 0.0)
            else:
                x = tl.load(t_base + offs, mask=mask, other=0.0).to(tl.float32)
        else:
            x = _load_p(p_base, a_base, A_OFF, offs, mask, ACT)
        return x

    @triton.jit
    def _load_map_tile(
        p_base, t_base, a_base, A_OFF, rows, cols, H, W, cls,
        TARGET: tl.constexpr, LABELS: tl.constexpr, ACT: tl.constexpr,
    ):
        """p (or y, when TARGET) at [rows x cols], float32, 0 outside the image."""
        mask = (rows[:, None] < H) & (cols[None, :] < W)
        offs = rows[:, None] * W + cols[None, :]
        return _load_map(p_base, t_base, a_base, A_OFF, offs, mask, cls, TARGET, LABELS, ACT)

    @triton.jit
    def _load_pair_tile(
        p_base, t_base, a_base, A_OFF, rows, cols, H, W, cls, LABELS: tl.constexpr, ACT: tl.constexpr
    ):
        """p and y tiles [rows x cols] of one pair, float32, 0 outside the image; and the mask."""
        mask = (rows[:, None] < H) & (cols[None, :] < W)
        offs = rows[:, None] * W + cols[None, :]
        p = _load_map(p_base, t_base, a_base, A_OFF, offs, mask, cls, False, LABELS, ACT)
        y = _load_map(p_base, t_base, a_base, A_OFF, offs, mask, cls, True, LABELS, ACT)
        return p, y, mask

    @triton.jit
    def _row_dft(
        p_base, t_base, a_base, A_OFF, cos_w_ptr, sin_w_ptr, out_r, out_i, H, W, WH, cls,
        TARGET: tl.constexpr, LABELS: tl.constexpr, ACT: tl.constexpr, PRECISION: tl.constexpr,
        BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    ):
        """X1 = x @ (C - iS) along W (x = p, or y when TARGET), H x WH, into out_r / out_i."""
        rm = tl.arange(0, BM)
        rn = tl.arange(0, BN)
        rk = tl.arange(0, BK)
        for h0 in range(0, H, BM):
            rows = h0 + rm
            for k0 in range(0, WH, BN):
                kcols = k0 + rn
                acc_r = tl.zeros([BM, BN], dtype=tl.float32)
                acc_i = tl.zeros([BM, BN], dtype=tl.float32)
                for w0 in range(0, W, BK):
                    wr = w0 + rk
                    x = _load_map_tile(p_base, t_base, a_base, A_OFF, rows, wr, H, W, cls, TARGET, LABELS, ACT)
                    tmask = (wr[:, None] < W) & (kcols[None, :] < WH)
                    toffs = wr[:, None] * WH + kcols[None, :]
                    cw = tl.load(cos_w_ptr + toffs, mask=tmask, other=0.0)
                    sw = tl.load(sin_w_ptr + toffs, mask=tmask, other=0.0)
                    acc_r += _dot(x, cw, PRECISION)
                    acc_i -= _dot(x, sw, PRECISION)
                smask = (rows[:, None] < H) & (kcols[None, :] < WH)
                soffs = rows[:, None] * WH + kcols[None, :]
                tl.store(out_r + soffs, acc_r, mask=smask)
                tl.store(out_i + soffs, acc_i, mask=smask)

    @triton.jit
    def _spectrum_weight(inside, kw, is_dc, W, INCLUDE_DC: tl.constexpr):
        """Weights turning half-spectrum sums into full ones: 2, except bin 0 and the Nyquist
        bin of even W along the halved axis (kw) (1); 0 outside the spectrum and, with DC out of
        K, at the DC bin."""
        once = (kw == 0) | (kw * 2 == W)
        wgt = tl.where(inside, tl.where(once, 1.0, 2.0), 0.0)
        if not INCLUDE_DC:
            wgt = tl.where(is_dc, 0.0, wgt)
        return wgt

    @triton.jit
    def _field_tile(s_pr, s_pi, s_b, offs, mask, khs, kcols, c_a, c_ab, flat_p, INCLUDE_DC: tl.constexpr):
        """Gradient field (c_a + c_ab B) P / |P| at the given spectrum bins (0 where |P| = 0,
        at DC when DC is out of K, and off DC for a constant p)."""
        pr = tl.load(s_pr + offs, mask=mask, other=0.0)
        pi = tl.load(s_pi + offs, mask=mask, other=0.0)
        bmag = tl.load(s_b + offs, mask=mask, other=0.0)
        amag = tl.sqrt(pr * pr + pi * pi)
        nonzero = amag > 0
        coef = tl.where(nonzero, (c_a + c_ab * bmag) / tl.where(nonzero, amag, 1.0), 0.0)
        is_dc = (khs[:, None] == 0) & (kcols[None, :] == 0)
        if INCLUDE_DC:
            coef = tl.where(is_dc, coef, tl.where(flat_p, 0.0, coef))
        else:
            coef = tl.where(is_dc, 0.0, coef)
        return coef * pr, coef * pi

    @triton.jit
    def _plane_tile(src_r, src_i, s_b, offs, mask, khs, kcols, c_a, c_ab, flat_p, FIELD: tl.constexpr,
                    INCLUDE_DC: tl.constexpr):
        """A complex plane at src (0 where masked), or with FIELD the gradient field built from P
        (at src) and B (at s_b), at the bins [khs x kcols]."""
        if FIELD:
            xr, xi = _field_tile(src_r, src_i, s_b, offs, mask, khs, kcols, c_a, c_ab, flat_p, INCLUDE_DC)
        else:
            xr = tl.load(src_r + offs, mask=mask, other=0.0)
            xi = tl.load(src_i + offs, mask=mask, other=0.0)
        return xr, xi

    @triton.jit
    def _square_tables(cos_ptr, sin_ptr, n, NP: tl.constexpr):
        """An n x n pair of DFT tables (cos, sin), padded to NP x NP with zeros."""
        r = tl.arange(0, NP)
        mask = (r[:, None] < n) & (r[None, :] < n)
        offs = r[:, None] * n + r[None, :]
        return tl.load(cos_ptr + offs, mask=mask, other=0.0), tl.load(sin_ptr + offs, mask=mask, other=0.0)

    @triton.jit
    def _fs_tables(cos_ptr, sin_ptr, n, FOUR_STEP: tl.constexpr, NP: tl.constexpr):
        """The N1 x N1 tables of a four-step column transform's step 3, loaded once by its caller;
        unused placeholders for the direct DFT."""
        if FOUR_STEP:
            c, s = _square_tables(cos_ptr, sin_ptr, n, NP)
        else:
            c = 0.0
            s = 0.0
        return c, s

    @triton.jit
    def _fs_step1(
        src_r, src_i, s_b, z_r, z_i, c2_ptr, s2_ptr, tw_c_ptr, tw_s_ptr,
        k0, H, WH, N1, N2, c_a, c_ab, flat_p,
        INV: tl.constexpr, FIELD: tl.constexpr, INCLUDE_DC: tl.constexpr, PRECISION: tl.constexpr,
        N2P: tl.constexpr, BN: tl.constexpr,
    ):
        """Four-step DFT along H (H = N1 N2, h = n1 + N1 n2, k = k2 + N2 k1), steps 1-2, for the
        column block k0 + [0, BN): Z[n1 N2 + k2] = w_H^(-+ n1 k2) sum_n2 w_N2^(-+ n2 k2) X[n1 + N1 n2].
        X is the plane src (or, with FIELD, the gradient field built from P at src and B at s_b);
        Z is H x BN."""
        rn2 = tl.arange(0, N2P)
        rn = tl.arange(0, BN)
        kcols = k0 + rn
        c2, s2 = _square_tables(c2_ptr, s2_ptr, N2, N2P)
        rmask = rn2 < N2
        xmask = rmask[:, None] & (kcols[None, :] < WH)
        for n1 in range(0, N1):
            rows = n1 + N1 * rn2
            twc, tws = _twiddles_at(tw_c_ptr, tw_s_ptr, n1, rn2, N2)
            xoffs = rows[:, None] * WH + kcols[None, :]
            xr, xi = _plane_tile(src_r, src_i, s_b, xoffs, xmask, rows, kcols, c_a, c_ab, flat_p, FIELD, INCLUDE_DC)
            zr, zi = _cdot(c2, s2, xr, xi, INV, False, PRECISION)
            tr, ti = _twiddle(zr, zi, twc[:, None], tws[:, None], INV)
            zoffs = (n1 * N2 + rn2)[:, None] * BN + rn[None, :]
            tl.store(z_r + zoffs, tr, mask=xmask)
            tl.store(z_i + zoffs, ti, mask=xmask)

    @triton.jit
    def _fs_step3(
        z_r, z_i, c1, s1, k2, kcols, WH, N1, N2,
        INV: tl.constexpr, PRECISION: tl.constexpr, N1P: tl.constexpr, BN: tl.constexpr,
    ):
        """Four-step step 3 for one k2 and the column block of Z: rows k = k2 + N2 k1 of the DFT,
        X[k] = sum_n1 w_N1^(-+ n1 k1) Z[n1 N2 + k2]. Returns (re, im, k)."""
        rn1 = tl.arange(0, N1P)
        rn = tl.arange(0, BN)
        zmask = (rn1[:, None] < N1) & (kcols[None, :] < WH)
        zoffs = (rn1 * N2 + k2)[:, None] * BN + rn[None, :]
        zr = tl.load(z_r + zoffs, mask=zmask, other=0.0)
        zi = tl.load(z_i + zoffs, mask=zmask, other=0.0)
        xr, xi = _cdot(c1, s1, zr, zi, INV, False, PRECISION)
        return xr, xi, k2 + N2 * rn1

    @triton.jit
    def _w_tables(c1_ptr, s1_ptr, c2_ptr, s2_ptr, M1, M2, M1P: tl.constexpr, M2P: tl.constexpr):
        """The four-step along W's index ranges (M1P, M2P) and tables: M1 x M1 (step 3), M2 x M2
        (step 1)."""
        c2, s2 = _square_tables(c2_ptr, s2_ptr, M2, M2P)
        c1, s1 = _square_tables(c1_ptr, s1_ptr, M1, M1P)
        return tl.arange(0, M1P), tl.arange(0, M2P), c1, s1, c2, s2

    @triton.jit
    def _w_store(w_r, w_i, zr, zi, tw_c_ptr, tw_s_ptr, m1, rm, r2, M2, W, mask, INV: tl.constexpr):
        """Four-step along W, steps 1-2 of one m1: the tile Z times the twiddles of row m1, into
        columns m1 M2 + [0, M2) of the BM x W scratch."""
        twc, tws = _twiddles_at(tw_c_ptr, tw_s_ptr, m1, r2, M2)
        zoffs = rm[:, None] * W + (m1 * M2 + r2)[None, :]
        tr, ti = _twiddle(zr, zi, twc[None, :], tws[None, :], INV)
        tl.store(w_r + zoffs, tr, mask=mask)
        tl.store(w_i + zoffs, ti, mask=mask)

    @triton.jit
    def _w_load(w_r, w_i, rows, rm, r1, k2, H, M1, M2, W):
        """Four-step along W, step 3's input for one k2: Z[h, m1 M2 + k2] from the BM x W scratch."""
        zmask = (rows[:, None] < H) & (r1[None, :] < M1)
        zoffs = rm[:, None] * W + (r1 * M2 + k2)[None, :]
        return tl.load(w_r + zoffs, mask=zmask, other=0.0), tl.load(w_i + zoffs, mask=zmask, other=0.0)

    @triton.jit
    def _row_dft_fs(
        p_base, t_base, a_base, A_OFF, out_r, out_i, z_r, z_i, c1_ptr, s1_ptr, c2_ptr, s2_ptr, tw_c_ptr, tw_s_ptr,
        H, W, WH, M1, M2, cls,
        TARGET: tl.constexpr, LABELS: tl.constexpr, ACT: tl.constexpr, PRECISION: tl.constexpr,
        BM: tl.constexpr, M1P: tl.constexpr, M2P: tl.constexpr,
    ):
        """Four-step real-to-complex DFT along W (W = M1 M2, w = m1 + M1 m2, k = k2 + M2 k1)
        of p (or y): X1[h, k] for k < WH into out_r / out_i. z_r / z_i: BM x W scratch, reused
        for each block of rows."""
        rm = tl.arange(0, BM)
        r1, r2, c1, s1, c2, s2 = _w_tables(c1_ptr, s1_ptr, c2_ptr, s2_ptr, M1, M2, M1P, M2P)
        for h0 in range(0, H, BM):
            rows = h0 + rm
            # steps 1-2: Z[h, m1 M2 + k2] = w_W^(-m1 k2) sum_m2 x[h, m1 + M1 m2] w_M2^(-m2 k2)
            for m1 in range(0, M1):
                x = _load_map_tile(p_base, t_base, a_base, A_OFF, rows, m1 + M1 * r2, H, W, cls, TARGET, LABELS, ACT)
                zr = _dot(x, c2, PRECISION)
                zi = -_dot(x, s2, PRECISION)
                zmask = (rows[:, None] < H) & (r2[None, :] < M2)
                _w_store(z_r, z_i, zr, zi, tw_c_ptr, tw_s_ptr, m1, rm, r2, M2, W, zmask, False)
            tl.debug_barrier()
            # step 3: X1[h, k2 + M2 k1] = sum_m1 Z[h, m1 M2 + k2] w_M1^(-m1 k1); keep k < WH
            for k2 in range(0, M2):
                zr, zi = _w_load(z_r, z_i, rows, rm, r1, k2, H, M1, M2, W)
                xr, xi = _cdot(c1, s1, zr, zi, False, True, PRECISION)
                ks = k2 + M2 * r1
                omask = (rows[:, None] < H) & (r1[None, :] < M1) & (ks[None, :] < WH)
                ooffs = rows[:, None] * WH + ks[None, :]
                tl.store(out_r + ooffs, xr, mask=omask)
                tl.store(out_i + ooffs, xi, mask=omask)
            # z is reused by the next block of rows
            tl.debug_barrier()

    @triton.jit
    def _row_pass(
        p_base, t_base, a_base, A_OFF, out_r, out_i, z_r, z_i, cos_w_ptr, sin_w_ptr,
        d1_ptr, e1_ptr, d2_ptr, e2_ptr, tv_c_ptr, tv_s_ptr, H, W, WH, M1, M2, cls,
        TARGET: tl.constexpr, LABELS: tl.constexpr, ACT: tl.constexpr, FOUR_STEP_W: tl.constexpr,
        PRECISION: tl.constexpr,
        BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, M1P: tl.constexpr, M2P: tl.constexpr,
    ):
        """Row transform of p (or y) onto the half spectrum, four-step or direct; then a barrier."""
        if FOUR_STEP_W:
            _row_dft_fs(p_base, t_base, a_base, A_OFF, out_r, out_i, z_r, z_i, d1_ptr, e1_ptr, d2_ptr, e2_ptr,
                        tv_c_ptr, tv_s_ptr, H, W, WH, M1, M2, cls, TARGET, LABELS, ACT, PRECISION, BM, M1P, M2P)
        else:
            _row_dft(p_base, t_base, a_base, A_OFF, cos_w_ptr, sin_w_ptr, out_r, out_i, H, W, WH, cls,
                     TARGET, LABELS, ACT, PRECISION, BM, BN, BK)
        tl.debug_barrier()

    @triton.jit
    def _spatial_sums(
        p_base, t_base, a_base, A_OFF, H, W, cls,
        LABELS: tl.constexpr, ACT: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
    ):
        """Sums over one H x W map: (S_p, S_y, sum (p - mean p)^2, sum (p - mean p) y, sum p y,
        sum (y - mean y)^2). Two passes (mean first), so the centered sums have no cancellation."""
        rm = tl.arange(0, BM)
        rn = tl.arange(0, BN)
        n = (H * W).to(tl.float32)
        acc_p = tl.zeros([BM], dtype=tl.float32)
        acc_y = tl.zeros([BM], dtype=tl.float32)
        for h0 in range(0, H, BM):
            for w0 in range(0, W, BN):
                p, y, mask = _load_pair_tile(p_base, t_base, a_base, A_OFF, h0 + rm, w0 + rn, H, W, cls, LABELS, ACT)
                acc_p += tl.sum(p, axis=1)
                acc_y += tl.sum(y, axis=1)
        s_p = tl.sum(acc_p, axis=0)
        s_y = tl.sum(acc_y, axis=0)
        mean_p = s_p / n
        mean_y = s_y / n
        acc_pp = tl.zeros([BM], dtype=tl.float32)
        acc_pyc = tl.zeros([BM], dtype=tl.float32)
        acc_py = tl.zeros([BM], dtype=tl.float32)
        acc_yy = tl.zeros([BM], dtype=tl.float32)
        for h0 in range(0, H, BM):
            for w0 in range(0, W, BN):
                p, y, mask = _load_pair_tile(p_base, t_base, a_base, A_OFF, h0 + rm, w0 + rn, H, W, cls, LABELS, ACT)
                pc = tl.where(mask, p - mean_p, 0.0)
                yc = tl.where(mask, y - mean_y, 0.0)
                acc_pp += tl.sum(pc * pc, axis=1)
                acc_pyc += tl.sum(pc * y, axis=1)
                acc_py += tl.sum(p * y, axis=1)
                acc_yy += tl.sum(yc * yc, axis=1)
        m2_p = tl.sum(acc_pp, axis=0)
        pyc = tl.sum(acc_pyc, axis=0)
        py = tl.sum(acc_py, axis=0)
        m2_y = tl.sum(acc_yy, axis=0)
        return s_p, s_y, m2_p, pyc, py, m2_y

    @triton.jit
    def _col_tile(
        cos_ptr, sin_ptr, src_r, src_i, s_b, dst_r, dst_i, rows, kcols, NR, NC, W, WH, c_a, c_ab, flat_p, acc1, acc2,
        MODE: tl.constexpr, INV: tl.constexpr, FIELD: tl.constexpr, INCLUDE_DC: tl.constexpr,
        NEED_GRAD: tl.constexpr, DEPTH: tl.constexpr, PRECISION: tl.constexpr,
        BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    ):
        """Tile [rows x kcols] of (C - iS) @ X, or with INV (C + iS) @ X: the direct DFT along the
        first axis of an NR x NC plane (row stride NC; NR x NR tables), handed to _col_out. X is
        the plane at src, or with FIELD the gradient field built from P (at src) and B (at s_b),
        whose DC bin is row 0, column 0."""
        rk = tl.arange(0, BK)
        acc_r = tl.zeros([BM, BN], dtype=tl.float32)
        acc_i = tl.zeros([BM, BN], dtype=tl.float32)
        for r0 in range(0, NR, BK):
            ks = r0 + rk
            tmask = (rows[:, None] < NR) & (ks[None, :] < NR)
            toffs = rows[:, None] * NR + ks[None, :]
            c = tl.load(cos_ptr + toffs, mask=tmask, other=0.0)
            s = tl.load(sin_ptr + toffs, mask=tmask, other=0.0)
            xmask = (ks[:, None] < NR) & (kcols[None, :] < NC)
            xoffs = ks[:, None] * NC + kcols[None, :]
            xr, xi = _plane_tile(src_r, src_i, s_b, xoffs, xmask, ks, kcols, c_a, c_ab, flat_p, FIELD, INCLUDE_DC)
            tr, ti = _cdot(c, s, xr, xi, INV, False, PRECISION)
            acc_r += tr
            acc_i += ti
        return _col_out(acc_r, acc_i, rows, kcols, NR, NC, W, WH, s_b, dst_r, dst_i, acc1, acc2,
                        MODE, INCLUDE_DC, NEED_GRAD, DEPTH)

    @triton.jit
    def _add_part(acc, part, DEPTH: tl.constexpr):
        """acc + part (row sums of a tile); in the depth passes acc is a scalar, summed tile by tile."""
        if DEPTH:
            acc += tl.sum(part, axis=0)
        else:
            acc += part
        return acc

    @triton.jit
    def _col_out(
        xr, xi, rows, kcols, NR, NC, W, WH, s_b, dst_r, dst_i, acc1, acc2,
        MODE: tl.constexpr, INCLUDE_DC: tl.constexpr, NEED_GRAD: tl.constexpr, DEPTH: tl.constexpr,
    ):
        """What a column transform does with its output tile X at [rows x kcols] of an NR x NC
        plane. MODE 0: X stored at dst. MODE 1 (X = Y): B = |Y| stored at s_b, its part of T_b
        added to acc1. MODE 2 (X = P): B read back, the parts of T_a and T_ab added to acc1 and
        acc2, and P stored at dst with NEED_GRAD. The half-spectrum bin along W is the column, or
        in the depth passes (DEPTH: the columns are a slice's H x WH bins) the column mod WH."""
        inside = (rows[:, None] < NR) & (kcols[None, :] < NC)
        offs = rows[:, None] * NC + kcols[None, :]
        if MODE == 0:
            tl.store(dst_r + offs, xr, mask=inside)
            tl.store(dst_i + offs, xi, mask=inside)
        else:
            if DEPTH:
                kw = kcols % WH
            else:
                kw = kcols
            is_dc = (rows[:, None] == 0) & (kcols[None, :] == 0)
            wgt = _spectrum_weight(inside, kw[None, :], is_dc, W, INCLUDE_DC)
            mag = tl.sqrt(xr * xr + xi * xi)
            if MODE == 1:
                # two pointer adds, not s_b + offs: the integer code the kernels had before these helpers
                tl.store(s_b + rows[:, None] * NC + kcols[None, :], mag, mask=inside)
                acc1 = _add_part(acc1, tl.sum(wgt * mag, axis=1), DEPTH)
            else:
                bmag = tl.load(s_b + offs, mask=inside, other=0.0)
                acc1 = _add_part(acc1, tl.sum(wgt * mag, axis=1), DEPTH)
                acc2 = _add_part(acc2, tl.sum(wgt * mag * bmag, axis=1), DEPTH)
                if NEED_GRAD:
                    tl.store(dst_r + offs, xr, mask=inside)
                    tl.store(dst_i + offs, xi, mask=inside)
        return acc1, acc2

    @triton.jit
    def _col_block(
        src_r, src_i, s_b, dst_r, dst_i, z_r, z_i, cos_ptr, sin_ptr, c1, s1, c2_ptr, s2_ptr, tw_c_ptr, tw_s_ptr,
        k0, NR, NC, N1, N2, W, WH, c_a, c_ab, flat_p, acc1, acc2,
        MODE: tl.constexpr, INV: tl.constexpr, FIELD: tl.constexpr, FOUR_STEP: tl.constexpr,
        INCLUDE_DC: tl.constexpr, NEED_GRAD: tl.constexpr, DEPTH: tl.constexpr, PRECISION: tl.constexpr,
        BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, N1P: tl.constexpr, N2P: tl.constexpr,
    ):
        """The DFT (INV: inverse) along the first axis of the column block k0 + [0, BN) of an
        NR x NC plane (src, or with FIELD the field from P at src and B at s_b), each output tile
        handled by _col_out; returns (acc1, acc2), which must be tensors (a loop carries no float
        literal). Four-step (NR = N1 N2; c1, s1: the N1 x N1 tables) through Z, NR x BN, so dst
        may be src; the direct DFT needs dst apart from src."""
        kcols = k0 + tl.arange(0, BN)
        if FOUR_STEP:
            _fs_step1(src_r, src_i, s_b, z_r, z_i, c2_ptr, s2_ptr, tw_c_ptr, tw_s_ptr,
                      k0, NR, NC, N1, N2, c_a, c_ab, flat_p, INV, FIELD, INCLUDE_DC, PRECISION, N2P, BN)
            tl.debug_barrier()
            for k2 in range(0, N2):
                xr, xi, rows = _fs_step3(z_r, z_i, c1, s1, k2, kcols, NC, N1, N2, INV, PRECISION, N1P, BN)
                acc1, acc2 = _col_out(xr, xi, rows, kcols, NR, NC, W, WH, s_b, dst_r, dst_i, acc1, acc2,
                                      MODE, INCLUDE_DC, NEED_GRAD, DEPTH)
            tl.debug_barrier()  # Z is reused by the next block
        else:
            rm = tl.arange(0, BM)
            for r0 in range(0, NR, BM):
                acc1, acc2 = _col_tile(cos_ptr, sin_ptr, src_r, src_i, s_b, dst_r, dst_i, r0 + rm, kcols, NR, NC, W,
                                       WH, c_a, c_ab, flat_p, acc1, acc2, MODE, INV, FIELD, INCLUDE_DC, NEED_GRAD,
                                       DEPTH, PRECISION, BM, BN, BK)
        return acc1, acc2

    @triton.jit
    def _col_pass(
        src_r, src_i, s_b, dst_r, dst_i, z_r, z_i, cos_ptr, sin_ptr, c1, s1, c2_ptr, s2_ptr, tw_c_ptr, tw_s_ptr,
        NR, NC, N1, N2, W, c_a, c_ab, flat_p,
        MODE: tl.constexpr, INV: tl.constexpr, FIELD: tl.constexpr, FOUR_STEP: tl.constexpr,
        INCLUDE_DC: tl.constexpr, NEED_GRAD: tl.constexpr, PRECISION: tl.constexpr,
        BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, N1P: tl.constexpr, N2P: tl.constexpr,
    ):
        """_col_block over all the columns of an NR x NC half spectrum (NC = WH); returns the row
        sums acc1, acc2 of _col_out (N1P of them four-step, else BM). The direct DFT goes tile by
        tile, blocks of rows outermost."""
        if FOUR_STEP:
            acc1 = tl.zeros([N1P], dtype=tl.float32)
            acc2 = tl.zeros([N1P], dtype=tl.float32)
            for k0 in range(0, NC, BN):
                acc1, acc2 = _col_block(src_r, src_i, s_b, dst_r, dst_i, z_r, z_i, cos_ptr, sin_ptr, c1, s1,
                                        c2_ptr, s2_ptr, tw_c_ptr, tw_s_ptr, k0, NR, NC, N1, N2, W, NC, c_a, c_ab,
                                        flat_p, acc1, acc2, MODE, INV, FIELD, True, INCLUDE_DC, NEED_GRAD, False,
                                        PRECISION, BM, BN, BK, N1P, N2P)
        else:
            acc1 = tl.zeros([BM], dtype=tl.float32)
            acc2 = tl.zeros([BM], dtype=tl.float32)
            rm = tl.arange(0, BM)
            rn = tl.arange(0, BN)
            for r0 in range(0, NR, BM):
                rows = r0 + rm
                for k0 in range(0, NC, BN):
                    acc1, acc2 = _col_tile(cos_ptr, sin_ptr, src_r, src_i, s_b, dst_r, dst_i, rows, k0 + rn, NR, NC,
                                           W, NC, c_a, c_ab, flat_p, acc1, acc2, MODE, INV, FIELD, INCLUDE_DC,
                                           NEED_GRAD, False, PRECISION, BM, BN, BK)
        return acc1, acc2

    @triton.jit
    def _inv_col_pass(
        src_r, src_i, s_b, dst_r, dst_i, z_r, z_i, cos_h_ptr, sin_h_ptr,
        c1_ptr, s1_ptr, c2_ptr, s2_ptr, tw_c_ptr, tw_s_ptr, H, WH, N1, N2, c_a, c_ab, flat_p,
        FIELD: tl.constexpr, FOUR_STEP: tl.constexpr, INCLUDE_DC: tl.constexpr, PRECISION: tl.constexpr,
        BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, N1P: tl.constexpr, N2P: tl.constexpr,
    ):
        """Inverse DFT along H, (C + iS) @ X, of an H x WH plane (src, or with FIELD the gradient
        field from P at src and B at s_b) into dst; four-step or direct; then a barrier. The
        four-step goes one block of columns at a time through Z (H x BN), so dst may be src
        there; the direct DFT needs dst apart from src."""
        c1, s1 = _fs_tables(c1_ptr, s1_ptr, N1, FOUR_STEP, N1P)
        _col_pass(src_r, src_i, s_b, dst_r, dst_i, z_r, z_i, cos_h_ptr, sin_h_ptr, c1, s1, c2_ptr, s2_ptr,
                  tw_c_ptr, tw_s_ptr, H, WH, N1, N2, 0, c_a, c_ab, flat_p, 0, True, FIELD, FOUR_STEP, INCLUDE_DC,
                  False, PRECISION, BM, BN, BK, N1P, N2P)
        tl.debug_barrier()

    @triton.jit
    def _inv_row_pass(
        g_r, g_i, w_r, w_i, p_base, t_base, a_base, A_OFF, g_base, cos_w_ptr, sin_w_ptr,
        d1_ptr, e1_ptr, d2_ptr, e2_ptr, tv_c_ptr, tv_s_ptr, H, W, WH, M1, M2, cls,
        n_vox, c_aa, c_re, off_p, off_y,
        LABELS: tl.constexpr, ACT: tl.constexpr, FOUR_STEP_W: tl.constexpr, PRECISION: tl.constexpr,
        BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, M1P: tl.constexpr, M2P: tl.constexpr,
    ):
        """Inverse row DFT (complex-to-real, half-spectrum weights 1/2/1) of the H x WH plane g,
        plus the spatial terms 2N c_aa (p - off_p) + N c_re (y - off_y) (N = n_vox, the voxels of
        the whole pair): one H x W map of dSCC/dp written at g_base. w_r / w_i: BM x W scratch
        for the four-step along W, reused block of rows after block of rows."""
        rm = tl.arange(0, BM)
        rn = tl.arange(0, BN)
        rk = tl.arange(0, BK)
        if FOUR_STEP_W:
            r1, r2, d1, e1, d2, e2 = _w_tables(d1_ptr, e1_ptr, d2_ptr, e2_ptr, M1, M2, M1P, M2P)
            for h0 in range(0, H, BM):
                rows = h0 + rm
                # steps 1-2 on the full spectrum, G[k] = conj(G[W - k]) for k >= WH:
                # Z[h, m1 M2 + k2] = w_W^(m1 k2) sum_m2 G[h, m1 + M1 m2] w_M2^(m2 k2)
                for m1 in range(0, M1):
                    ks = m1 + M1 * r2
                    lower = ks < WH
                    kk = tl.where(lower, ks, W - ks)
                    gmask = (rows[:, None] < H) & (r2[None, :] < M2)
                    goffs = rows[:, None] * WH + kk[None, :]
                    gr = tl.load(g_r + goffs, mask=gmask, other=0.0)
                    gi = tl.load(g_i + goffs, mask=gmask, other=0.0)
                    gi = tl.where(lower[None, :], gi, -gi)
                    zr, zi = _cdot(d2, e2, gr, gi, True, True, PRECISION)
                    _w_store(w_r, w_i, zr, zi, tv_c_ptr, tv_s_ptr, m1, rm, r2, M2, W, gmask, True)
                tl.debug_barrier()
                # step 3, real part: out[h, k2 + M2 k1] = Re sum_m1 Z[h, m1 M2 + k2] w_M1^(m1 k1)
                for k2 in range(0, M2):
                    zr, zi = _w_load(w_r, w_i, rows, rm, r1, k2, H, M1, M2, W)
                    acc = _dot(zr, d1, PRECISION) - _dot(zi, e1, PRECISION)
                    wcols = k2 + M2 * r1
                    p, y, mask = _load_pair_tile(p_base, t_base, a_base, A_OFF, rows, wcols, H, W, cls, LABELS, ACT)
                    acc += (2.0 * n_vox * c_aa) * (p - off_p) + (n_vox * c_re) * (y - off_y)
                    offs = rows[:, None] * W + wcols[None, :]
                    tl.store(g_base + offs, acc, mask=mask & (r1[None, :] < M1))
                tl.debug_barrier()  # z is reused by the next block of rows
        else:
            for h0 in range(0, H, BM):
                rows = h0 + rm
                for w0 in range(0, W, BN):
                    wcols = w0 + rn
                    acc = tl.zeros([BM, BN], dtype=tl.float32)
                    for k0 in range(0, WH, BK):
                        ks = k0 + rk
                        xmask = (rows[:, None] < H) & (ks[None, :] < WH)
                        xoffs = rows[:, None] * WH + ks[None, :]
                        once = (ks[None, :] == 0) | (ks[None, :] * 2 == W)
                        kw_w = tl.where(once, 1.0, 2.0)
                        g1r = tl.load(g_r + xoffs, mask=xmask, other=0.0) * kw_w
                        g1i = tl.load(g_i + xoffs, mask=xmask, other=0.0) * kw_w
                        tmask = (ks[:, None] < WH) & (wcols[None, :] < W)
                        toffs = wcols[None, :] * WH + ks[:, None]
                        cw = tl.load(cos_w_ptr + toffs, mask=tmask, other=0.0)
                        sw = tl.load(sin_w_ptr + toffs, mask=tmask, other=0.0)
                        acc += _dot(g1r, cw, PRECISION) - _dot(g1i, sw, PRECISION)
                    p, y, mask = _load_pair_tile(p_base, t_base, a_base, A_OFF, rows, wcols, H, W, cls, LABELS, ACT)
                    acc += (2.0 * n_vox * c_aa) * (p - off_p) + (n_vox * c_re) * (y - off_y)
                    offs = rows[:, None] * W + wcols[None, :]
                    tl.store(g_base + offs, acc, mask=mask)

    @triton.jit
    def _pair_results(
        scc_ptr, valid_ptr, pair, energy_a, total_a, energy_b, total_b, cross, valid, t_a, t_b, t_ab, n_k, var_p,
        n_vox, magnitude_weight, phase_weight, NEED_GRAD: tl.constexpr,
    ):
        """Phase 3: the per-pair scalars, as torch_fft.pair_coefficients; SCC and valid stored at
        pair. Returns the gradient coefficients (c_a, c_ab, c_aa, c_re, flat_p), zeros without
        NEED_GRAD."""
        scc, rho_mag, rho_phase, den, zero_mag, zero_phase, var_a = _pair_scalars(
            energy_a, total_a, energy_b, total_b, cross, t_a, t_b, t_ab, n_k, magnitude_weight, phase_weight,
            FP32_EPS, FP32_MAX)
        tl.store(scc_ptr + pair, scc)
        tl.store(valid_ptr + pair, valid.to(tl.int8))
        if NEED_GRAD:
            c_a, c_ab, c_aa, c_re, flat_p = _grad_coefficients(
                rho_mag, rho_phase, den, zero_mag, zero_phase, var_a, t_a, t_b, t_ab, n_k, var_p, total_a,
                n_vox, magnitude_weight, phase_weight, FP32_EPS)
        else:
            c_a = 0.0
            c_ab = 0.0
            c_aa = 0.0
            c_re = 0.0
            flat_p = False
        return c_a, c_ab, c_aa, c_re, flat_p

    @triton.jit
    def _dc_offsets(mean_p, mean_y, INCLUDE_DC: tl.constexpr):
        """What the gradient's spatial terms subtract from p and y: the means when DC is out of K."""
        if INCLUDE_DC:
            off_p = 0.0
            off_y = 0.0
        else:
            off_p = mean_p
            off_y = mean_y
        return off_p, off_y

    @triton.jit
    def _fused_scratch(
        scratch_ptr, pid, PER_PROGRAM, plane, H, W,
        SLOTS: tl.constexpr, FOUR_STEP: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
    ):
        """The fused kernel's per-program scratch. Planes (H x WH each): X1 (0-1), the row transform
        of y, then of p, then (four-step along H) P, then the half-inverse of the field; B (2); P
        (3-4: direct DFT along H, with the gradient). After the planes, the four-step
        intermediates: 2 x H x BN and 2 x BM x W. Returns X1 (re, im), B, P (re, im), Z along H
        (re, im), Z along W (re, im)."""
        scratch = scratch_ptr + pid.to(tl.int64) * PER_PROGRAM
        s_p1r = scratch
        s_p1i = scratch + plane
        s_b = scratch + 2 * plane
        if FOUR_STEP:
            s_pr = s_p1r  # P1 is dead once step 1 of its column transform has run
            s_pi = s_p1i
        else:
            s_pr = scratch + 3 * plane
            s_pi = scratch + 4 * plane
        s_zr = scratch + SLOTS * plane  # four-step along H: 2 x H x BN
        s_zi = s_zr + H * BN
        s_wr = s_zi + H * BN  # four-step along W: 2 x BM x W
        s_wi = s_wr + BM * W
        return s_p1r, s_p1i, s_b, s_pr, s_pi, s_zr, s_zi, s_wr, s_wi

    # The 2D kernel. One program per (image, class) pair at a time, in phases separated by
    # tl.debug_barrier() (the scratch is written and read by all threads of the program):
    # 0. spatial sums of p and y (two passes, so the centered sums have no cancellation);
    # 1. row DFTs along W, real-to-complex onto the W // 2 + 1 half spectrum, as tl.dot products of
    #    the p / y tiles with cosine and sine tables (one map at a time, into the scratch);
    # 2. column DFTs along H (complex), as tl.dot with the H tables: first Y (B = |Y| kept in the
    #    scratch, T_b), then P (A = |P|, T_a, T_ab; P kept for the gradient);
    # 3. the per-pair scalars, as scc_fast.backends.torch_fft.pair_coefficients with the zero tests
    #    of scc_fast._numerics (float32 epsilon), plus one guard: the phase term is 0 when A or B is
    #    rounding noise over K (a constant map), where 1 / T_ab would explode;
    # 4. the gradient field (c_a + c_ab B_k) U_k (U = P / |P|, 0 where |P| = 0, DC zeroed when it is
    #    out of K, 0 off DC for a constant p) and its inverse column DFT;
    # 5. the inverse row DFT (complex-to-real, half-spectrum weights 1/2/1), plus the spatial terms
    #    2N c_aa (p - [DC out] mean p) + N c_re (y - [DC out] mean y): dSCC/dp is written.
    # Scratch per program: 3 planes of H x (W // 2 + 1) float32 (the row transform of y, then of p,
    # then P, then the half-inverse of the field, all in place; and B), 2 more for P when the H axis
    # uses the direct DFT and the gradient is needed, plus 2 x H x BN and 2 x BM x W floats for the
    # four-step intermediates. Padded rows and columns of every tile are masked to 0. The four-step
    # along W transforms the real input as complex and keeps the half spectrum; its inverse rebuilds
    # the full spectrum by Hermitian symmetry and keeps the real part. With ACT, loss channel c reads
    # input channel X_FIRST + c of X_CHAN (the background drop).
    @triton.jit
    def _scc_fused_kernel(
        probs_ptr,  # B*C' x H x W probs, or (ACT > 0) B x X_CHAN x H x W logits
        target_ptr,  # labels B x H x W or float B*C' x H x W
        act_ptr,  # ACT > 0: 2 x B x H x W float32 activation statistics (m, r), see _load_p
        cos_w_ptr, sin_w_ptr,  # W x WH tables: cos / sin(2 pi w k / W)
        cos_h_ptr, sin_h_ptr,  # H x H tables (direct DFT along H)
        c1_ptr, s1_ptr, c2_ptr, s2_ptr, tw_c_ptr, tw_s_ptr,  # N1 x N1, N2 x N2, N1 x N2 (four-step, H)
        d1_ptr, e1_ptr, d2_ptr, e2_ptr, tv_c_ptr, tv_s_ptr,  # M1 x M1, M2 x M2, M1 x M2 (four-step, W)
        scratch_ptr,  # per program: SLOTS x H x WH + 2 x H x BN + 2 x BM x W float32
        scc_ptr, valid_ptr, grad_ptr,  # B*C' float32, B*C' int8, B*C' x H x W float32
        n_pairs, n_chan, X_CHAN, X_FIRST, A_OFF, first_class, H, W, WH, N1, N2, M1, M2, PER_PROGRAM,
        magnitude_weight, phase_weight,
        LABELS: tl.constexpr, ACT: tl.constexpr, INCLUDE_DC: tl.constexpr, NEED_GRAD: tl.constexpr,
        SLOTS: tl.constexpr, PRECISION: tl.constexpr,
        BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
        FOUR_STEP: tl.constexpr, N1P: tl.constexpr, N2P: tl.constexpr,
        FOUR_STEP_W: tl.constexpr, M1P: tl.constexpr, M2P: tl.constexpr,
    ):
        pid = tl.program_id(0)
        n_prog = tl.num_programs(0)
        hw = H * W
        plane = H * WH
        n_vox = hw.to(tl.float32)
        if INCLUDE_DC:
            n_k = n_vox
        else:
            n_k = n_vox - 1.0
        s_p1r, s_p1i, s_b, s_pr, s_pi, s_zr, s_zi, s_wr, s_wi = _fused_scratch(
            scratch_ptr, pid, PER_PROGRAM, plane, H, W, SLOTS, FOUR_STEP, BM, BN)
        s_y1r = s_p1r  # y's row transform is consumed (phase 2a) before p's is made
        s_y1i = s_p1i

        for pair in range(pid, n_pairs, n_prog):
            img = pair // n_chan
            cls = first_class + pair % n_chan
            # Pair (img, c) reads channel X_FIRST + c of X_CHAN (X_CHAN = n_chan, X_FIRST = 0 for p)
            p_base = probs_ptr + (tl.cast(img, tl.int64) * X_CHAN + X_FIRST + pair % n_chan) * hw
            a_base = act_ptr + tl.cast(img, tl.int64) * hw
            if LABELS:
                t_base = target_ptr + tl.cast(img, tl.int64) * hw
            else:
                t_base = target_ptr + tl.cast(pair, tl.int64) * hw

            # ---- phase 0: spatial sums and the Parseval sums of docs/loss.md section 5 ----
            s_p, s_y, m2_p, pyc, py, m2_y = _spatial_sums(p_base, t_base, a_base, A_OFF, H, W, cls, LABELS, ACT, BM, BN)
            mean_p, mean_y, var_p, total_a, energy_a, total_b, energy_b, cross, valid = _energies(
                s_p, s_y, m2_p, pyc, py, m2_y, n_vox, LABELS, INCLUDE_DC)

            # ---- phase 1y: row DFT of y along W onto the half spectrum, Y1 = y @ (C - iS) ----
            # (p's comes later into the same planes: one map's row transform is alive at a time)
            _row_pass(p_base, t_base, a_base, A_OFF, s_y1r, s_y1i, s_wr, s_wi, cos_w_ptr, sin_w_ptr,
                      d1_ptr, e1_ptr, d2_ptr, e2_ptr, tv_c_ptr, tv_s_ptr, H, W, WH, M1, M2, cls,
                      True, LABELS, ACT, FOUR_STEP_W, PRECISION, BM, BN, BK, M1P, M2P)

            # ---- phase 2a: column DFT of Y along H, Y = (C - iS) @ Y1; B = |Y| kept, T_b ----
            # Four-step (N1 DFTs of N2, twiddles, N2 DFTs of N1) one block of columns at a time:
            # a block's output may overwrite its input (P over P1, the half-inverse over P).
            c1, s1 = _fs_tables(c1_ptr, s1_ptr, N1, FOUR_STEP, N1P)
            acc_tb, _ = _col_pass(s_y1r, s_y1i, s_b, s_pr, s_pi, s_zr, s_zi, cos_h_ptr, sin_h_ptr, c1, s1,
                                  c2_ptr, s2_ptr, tw_c_ptr, tw_s_ptr, H, WH, N1, N2, W, 0.0, 0.0, False,
                                  1, False, False, FOUR_STEP, INCLUDE_DC, NEED_GRAD, PRECISION, BM, BN, BK, N1P, N2P)
            if not FOUR_STEP:
                tl.debug_barrier()  # (the four-step ends each block of columns with one)
            # ---- phase 1p: row DFT of p, P1 = p @ (C - iS), over Y1 ----
            _row_pass(p_base, t_base, a_base, A_OFF, s_p1r, s_p1i, s_wr, s_wi, cos_w_ptr, sin_w_ptr,
                      d1_ptr, e1_ptr, d2_ptr, e2_ptr, tv_c_ptr, tv_s_ptr, H, W, WH, M1, M2, cls,
                      False, LABELS, ACT, FOUR_STEP_W, PRECISION, BM, BN, BK, M1P, M2P)
            # ---- phase 2b: column DFT of P; A = |P|, T_a and T_ab (P kept for the gradient) ----
            acc_ta, acc_tab = _col_pass(s_p1r, s_p1i, s_b, s_pr, s_pi, s_zr, s_zi, cos_h_ptr, sin_h_ptr, c1, s1,
                                        c2_ptr, s2_ptr, tw_c_ptr, tw_s_ptr, H, WH, N1, N2, W, 0.0, 0.0, False,
                                        2, False, False, FOUR_STEP, INCLUDE_DC, NEED_GRAD, PRECISION,
                                        BM, BN, BK, N1P, N2P)
            t_a = tl.sum(acc_ta, axis=0)
            t_b = tl.sum(acc_tb, axis=0)
            t_ab = tl.sum(acc_tab, axis=0)

            # ---- phase 3: per-pair scalars, as torch_fft.pair_coefficients ----
            c_a, c_ab, c_aa, c_re, flat_p = _pair_results(
                scc_ptr, valid_ptr, pair, energy_a, total_a, energy_b, total_b, cross, valid, t_a, t_b, t_ab, n_k,
                var_p, n_vox, magnitude_weight, phase_weight, NEED_GRAD)

            if NEED_GRAD:
                tl.debug_barrier()
                # ---- phase 4: field G = (c_a + c_ab B) P/|P|, inverse column DFT (C + iS) @ G ----
                # P1 / Y1 are dead after phase 2: their slots take the half-inverse.
                _inv_col_pass(s_pr, s_pi, s_b, s_p1r, s_p1i, s_zr, s_zi, cos_h_ptr, sin_h_ptr,
                              c1_ptr, s1_ptr, c2_ptr, s2_ptr, tw_c_ptr, tw_s_ptr, H, WH, N1, N2, c_a, c_ab, flat_p,
                              True, FOUR_STEP, INCLUDE_DC, PRECISION, BM, BN, BK, N1P, N2P)
                # ---- phase 5: inverse row DFT (complex-to-real) + spatial terms -> dSCC/dp ----
                off_p, off_y = _dc_offsets(mean_p, mean_y, INCLUDE_DC)
                g_base = grad_ptr + tl.cast(pair, tl.int64) * hw
                _inv_row_pass(s_p1r, s_p1i, s_wr, s_wi, p_base, t_base, a_base, A_OFF, g_base, cos_w_ptr, sin_w_ptr,
                              d1_ptr, e1_ptr, d2_ptr, e2_ptr, tv_c_ptr, tv_s_ptr, H, W, WH, M1, M2, cls,
                              n_vox, c_aa, c_re, off_p, off_y, LABELS, ACT, FOUR_STEP_W, PRECISION, BM, BN, BK,
                              M1P, M2P)
            # The next pair overwrites the scratch this one has just read.
            tl.debug_barrier()


    # ----------------------------------------------------------------------------------------
    # 3D: B x C' x D x H x W, in five launches sharing the helpers above (the module doc; each
    # launch's docstring says what it does). The depth axis takes the four-step transform where the
    # 2D axes would (128 = 8 x 16: 24 multiply-adds per output instead of 128), else the direct
    # DFT-as-dot (96^3: direct). Labels are read in-kernel by launches 1 and 5, as in 2D.
    # The 2D split mode runs the same launches with blocks of H rows as the slices: launch 1
    # transforms each block along W only (ROWS_ONLY; the last block may be shorter, its spatial sums
    # combined as for 3D), launches 2 and 4 do the DFT along H over blocks of the W // 2 + 1
    # frequency columns, launch 5 inverts each block along W and adds the spatial terms.
    # ----------------------------------------------------------------------------------------

    @triton.jit
    def _slice_program(scratch_ptr, PER_PROGRAM, H, ROWS, W, WH, ROWS_ONLY: tl.constexpr, BM: tl.constexpr,
                       BN: tl.constexpr):
        """A slice kernel's program: a slice's plane (H x WH) and a pair's volume (ROWS x WH) of
        spectrum, its id, the grid size and its scratch: X1 (re, im planes of H x WH), then the
        four-step intermediates (2 x H x BN along H, 2 x BM x W along W); with ROWS_ONLY the last
        alone."""
        plane = H * WH
        vol = tl.cast(ROWS, tl.int64) * WH
        pid = tl.program_id(0)
        if ROWS_ONLY:
            x1_plane = 0
            z_rows = 0
        else:
            x1_plane = plane
            z_rows = H
        scratch = scratch_ptr + pid.to(tl.int64) * PER_PROGRAM
        z_r = scratch + 2 * x1_plane
        z_i = z_r + z_rows * BN
        w_r = z_i + z_rows * BN
        w_i = w_r + BM * W
        return plane, vol, pid, tl.num_programs(0), scratch, scratch + x1_plane, z_r, z_i, w_r, w_i

    @triton.jit
    def _slice_maps(
        sl, pair0, n_chan, X_CHAN, X_FIRST, first_class, D, H, ROWS, W, probs_ptr, target_ptr, act_ptr,
        LABELS: tl.constexpr,
    ):
        """Slice sl of the chunk (D slices of H rows per pair; a pair's map has ROWS rows of W, so
        the last slice may be shorter): its pair in the chunk, index d, rows, class label, the
        element offset of its first voxel in the B x C' maps, and the maps of p and of the target
        (the image's labels, or the pair's float map) there, and of the image's activation
        statistics (see _load_p; p is channel X_FIRST + c of X_CHAN, as in the 2D kernel)."""
        pair = sl // D
        d = sl % D
        rows = tl.minimum(H, ROWS - d * H)
        gpair = pair0 + pair
        cls = first_class + gpair % n_chan
        pair_elems = tl.cast(ROWS, tl.int64) * W
        in_map = tl.cast(d, tl.int64) * H * W
        elem = tl.cast(gpair, tl.int64) * pair_elems + in_map
        img = tl.cast(gpair // n_chan, tl.int64)
        p_base = probs_ptr + (img * X_CHAN + X_FIRST + gpair % n_chan) * pair_elems + in_map
        if LABELS:
            t_base = target_ptr + img * pair_elems + in_map
        else:
            t_base = target_ptr + elem
        return pair, d, rows, cls, elem, p_base, t_base, act_ptr + img * pair_elems + in_map

    @triton.jit
    def _slice_spectrum(
        p_base, t_base, a_base, A_OFF, out_r, out_i, x1r, x1i, z_r, z_i, w_r, w_i,
        cos_w_ptr, sin_w_ptr, cos_h_ptr, sin_h_ptr, c1_ptr, s1_ptr, c2_ptr, s2_ptr, tw_c_ptr, tw_s_ptr,
        d1_ptr, e1_ptr, d2_ptr, e2_ptr, tv_c_ptr, tv_s_ptr, H, W, WH, N1, N2, M1, M2, cls,
        TARGET: tl.constexpr, LABELS: tl.constexpr, ACT: tl.constexpr, ROWS_ONLY: tl.constexpr,
        FOUR_STEP: tl.constexpr, FOUR_STEP_W: tl.constexpr,
        PRECISION: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
        N1P: tl.constexpr, N2P: tl.constexpr, M1P: tl.constexpr, M2P: tl.constexpr,
    ):
        """Half spectrum (H x WH, complex) of one H x W map of p (or y, when TARGET) into out:
        the 2D kernel's row pass into x1, then its column DFT (four-step or direct); with
        ROWS_ONLY the row pass alone, into out."""
        if ROWS_ONLY:
            r_r = out_r
            r_i = out_i
        else:
            r_r = x1r
            r_i = x1i
        _row_pass(p_base, t_base, a_base, A_OFF, r_r, r_i, w_r, w_i, cos_w_ptr, sin_w_ptr,
                  d1_ptr, e1_ptr, d2_ptr, e2_ptr, tv_c_ptr, tv_s_ptr, H, W, WH, M1, M2, cls,
                  TARGET, LABELS, ACT, FOUR_STEP_W, PRECISION, BM, BN, BK, M1P, M2P)
        if not ROWS_ONLY:
            c1, s1 = _fs_tables(c1_ptr, s1_ptr, N1, FOUR_STEP, N1P)
            _col_pass(x1r, x1i, x1r, out_r, out_i, z_r, z_i, cos_h_ptr, sin_h_ptr, c1, s1, c2_ptr, s2_ptr,
                      tw_c_ptr, tw_s_ptr, H, WH, N1, N2, W, 0.0, 0.0, False, 0, False, False, FOUR_STEP, False,
                      False, PRECISION, BM, BN, BK, N1P, N2P)
            tl.debug_barrier()

    @triton.jit
    def _scc3d_slices_fwd(
        probs_ptr, target_ptr,  # B*C' x D x H x W probs (or logits); labels B x D x H x W or float B*C' x D x H x W
        act_ptr,  # ACT > 0: 2 x B x D x H x W activation statistics, as in the 2D kernel
        cos_w_ptr, sin_w_ptr, cos_h_ptr, sin_h_ptr, c1_ptr, s1_ptr, c2_ptr, s2_ptr, tw_c_ptr, tw_s_ptr,
        d1_ptr, e1_ptr, d2_ptr, e2_ptr, tv_c_ptr, tv_s_ptr,  # the 2D kernel's tables
        scratch_ptr,  # per program: 2 x H x WH + 2 x H x BN + 2 x BM x W float32 (2 x BM x W: ROWS_ONLY)
        ws_ptr,  # per pair of the chunk: 5 x ROWS x WH float32 (P2 re, im; Y2 re, im; B)
        stats_ptr,  # per slice of the chunk: 6 float32 spatial sums
        pair0, n_slices, n_chan, X_CHAN, X_FIRST, A_OFF, first_class, D, H, ROWS, W, WH, N1, N2, M1, M2,
        PER_PROGRAM, PAIR_WS,
        LABELS: tl.constexpr, ACT: tl.constexpr, ROWS_ONLY: tl.constexpr, PRECISION: tl.constexpr,
        BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
        FOUR_STEP: tl.constexpr, N1P: tl.constexpr, N2P: tl.constexpr,
        FOUR_STEP_W: tl.constexpr, M1P: tl.constexpr, M2P: tl.constexpr,
    ):
        """Launch 1: per (pair, slice), the slice's spatial sums and the half spectra of its p and
        y maps into the workspace: 2D transforms over H and W (3D: a slice is a depth plane), or
        with ROWS_ONLY the transform along W alone (2D split: a slice is a block of H rows of the
        map, and the column DFT is the depth pass's). Persistent grid."""
        plane, vol, pid, n_prog, x1r, x1i, z_r, z_i, w_r, w_i = _slice_program(
            scratch_ptr, PER_PROGRAM, H, ROWS, W, WH, ROWS_ONLY, BM, BN)
        for sl in range(pid, n_slices, n_prog):
            pair, d, rows, cls, elem, p_base, t_base, a_base = _slice_maps(
                sl, pair0, n_chan, X_CHAN, X_FIRST, first_class, D, H, ROWS, W, probs_ptr, target_ptr, act_ptr, LABELS)
            s_p, s_y, m2_p, pyc, py, m2_y = _spatial_sums(
                p_base, t_base, a_base, A_OFF, rows, W, cls, LABELS, ACT, BM, BN)
            st = stats_ptr + tl.cast(sl, tl.int64) * 6
            tl.store(st + 0, s_p)
            tl.store(st + 1, s_y)
            tl.store(st + 2, m2_p)
            tl.store(st + 3, pyc)
            tl.store(st + 4, py)
            tl.store(st + 5, m2_y)
            ws = ws_ptr + tl.cast(pair, tl.int64) * PAIR_WS + d * plane
            if ROWS_ONLY:
                nr = rows  # a block of rows (the last may be shorter)
            else:
                nr = H
            _slice_spectrum(p_base, t_base, a_base, A_OFF, ws + 2 * vol, ws + 3 * vol, x1r, x1i, z_r, z_i, w_r, w_i,
                            cos_w_ptr, sin_w_ptr, cos_h_ptr, sin_h_ptr, c1_ptr, s1_ptr, c2_ptr, s2_ptr, tw_c_ptr,
                            tw_s_ptr, d1_ptr, e1_ptr, d2_ptr, e2_ptr, tv_c_ptr, tv_s_ptr, nr, W, WH, N1, N2, M1, M2,
                            cls, True, LABELS, ACT, ROWS_ONLY, FOUR_STEP, FOUR_STEP_W, PRECISION, BM, BN, BK, N1P,
                            N2P, M1P, M2P)
            _slice_spectrum(p_base, t_base, a_base, A_OFF, ws, ws + vol, x1r, x1i, z_r, z_i, w_r, w_i, cos_w_ptr,
                            sin_w_ptr, cos_h_ptr, sin_h_ptr, c1_ptr, s1_ptr, c2_ptr, s2_ptr, tw_c_ptr, tw_s_ptr,
                            d1_ptr, e1_ptr, d2_ptr, e2_ptr, tv_c_ptr, tv_s_ptr, nr, W, WH, N1, N2, M1, M2, cls, False,
                            LABELS, ACT, ROWS_ONLY, FOUR_STEP, FOUR_STEP_W, PRECISION, BM, BN, BK, N1P, N2P, M1P, M2P)

    @triton.jit
    def _depth_program(scratch_ptr, D, BN: tl.constexpr):
        """A depth pass's program: its id, the grid size and its D x BN scratch Z (re, im)."""
        pid = tl.program_id(0)
        z_r = scratch_ptr + pid.to(tl.int64) * (2 * D * BN)
        return pid, tl.num_programs(0), z_r, z_r + D * BN

    @triton.jit
    def _depth_task(ws_ptr, task, N_BLOCKS, PAIR_WS, BN: tl.constexpr):
        """A depth pass's task: its pair in the chunk, the pair's workspace and the first bin."""
        pair = task // N_BLOCKS
        blk = task % N_BLOCKS
        return pair, ws_ptr + tl.cast(pair, tl.int64) * PAIR_WS, blk * BN

    @triton.jit
    def _scc3d_depth_fwd(
        ws_ptr, parts_ptr, scratch_ptr, cos_d_ptr, sin_d_ptr, c1_ptr, s1_ptr, c2_ptr, s2_ptr, tw_c_ptr, tw_s_ptr,
        D, N1, N2, W, WH, NBINS, N_BLOCKS, N_TASKS, PAIR_WS,
        INCLUDE_DC: tl.constexpr, NEED_GRAD: tl.constexpr, PRECISION: tl.constexpr,
        BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
        FOUR_STEP: tl.constexpr, N1P: tl.constexpr, N2P: tl.constexpr,
    ):
        """Launch 2: per task (pair, block of BN of the NBINS bins of a slice's half spectrum;
        persistent grid), the DFT along D, then B = |Y| (kept), A = |P| and the block's part of
        T_a, T_b, T_ab. The DFT is the 2D kernel's column DFT tile over rows d, or with FOUR_STEP
        (D = N1 N2) its four-step column transform through a D x BN scratch Z per program. P,
        when the gradient is needed, takes the place of Y2 (this block's columns of Y2 are
        consumed by then, and no other task reads them)."""
        pid, n_prog, z_r, z_i = _depth_program(scratch_ptr, D, BN)
        vol = tl.cast(D, tl.int64) * NBINS
        for task in range(pid, N_TASKS, n_prog):
            pair, ws, k0 = _depth_task(ws_ptr, task, N_BLOCKS, PAIR_WS, BN)
            s_p2r = ws
            s_p2i = ws + vol
            s_y2r = ws + 2 * vol
            s_y2i = ws + 3 * vol
            s_b = ws + 4 * vol
            t_a = 0.0
            t_b = 0.0
            t_ab = 0.0
            c1, s1 = _fs_tables(c1_ptr, s1_ptr, N1, FOUR_STEP, N1P)
            t_b, t_ab = _col_block(s_y2r, s_y2i, s_b, s_y2r, s_y2i, z_r, z_i, cos_d_ptr, sin_d_ptr, c1, s1, c2_ptr,
                                   s2_ptr, tw_c_ptr, tw_s_ptr, k0, D, NBINS, N1, N2, W, WH, 0.0, 0.0, False, t_b, t_ab,
                                   1, False, False, FOUR_STEP, INCLUDE_DC, NEED_GRAD, True, PRECISION,
                                   BM, BN, BK, N1P, N2P)
            if not FOUR_STEP:
                tl.debug_barrier()  # (the four-step block ends with one)
            t_a, t_ab = _col_block(s_p2r, s_p2i, s_b, s_y2r, s_y2i, z_r, z_i, cos_d_ptr, sin_d_ptr, c1, s1, c2_ptr,
                                   s2_ptr, tw_c_ptr, tw_s_ptr, k0, D, NBINS, N1, N2, W, WH, 0.0, 0.0, False, t_a, t_ab,
                                   2, False, False, FOUR_STEP, INCLUDE_DC, NEED_GRAD, True, PRECISION,
                                   BM, BN, BK, N1P, N2P)
            tl.store(parts_ptr + task * 3 + 0, t_a)
            tl.store(parts_ptr + task * 3 + 1, t_b)
            tl.store(parts_ptr + task * 3 + 2, t_ab)

    @triton.jit
    def _column_sums(base, n, STRIDE: tl.constexpr, I0: tl.constexpr, I1: tl.constexpr, I2: tl.constexpr,
                     B: tl.constexpr):
        """Sums of the columns I0, I1, I2 of an n x STRIDE float32 array, B rows at a time."""
        r = tl.arange(0, B)
        acc0 = tl.zeros([B], dtype=tl.float32)
        acc1 = tl.zeros([B], dtype=tl.float32)
        acc2 = tl.zeros([B], dtype=tl.float32)
        for j0 in range(0, n, B):
            js = j0 + r
            m = js < n
            acc0 += tl.load(base + js * STRIDE + I0, mask=m, other=0.0)
            acc1 += tl.load(base + js * STRIDE + I1, mask=m, other=0.0)
            acc2 += tl.load(base + js * STRIDE + I2, mask=m, other=0.0)
        return tl.sum(acc0, axis=0), tl.sum(acc1, axis=0), tl.sum(acc2, axis=0)

    @triton.jit
    def _scc3d_scalars(
        stats_ptr, parts_ptr, scc_ptr, valid_ptr, coef_ptr, pair0, D, HW, LAST_HW, N_BLOCKS, n_vox,
        magnitude_weight, phase_weight,
        LABELS: tl.constexpr, INCLUDE_DC: tl.constexpr, NEED_GRAD: tl.constexpr,
        BD: tl.constexpr, BB: tl.constexpr,
    ):
        """Launch 3: per pair, the slices' spatial sums combined (centered sums by the parallel
        variance formula: no cancellation), the T parts summed, then the 2D kernel's per-pair
        scalars; SCC, valid and the gradient coefficients (c_a, c_ab, c_aa, c_re, flat_p, and the
        means to subtract) written. A slice has HW voxels, the last LAST_HW (a 2D split's last
        block of rows may be shorter)."""
        pair = tl.program_id(0)
        st = stats_ptr + tl.cast(pair, tl.int64) * D * 6
        rd = tl.arange(0, BD)
        s_p, s_y, py = _column_sums(st, D, 6, 0, 1, 4, BD)
        mean_p = s_p / n_vox
        mean_y = s_y / n_vox
        acc_pp = tl.zeros([BD], dtype=tl.float32)
        acc_pyc = tl.zeros([BD], dtype=tl.float32)
        acc_yy = tl.zeros([BD], dtype=tl.float32)
        for d0 in range(0, D, BD):
            ds = d0 + rd
            m = ds < D
            sp_d = tl.load(st + ds * 6 + 0, mask=m, other=0.0)
            sy_d = tl.load(st + ds * 6 + 1, mask=m, other=0.0)
            hw = tl.where(ds == D - 1, LAST_HW, HW).to(tl.float32)
            dp = tl.where(m, sp_d / hw - mean_p, 0.0)
            dy = tl.where(m, sy_d / hw - mean_y, 0.0)
            # sum (p - mean)^2 = sum_d [sum (p - mean_d)^2 + n_d (mean_d - mean)^2]; likewise the rest
            acc_pp += tl.load(st + ds * 6 + 2, mask=m, other=0.0) + hw * dp * dp
            acc_pyc += tl.load(st + ds * 6 + 3, mask=m, other=0.0) + dp * sy_d
            acc_yy += tl.load(st + ds * 6 + 5, mask=m, other=0.0) + hw * dy * dy
        t_a, t_b, t_ab = _column_sums(parts_ptr + tl.cast(pair, tl.int64) * N_BLOCKS * 3, N_BLOCKS, 3, 0, 1, 2, BB)
        mean_p, mean_y, var_p, total_a, energy_a, total_b, energy_b, cross, valid = _energies(
            s_p, s_y, tl.sum(acc_pp, axis=0), tl.sum(acc_pyc, axis=0), py, tl.sum(acc_yy, axis=0), n_vox,
            LABELS, INCLUDE_DC)
        if INCLUDE_DC:
            n_k = n_vox
        else:
            n_k = n_vox - 1.0
        c_a, c_ab, c_aa, c_re, flat_p = _pair_results(
            scc_ptr + pair0, valid_ptr + pair0, pair, energy_a, total_a, energy_b, total_b, cross, valid, t_a, t_b,
            t_ab, n_k, var_p, n_vox, magnitude_weight, phase_weight, NEED_GRAD)
        if NEED_GRAD:
            off_p, off_y = _dc_offsets(mean_p, mean_y, INCLUDE_DC)
            cp = coef_ptr + pair * 8
            tl.store(cp + 0, c_a)
            tl.store(cp + 1, c_ab)
            tl.store(cp + 2, c_aa)
            tl.store(cp + 3, c_re)
            tl.store(cp + 4, flat_p.to(tl.float32))
            tl.store(cp + 5, off_p)
            tl.store(cp + 6, off_y)

    @triton.jit
    def _scc3d_depth_inv(
        ws_ptr, coef_ptr, scratch_ptr, cos_d_ptr, sin_d_ptr, c1_ptr, s1_ptr, c2_ptr, s2_ptr, tw_c_ptr, tw_s_ptr,
        D, N1, N2, NBINS, N_BLOCKS, N_TASKS, PAIR_WS,
        INCLUDE_DC: tl.constexpr, PRECISION: tl.constexpr,
        BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
        FOUR_STEP: tl.constexpr, N1P: tl.constexpr, N2P: tl.constexpr,
    ):
        """Launch 4: per task (pair, block of bins; persistent grid), the gradient field
        (c_a + c_ab B) P/|P| (the 2D kernel's field tile: DC is kd = 0, bin 0) and its inverse DFT
        along D (direct, or four-step as in launch 2), into the P2 slots (dead since launch 2)."""
        pid, n_prog, z_r, z_i = _depth_program(scratch_ptr, D, BN)
        vol = tl.cast(D, tl.int64) * NBINS
        for task in range(pid, N_TASKS, n_prog):
            pair, ws, k0 = _depth_task(ws_ptr, task, N_BLOCKS, PAIR_WS, BN)
            cp = coef_ptr + pair * 8
            c_a = tl.load(cp + 0)
            c_ab = tl.load(cp + 1)
            flat_p = tl.load(cp + 4) > 0.5
            c1, s1 = _fs_tables(c1_ptr, s1_ptr, N1, FOUR_STEP, N1P)
            unused = 0.0  # MODE 0 sums nothing (a name, not a literal: a loop carries tensors only)
            _col_block(ws + 2 * vol, ws + 3 * vol, ws + 4 * vol, ws, ws + vol, z_r, z_i, cos_d_ptr, sin_d_ptr, c1, s1,
                       c2_ptr, s2_ptr, tw_c_ptr, tw_s_ptr, k0, D, NBINS, N1, N2, 0, 0, c_a, c_ab, flat_p, unused,
                       unused, 0, True, True, FOUR_STEP, INCLUDE_DC, False, True, PRECISION, BM, BN, BK, N1P, N2P)

    @triton.jit
    def _scc3d_slices_inv(
        probs_ptr, target_ptr, act_ptr, cos_w_ptr, sin_w_ptr, cos_h_ptr, sin_h_ptr, c1_ptr, s1_ptr, c2_ptr, s2_ptr,
        tw_c_ptr, tw_s_ptr, d1_ptr, e1_ptr, d2_ptr, e2_ptr, tv_c_ptr, tv_s_ptr,
        scratch_ptr, ws_ptr, coef_ptr, grad_ptr,
        pair0, n_slices, n_chan, X_CHAN, X_FIRST, A_OFF, first_class, D, H, ROWS, W, WH, N1, N2, M1, M2,
        PER_PROGRAM, PAIR_WS, n_vox,
        LABELS: tl.constexpr, ACT: tl.constexpr, ROWS_ONLY: tl.constexpr, INCLUDE_DC: tl.constexpr,
        PRECISION: tl.constexpr,
        BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
        FOUR_STEP: tl.constexpr, N1P: tl.constexpr, N2P: tl.constexpr,
        FOUR_STEP_W: tl.constexpr, M1P: tl.constexpr, M2P: tl.constexpr,
    ):
        """Launch 5: per (pair, slice), the 2D kernel's inverse column and row passes of the
        slice's plane of the depth-inverted field (with ROWS_ONLY the row pass alone: the depth
        pass was the column DFT), plus the spatial terms: dSCC/dp written."""
        plane, vol, pid, n_prog, x1r, x1i, z_r, z_i, w_r, w_i = _slice_program(
            scratch_ptr, PER_PROGRAM, H, ROWS, W, WH, ROWS_ONLY, BM, BN)
        for sl in range(pid, n_slices, n_prog):
            pair, d, rows, cls, elem, p_base, t_base, a_base = _slice_maps(
                sl, pair0, n_chan, X_CHAN, X_FIRST, first_class, D, H, ROWS, W, probs_ptr, target_ptr, act_ptr, LABELS)
            cp = coef_ptr + pair * 8
            c_aa = tl.load(cp + 2)
            c_re = tl.load(cp + 3)
            off_p = tl.load(cp + 5)
            off_y = tl.load(cp + 6)
            ws = ws_ptr + tl.cast(pair, tl.int64) * PAIR_WS + d * plane
            if ROWS_ONLY:
                g_r = ws
                g_i = ws + vol
                nr = rows  # a block of rows (the last may be shorter)
            else:
                _inv_col_pass(ws, ws + vol, ws, x1r, x1i, z_r, z_i, cos_h_ptr, sin_h_ptr,
                              c1_ptr, s1_ptr, c2_ptr, s2_ptr, tw_c_ptr, tw_s_ptr, H, WH, N1, N2, 0.0, 0.0, False,
                              False, FOUR_STEP, INCLUDE_DC, PRECISION, BM, BN, BK, N1P, N2P)
                g_r = x1r
                g_i = x1i
                nr = H
            _inv_row_pass(g_r, g_i, w_r, w_i, p_base, t_base, a_base, A_OFF, grad_ptr + elem, cos_w_ptr, sin_w_ptr,
                          d1_ptr, e1_ptr, d2_ptr, e2_ptr, tv_c_ptr, tv_s_ptr, nr, W, WH, M1, M2, cls,
                          n_vox, c_aa, c_re, off_p, off_y, LABELS, ACT, FOUR_STEP_W, PRECISION, BM, BN, BK,
                          M1P, M2P)
            # The next slice overwrites the scratch this one has just read.
            tl.debug_barrier()

# --------------------------------------------------------------------------------------------
# Host side
# --------------------------------------------------------------------------------------------

_TABLES: dict[tuple[int, int, str], tuple[torch.Tensor, torch.Tensor]] = {}


def _twiddles(n: int, cols: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin(2 pi j k / n), n x cols float32; (j k mod n) keeps every angle exact."""
    key = (n, cols, str(device))
    if key not in _TABLES:
        j = torch.arange(n, dtype=torch.int64)
        k = torch.arange(cols, dtype=torch.int64)
        angle = (torch.outer(j, k) % n).to(torch.float64) * (2 * torch.pi / n)
        _TABLES[key] = (
            torch.cos(angle).to(torch.float32).to(device).contiguous(),
            torch.sin(angle).to(torch.float32).to(device).contiguous(),
        )
    return _TABLES[key]


def _twiddle_grid(n1: int, n2: int, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin(2 pi a b / n) for a < n1, b < n2: the four-step twiddles, n1 x n2 float32."""
    key = (-n, n1 * 100000 + n2, str(device))
    if key not in _TABLES:
        angle = (torch.outer(torch.arange(n1), torch.arange(n2)) % n).to(torch.float64) * (2 * torch.pi / n)
        _TABLES[key] = (
            torch.cos(angle).to(torch.float32).to(device).contiguous(),
            torch.sin(angle).to(torch.float32).to(device).contiguous(),
        )
    return _TABLES[key]


#: An axis is factored (four-step, N = N1 * N2) from this length up, when 16 divides N; the
#: work per output then is N1 + N2 instead of N. Shorter or other axes use the direct DFT.
FOUR_STEP_MIN_H = 128


def _four_step_factors(n: int) -> tuple[int, int] | None:
    """(N1, N2) with n = N1 N2, N2 in {16, 32} (a tl.dot block needs >= 16), or None."""
    if n < FOUR_STEP_MIN_H or n % 16:
        return None
    n2 = 32 if n % 32 == 0 and n // 32 >= 16 else 16
    return n // n2, n2


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


#: GPU tile configurations (BM, BN, BK, num_warps, num_stages) per dot precision, chosen so that
#: ptxas reports no (or little) register spilling for sm_90 in every path (direct / four-step on
#: H and W), compiled without a GPU with triton.compile(..., target=GPUTarget("cuda", 90, 32))
#: and cuobjdump --dump-resource-usage (the stack bytes: bench/RESULTS.md, 'Figures moved out of
#: the code's comments'). These are the sliced passes' (3D, and the 2D split mode). tf32 timed on
#: an H200 (scc-fast bench tune): 32/32/32/4/2 with 3 programs per SM was the fastest split-mode row
#: at both 2D benchmark cases and about halved btcv-3d (bench/RESULTS.md, GPU runs 3 and 4, the
#: tune tables).
GPU_BLOCKS = {
    "tf32": (32, 32, 32, 4, 2),
    "ieee": (32, 32, 16, 8, 2),
    "tf32x3": (32, 32, 16, 8, 1),
}
#: The fused 2D kernel's. tf32 64/32/32/8/2 with 1 program per SM: it meets issue 3's 5x memory
#: target at synapse-2d; run 4's 32/32/32/4/2 with 3 per SM was a little faster but its
#: per-program scratch missed the target (bench/RESULTS.md, GPU run 4, what changed after it).
GPU_BLOCKS_FUSED = dict(GPU_BLOCKS, tf32=(64, 32, 32, 8, 2))


def _blocks(H: int, W: int, precision: str = "tf32", table: dict | None = None) -> tuple[int, int, int, int, int]:
    """(BM, BN, BK, num_warps, num_stages) from ``table`` (default :data:`GPU_BLOCKS`), clipped to
    the image. tl.dot needs every block dim >= 16."""
    if _INTERPRET:
        # Each tl op is one numpy call: the fewer, larger blocks the better.
        b = max(16, min(128, _next_pow2(max(H, W // 2 + 1))))
        return b, b, b, 4, 1
    bm, bn, bk, warps, stages = (GPU_BLOCKS if table is None else table)[precision]
    # Small images: no block larger than the axis it tiles needs.
    bm = max(16, min(bm, _next_pow2(H)))
    bn = max(16, min(bn, _next_pow2(W // 2 + 1)))
    bk = max(16, min(bk, _next_pow2(min(H, W // 2 + 1))))
    return bm, bn, bk, warps, stages


#: Programs per SM in the persistent grids (each holds its own scratch): 1 for the fused 2D
#: kernel (:data:`GPU_BLOCKS_FUSED`), 2 for the sliced passes (4-warp blocks: as fast as 3 or
#: faster, for less scratch; bench/RESULTS.md, GPU run 4's tune); the setting
#: ``triton_programs_per_sm`` applies one number to both.
_PROGRAMS_PER_SM = {"fused": 1, "sliced": 2}


def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _max_programs(device: torch.device, n_pairs: int, path: str = "sliced") -> int:
    """Programs in a persistent grid of ``path`` ("fused" or "sliced"): :data:`_PROGRAMS_PER_SM`
    (or the setting ``triton_programs_per_sm``) per SM at most (more would only wait, holding
    their scratch)."""
    if device.type != "cuda":
        return n_pairs
    per_sm = _settings.current().triton_programs_per_sm or _PROGRAMS_PER_SM[path]
    return max(1, min(n_pairs, _sm_count(device) * max(1, int(per_sm))))


def _precision() -> str:
    return _settings.current().triton_precision


def _four_step_tables(n: int, filler: torch.Tensor, device: torch.device):
    """One axis's four-step arguments: ``(tables, (N1, N2), (N1P, N2P), factored)``, the six
    tables (N1 x N1 and N2 x N2 cos/sin, the N1 x N2 twiddle grid) in kernel argument order; where
    the axis uses the direct DFT, ``filler`` six times (never read), N1 = N2 = 1 and 16-blocks."""
    factors = _four_step_factors(n)
    if factors is None:
        return (filler,) * 6, (1, 1), (16, 16), False
    n1, n2 = factors
    tables = (*_twiddles(n1, n1, device), *_twiddles(n2, n2, device), *_twiddle_grid(n1, n2, n, device))
    return tables, (n1, n2), (max(16, _next_pow2(n1)), n2), True


def _slice_tables(H: int, W: int, device: torch.device):
    """The tables of the per-map 2D transform (shared by the 2D kernel and the 3D slice passes):
    ``(tables, ints, constexprs)``: the 18 table tensors in kernel argument order, (N1, N2, M1,
    M2), and FOUR_STEP / N1P / N2P / FOUR_STEP_W / M1P / M2P."""
    WH = W // 2 + 1
    cos_w, sin_w = _twiddles(W, WH, device)
    cos_h, sin_h = _twiddles(H, H, device)
    h_tables, (n1, n2), (n1p, n2p), four_step = _four_step_tables(H, cos_h, device)
    w_tables, (m1, m2), (m1p, m2p), four_step_w = _four_step_tables(W, cos_w, device)
    tables = (cos_w, sin_w, cos_h, sin_h, *h_tables, *w_tables)
    constexprs = dict(FOUR_STEP=four_step, N1P=n1p, N2P=n2p, FOUR_STEP_W=four_step_w, M1P=m1p, M2P=m2p)
    return tables, (n1, n2, m1, m2), constexprs


class _Activation(NamedTuple):
    """The activation computed in the kernels (see _load_p): ``code`` 1 softmax / 2 sigmoid,
    ``stats`` the 2 x B x spatial float32 statistics (m, r), ``first_channel`` the input
    channel of loss channel 0."""

    code: int
    stats: torch.Tensor
    first_channel: int


def _prepare(probs, target, precision, act: _Activation | None):
    """Contiguous inputs, whether the target is labels (bool labels as uint8), the dot precision,
    and the kernels' activation arguments: (stats pointer, ACT, X_CHAN, X_FIRST, A_OFF, C')."""
    probs = probs.contiguous()
    target = target.contiguous()
    labels = not target.is_floating_point()
    if labels and target.dtype == torch.bool:
        target = target.to(torch.uint8)
    if _INTERPRET and not _settings.current().triton_interpret_tf32:
        precision = "ieee"  # the interpreter computes float32 dots whatever it is told
    x_chan = probs.shape[1]
    if act is None:  # probabilities given: the statistics pointer is never read
        act_args = (probs, 0, x_chan, 0, 0, x_chan)
    else:
        stats = act.stats.contiguous()
        act_args = (stats, act.code, x_chan, act.first_channel, stats.numel() // 2, x_chan - act.first_channel)
    return probs, target, labels, precision, act_args


def _launch(probs, target, first_class, include_dc, magnitude_weight, phase_weight, need_grad, precision, act=None):
    """Run the fused kernel on probabilities, or on logits with ``act`` (an :class:`_Activation`).
    Returns (scc B x C' float32, valid B x C' bool, grad float32 or empty)."""
    probs, target, labels, precision, (act_ptr, act_code, x_chan, x_first, a_off, n_chan) = _prepare(
        probs, target, precision, act)
    n_batch = probs.shape[0]
    H, W = probs.shape[2:]
    WH = W // 2 + 1
    n_pairs = n_batch * n_chan
    device = probs.device
    tables, (n1, n2, m1, m2), constexprs = _slice_tables(H, W, device)
    # Planes of H x WH: X1 (0-1), B (2), and P (3-4; direct DFT along H, with the gradient); then
    # 2 x H x BN floats for the four-step along H and 2 x BM x W for the four-step along W.
    slots = 5 if (need_grad and not constexprs["FOUR_STEP"]) else 3
    n_prog = _max_programs(device, n_pairs, "fused")
    bm, bn, bk, warps, stages = _blocks(H, W, precision, GPU_BLOCKS_FUSED)
    per_program = slots * H * WH + 2 * H * bn + 2 * bm * W
    scratch = torch.empty(n_prog * per_program, dtype=torch.float32, device=device)
    # B x C' outputs as the kernels' flat pair arrays (a bool tensor's bytes are int8 to Triton).
    scc = torch.empty(n_batch, n_chan, dtype=torch.float32, device=device)
    valid = torch.empty(n_batch, n_chan, dtype=torch.bool, device=device)
    grad = torch.empty((n_batch, n_chan, H, W) if need_grad else (0,), dtype=torch.float32, device=device)
    _scc_fused_kernel[(n_prog,)](
        probs, target, act_ptr, *tables,
        scratch, scc, valid, grad if need_grad else scc,
        n_pairs, n_chan, x_chan, x_first, a_off, int(first_class), H, W, WH, n1, n2, m1, m2, per_program,
        float(magnitude_weight), float(phase_weight),
        LABELS=labels, ACT=act_code, INCLUDE_DC=bool(include_dc), NEED_GRAD=bool(need_grad),
        SLOTS=slots, PRECISION=precision, BM=bm, BN=bn, BK=bk, num_warps=warps, num_stages=stages,
        **constexprs,
    )
    return scc, valid, grad


# Workspace of the sliced passes (3D, and 2D split) per call, at most: the setting
# ``triton_workspace_bytes`` (64 MiB; bench/RESULTS.md, GPU run 3, against 1 GiB). Pairs are
# processed in chunks whose workspace (:func:`workspace_bytes_per_pair` each) fits; at least one
# pair per chunk. Each chunk costs its own five launches.

MIN_DEPTH, MAX_DEPTH = 2, 1024

MODES_2D = _settings.MODES_2D
# How 2D input runs, the setting ``triton_2d``: ``"fused"``: the one launch of
# :func:`_scc_fused_kernel`, one program per pair at a time. ``"split"``: the 3D passes with blocks
# of rows as slices (five launches, many programs per pair; rows per slice: the setting
# ``triton_split_rows``, else the row block of the tiles). ``"auto"``: split where the call has
# fewer pairs than the GPU has SMs, else fused (bench/RESULTS.md, GPU run 3: split wins at
# polyp-2d's 32 pairs, fused keeps synapse-2d's 216 at less memory).


def workspace_bytes_per_pair(D: int, H: int, W: int, n_slices: int | None = None) -> int:
    """Transient workspace of the sliced passes per (image, class) pair: 5 volumes of D x H x
    (W // 2 + 1) float32 (the slices' half spectra of p and y, re and im; B), plus 6 floats per
    slice of spatial sums (D slices, or ``n_slices``) and 8 of coefficients; the T parts are 3
    floats per block of bins. A 2D split is D = 1 with H rows in ``n_slices`` blocks. About 10
    bytes per voxel: e.g. 21.3 MB per pair at 128^3 (170 MB for 2 x 4 pairs), 9.0 MB at 96^3 (253 MB
    for 2 x 14 pairs)."""
    return 4 * (5 * D * H * (W // 2 + 1) + 6 * (D if n_slices is None else n_slices) + 8)


def _depth_blocks(D: int, n_bins: int, precision: str) -> tuple[int, int, int, int, int]:
    """(BM, BN, BK, num_warps, num_stages) of the depth passes: tiles of depth x bins. On a GPU
    :data:`GPU_BLOCKS` clipped to D, tuned on the 2D split mode only."""
    if _INTERPRET:
        bd = max(16, min(128, _next_pow2(D)))
        return bd, max(16, min(512, _next_pow2(n_bins))), bd, 4, 1
    bm, bn, bk, warps, stages = GPU_BLOCKS[precision]
    bm = max(16, min(bm, _next_pow2(D)))
    bk = max(16, min(bk, _next_pow2(D)))
    return bm, bn, bk, warps, stages


def _mode_2d() -> str:
    return _settings.current().triton_2d


def _launch_sliced(
    probs, target, first_class, include_dc, magnitude_weight, phase_weight, need_grad, precision, act=None
):
    """Run the sliced passes (five launches per chunk of pairs; three without the gradient) on
    3D input (slices: depth planes, transformed over H and W; depth pass: along D) or on 2D input
    (the split mode; slices: blocks of rows, transformed along W; depth pass: along H).
    On logits with ``act``, as :func:`_launch`.
    Returns (scc B x C' float32, valid B x C' bool, grad float32 or empty)."""
    probs, target, labels, precision, (act_ptr, act_code, x_chan, x_first, a_off, n_chan) = _prepare(
        probs, target, precision, act)
    n_batch = probs.shape[0]
    H, W = probs.shape[-2:]
    WH = W // 2 + 1
    n_pairs = n_batch * n_chan
    device = probs.device
    tables, (n1, n2, m1, m2), constexprs = _slice_tables(H, W, device)
    bm, bn, bk, warps, stages = _blocks(H, W, precision)
    if probs.dim() == 5:
        D = probs.shape[2]
        per_pair, slice_rows, rows = D, H, D * H
        depth, n_bins = D, H * WH
        cos_d, sin_d = _twiddles(D, D, device)
        # Per program: X1 (2 planes of H x WH), then 2 x H x BN (four-step along H) and
        # 2 x BM x W (four-step along W), as in the 2D kernel.
        per_program = 2 * H * WH + 2 * H * bn + 2 * bm * W
        rows_only = False
    else:
        split_rows = _settings.current().triton_split_rows
        slice_rows = max(1, min(H, split_rows if split_rows is not None else bm))
        per_pair, rows = -(-H // slice_rows), H
        depth, n_bins = H, WH
        cos_d, sin_d = tables[2], tables[3]  # the H x H tables: the depth pass is the column DFT
        per_program = 2 * bm * W  # the four-step along W only
        rows_only = True
        constexprs = dict(constexprs, FOUR_STEP=False)  # no column DFT in the slices
    dbm, dbn, dbk, dwarps, dstages = _depth_blocks(depth, n_bins, precision)
    n_blocks = -(-n_bins // dbn)
    # The depth passes' DFT: four-step where the length factors as the 2D kernel's axes do.
    depth_tables, (dn1, dn2), (dn1p, dn2p), depth_four_step = _four_step_tables(depth, cos_d, device)
    pair_ws = 5 * rows * WH
    budget = _settings.current().triton_workspace_bytes
    chunk = max(1, min(n_pairs, budget // workspace_bytes_per_pair(1, rows, W, per_pair)))
    ws = torch.empty(chunk * pair_ws, dtype=torch.float32, device=device)
    stats = torch.empty(chunk * per_pair * 6, dtype=torch.float32, device=device)
    parts = torch.empty(chunk * n_blocks * 3, dtype=torch.float32, device=device)
    coefs = torch.empty(chunk * 8, dtype=torch.float32, device=device)
    n_prog = _max_programs(device, chunk * per_pair)
    n_prog_depth = _max_programs(device, chunk * n_blocks)
    # Per program of the depth passes (four-step): Z, 2 x depth x BN.
    depth_scratch = torch.empty(n_prog_depth * 2 * depth * dbn if depth_four_step else 1, dtype=torch.float32,
                                device=device)
    scratch = torch.empty(n_prog * per_program, dtype=torch.float32, device=device)
    # B x C' outputs as the kernels' flat pair arrays (a bool tensor's bytes are int8 to Triton).
    scc = torch.empty(n_batch, n_chan, dtype=torch.float32, device=device)
    valid = torch.empty(n_batch, n_chan, dtype=torch.bool, device=device)
    grad = torch.empty((n_batch, n_chan, *probs.shape[2:]) if need_grad else (0,), dtype=torch.float32, device=device)
    n_vox = float(rows * W)
    last_rows = rows - (per_pair - 1) * slice_rows
    slice_kw = dict(ACT=act_code, ROWS_ONLY=rows_only, PRECISION=precision, BM=bm, BN=bn, BK=bk, num_warps=warps,
                    num_stages=stages, **constexprs)
    depth_kw = dict(PRECISION=precision, BM=dbm, BN=dbn, BK=dbk, num_warps=dwarps, num_stages=dstages,
                    FOUR_STEP=depth_four_step, N1P=dn1p, N2P=dn2p)
    for pair0 in range(0, n_pairs, chunk):
        n_here = min(chunk, n_pairs - pair0)
        n_slices = n_here * per_pair
        grid_slices = (min(n_prog, n_slices),)
        _scc3d_slices_fwd[grid_slices](
            probs, target, act_ptr, *tables, scratch, ws, stats,
            pair0, n_slices, n_chan, x_chan, x_first, a_off, int(first_class), per_pair, slice_rows, rows, W, WH,
            n1, n2, m1, m2,
            per_program, pair_ws, LABELS=labels, **slice_kw,
        )
        n_tasks = n_here * n_blocks
        grid_depth = (min(n_prog_depth, n_tasks),)
        _scc3d_depth_fwd[grid_depth](
            ws, parts, depth_scratch, cos_d, sin_d, *depth_tables, depth, dn1, dn2, W, WH, n_bins, n_blocks, n_tasks,
            pair_ws, INCLUDE_DC=bool(include_dc), NEED_GRAD=bool(need_grad), **depth_kw,
        )
        _scc3d_scalars[(n_here,)](
            stats, parts, scc, valid, coefs, pair0, per_pair, slice_rows * W, last_rows * W, n_blocks, n_vox,
            float(magnitude_weight), float(phase_weight),
            LABELS=labels, INCLUDE_DC=bool(include_dc), NEED_GRAD=bool(need_grad),
            BD=max(16, min(1024, _next_pow2(per_pair))), BB=max(16, min(1024, _next_pow2(n_blocks))),
        )
        if need_grad:
            _scc3d_depth_inv[grid_depth](
                ws, coefs, depth_scratch, cos_d, sin_d, *depth_tables, depth, dn1, dn2, n_bins, n_blocks, n_tasks,
                pair_ws, INCLUDE_DC=bool(include_dc), **depth_kw,
            )
            _scc3d_slices_inv[grid_slices](
                probs, target, act_ptr, *tables, scratch, ws, coefs, grad,
                pair0, n_slices, n_chan, x_chan, x_first, a_off, int(first_class), per_pair, slice_rows, rows, W,
                WH, n1, n2, m1, m2,
                per_program, pair_ws, n_vox, LABELS=labels, INCLUDE_DC=bool(include_dc), **slice_kw,
            )
    return scc, valid, grad


# --------------------------------------------------------------------------------------------
# Backend contract
# --------------------------------------------------------------------------------------------


def unavailable_reason() -> str | None:
    """None when the kernel can run in this process, else why not."""
    if _IMPORT_ERROR is not None:
        return _IMPORT_ERROR
    if not _INTERPRET and not torch.cuda.is_available():
        return "no CUDA device, and TRITON_INTERPRET=1 was not set before scc_fast.backends.triton_scc was imported"
    return None


def unsupported_reason(probs: torch.Tensor, target: torch.Tensor) -> str | None:
    """None when the kernel supports these tensors, else a sentence saying why not."""
    if probs.dim() not in (4, 5):
        return (
            "the triton kernel handles 2D (B x C x H x W) and 3D (B x C x D x H x W) input, "
            f"got {probs.dim() - 2}D spatial shape {tuple(probs.shape[2:])}"
        )
    H, W = probs.shape[-2:]
    if not (MIN_SIZE <= H <= MAX_SIZE and MIN_SIZE <= W <= MAX_SIZE):
        return f"the triton kernel needs H and W in [{MIN_SIZE}, {MAX_SIZE}], got H x W = {H} x {W}"
    if probs.dim() == 5 and not (MIN_DEPTH <= probs.shape[2] <= MAX_DEPTH):
        return (
            f"the triton kernel needs the depth D of 3D input in [{MIN_DEPTH}, {MAX_DEPTH}], "
            f"got D x H x W = {tuple(probs.shape[2:])}"
        )
    if probs.dtype not in _SUPPORTED_DTYPES:
        return f"the triton kernel computes float32/float16/bfloat16 input, got {probs.dtype} (the torch backend handles float64)"
    if probs.device.type != "cuda" and not (_INTERPRET and probs.device.type == "cpu"):
        return f"the triton kernel needs CUDA tensors (or CPU tensors with TRITON_INTERPRET=1), got device {probs.device}"
    if target.device != probs.device:
        return f"target must be on the device of probs ({probs.device}), got {target.device}"
    spatial = tuple(probs.shape[2:])
    if target.is_floating_point():
        if tuple(target.shape) != tuple(probs.shape):
            return f"a float target must have the shape of probs {tuple(probs.shape)}, got {tuple(target.shape)}"
    elif tuple(target.shape) != (probs.shape[0], *spatial):
        names = "B x H x W" if probs.dim() == 4 else "B x D x H x W"
        return f"integer labels must be {names} = {(probs.shape[0], *spatial)}, got {tuple(target.shape)}"
    return None


def settings() -> dict[str, object]:
    """The settings in force (``scc-fast backends`` prints them): the 2D mode, the dots' precision,
    whether the kernels apply the softmax/sigmoid, and the programs per SM (one number for every
    persistent grid, or per path). A bad value is named."""
    programs_per_sm = _settings.current().triton_programs_per_sm
    return {
        "mode_2d": _mode_2d(),
        "precision": _precision(),
        "activation_in_kernel": activation_in_kernel(),
        "programs_per_sm": programs_per_sm if programs_per_sm is not None else dict(_PROGRAMS_PER_SM),
    }


def _split_2d(n_pairs: int, device: torch.device) -> bool:
    """Whether 2D input of ``n_pairs`` (image, class) pairs runs the split mode (setting ``triton_2d``);
    "auto" splits on CUDA when the pairs would leave SMs idle (no GPU: the fused kernel)."""
    mode = _mode_2d()
    if mode == "auto":
        return device.type == "cuda" and n_pairs < _sm_count(device)
    return mode == "split"


def _launcher(probs: torch.Tensor):
    """The launch for this input: 3D, or 2D in the chosen mode (setting ``triton_2d``)."""
    if probs.dim() == 5 or _split_2d(probs.shape[0] * probs.shape[1], probs.device):
        return _launch_sliced
    return _launch


def correlation(
    probs: torch.Tensor,
    target: torch.Tensor,
    *,
    first_class: int = 0,
    include_dc: bool = False,
    magnitude_weight: float = 0.5,
    phase_weight: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair SCC and the non-degenerate mask; see :mod:`scc_fast.backends` for the contract.

    Args:
        probs: B x C' x H x W or B x C' x D x H x W, float32 (float16/bfloat16 are read and
            computed in float32).
        target: integer labels B x spatial, or a float target of the shape of ``probs``.

    Returns:
        ``(scc, valid)``: B x C' float32 (differentiable in ``probs``), B x C' bool.
    """
    return probability_correlation("triton", probs, target, first_class=first_class, include_dc=include_dc,
                                   magnitude_weight=magnitude_weight, phase_weight=phase_weight)


def _probs_field(probs, target, first_class, include_dc, magnitude_weight, phase_weight, need_grad):
    """``(scc, valid, field)`` of probabilities: field = dSCC/dp (B x C' x spatial float32, or (0,))."""
    reason = unavailable_reason() or unsupported_reason(probs, target)
    if reason is not None:
        raise RuntimeError(f"backend 'triton' cannot run: {reason}")
    with torch.no_grad():
        return _launcher(probs)(probs, target, int(first_class), bool(include_dc), float(magnitude_weight),
                                float(phase_weight), need_grad, _precision())


def activation_in_kernel() -> bool:
    """Whether softmax / sigmoid are computed inside the kernels from per-voxel statistics (no
    B x C x spatial probability tensor is made) rather than handing them the probabilities: less
    memory (one input-sized tensor fewer at the forward's peak) for a few exponentials per voxel
    more (bench/RESULTS.md, GPU run 3). The setting ``triton_activation_in_kernel`` (default True)."""
    return _settings.current().triton_activation_in_kernel


def field(x: torch.Tensor, target: torch.Tensor, request: FieldRequest, field_weights=None):
    """``(scc, valid, field)`` (:class:`scc_fast.backends._protocol.FusedBackend`): softmax or
    sigmoid computed inside the kernels where :func:`activation_in_kernel`, with torch ops before
    them otherwise. field = dSCC/dp (B x C' x spatial float32, or (0,)); no ``aux``."""
    r = request
    if not (r.activation and activation_in_kernel()):
        return probability_field(_probs_field, x, target, r)
    if r.derive_first or r.validate or field_weights is not None:
        raise ValueError(f"backend 'triton' derives no class's field and makes no checks in its kernels, got {r}")
    probs_view = x[:, r.first_channel:]
    reason = unavailable_reason() or unsupported_reason(probs_view, target)
    if reason is not None:
        raise RuntimeError(f"backend 'triton' cannot run: {reason}")
    from ._activation_kernel import activation_stats

    x = x.contiguous()  # once, for the statistics and the kernels
    act = _Activation(r.activation, activation_stats(x, target, r.activation, r.ignore_index), r.first_channel)
    if r.ignore_index is not None:  # an ignored voxel matches no class (its p is 0 through the statistics)
        target = torch.where(target == r.ignore_index, torch.full_like(target, -1), target)
    with torch.no_grad():
        return with_no_aux(*_launcher(probs_view)(x, target, r.first_class, *r.coefficients(), r.need_grad,
                                                  _precision(), act))


# The registered op's backward and fake implementation (scc_fast.backends.activation).
backward, fake = field_backward, field_fake


# The activation fused around field (scc_fast.backends.activation).
activated_correlation = fused_entry("triton", sys.modules[__name__])


def loss(x: torch.Tensor, target: torch.Tensor, options: LossOptions) -> torch.Tensor:
    """The loss (:class:`scc_fast.backends._protocol.Backend`): softmax / sigmoid computed inside
    the kernels where :func:`activation_in_kernel`."""
    in_kernel = options.activation is not None and activation_in_kernel()
    return fused_loss("triton", x, target, options, in_kernel=in_kernel)
