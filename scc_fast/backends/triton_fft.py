"""Backend "triton_fft": cuFFT transforms with fused Triton kernels for everything between them.

For any 2D or 3D shape cuFFT handles (B x C' x H x W or B x C' x D x H x W), per chunk of classes
(:func:`_forward`):

1. Stage 1 reads p (or, with the activation fused, every channel's logits: softmax or sigmoid
   computed here, ``_activated_moments_kernel``) and the labels once per tile, writes p and the
   one-hot y the transforms take, and reduces each pair's spatial moments (means, second moments,
   the co-moment and the exact class count), combined tile by tile (Chan et al.) so that the
   Parseval terms of docs/loss.md section 5 never cancel. Without the activation it is
   ``_spatial_stats_kernel``.
2. ``torch.fft.rfftn`` of y, then of p: the half spectra Y and P, each map freed once transformed.
3. ``_spectral_stats_kernel``: |P|, |Y|, the half-spectrum weights and the sums T_a, T_b, T_ab.
4. ``_pair_kernel``, one launch for all pairs: the partial sums merged in a fixed order
   (deterministic, no atomics), SCC, valid and the gradient's coefficients
   (:mod:`._triton_scalars`, the zero tests of backend "torch"). One launch where there were
   about 100 small torch ops: the backend is host-bound on a GPU (bench/RESULTS.md, GPU run 3).
5. ``_field_kernel`` overwrites P with the spectrum of dSCC/dp, the spatial terms carried into
   the spectrum (the transform is linear), so no pass over p and y follows the transforms.
6. ``torch.fft.irfftn(..., norm="forward")``, unscaled (the coefficients carry no factor N, which
   saves a pass): dSCC/dp of the chunk.

Under a softmax over every channel (no ignored label, one chunk) the maps sum to one at each
voxel, so class 0's spectrum is N at DC minus the others' (:func:`derives_first_class`): C - 1
maps are transformed each way, ``_derived_stats_kernel`` / ``_derived_field_kernel`` take a
program per image and block of bins, and the field of classes 1 on is G_c - G_0, right for an
upstream gradient that is the same for every class of an image (the mean and the sum). With
``validate`` (:func:`validates_in_op`) stage 1 makes ``scc_loss``'s checks as it reads, one
device sync after the launches; the labels then known in range, Y of class 0 is derived too.

The gradient field is computed in the forward call and is all that is saved. Only one chunk's
spectra are alive at a time (the setting ``fft_chunk_elements``). The forward runs inside the one
registered op, ``torch.ops.scc_fast.activated_correlation`` (:mod:`scc_fast.backends.activation`),
so ``torch.compile`` traces a model using it without a graph break. Triton kernels run on CUDA
tensors, and on CPU tensors under ``TRITON_INTERPRET=1`` (set before triton is imported) for tests.
"""

from __future__ import annotations

import sys

import functools
import math
import os
import struct

import torch

from .. import _settings
from .._checks import raise_flagged
from .._grid import next_power_of_2
from .._numerics import accumulation_dtype, to_accumulation
from ._protocol import FieldRequest, LossOptions
from .activation import (
    field_backward, field_fake, fused_entry, fused_loss, kernel_backward, probability_correlation, probability_field,
    with_no_aux,
)

try:
    import triton
    import triton.language as tl

    from ._triton_scalars import energies, grad_coefficients, pair_scalars

    _IMPORT_ERROR: str | None = None
except ImportError as exc:  # pragma: no cover - exercised only without triton installed
    triton = tl = None
    _IMPORT_ERROR = f"triton is not installed ({exc}); pip install 'scc_fast[triton]'"

__all__ = [
    "correlation", "field", "loss", "activation_in_kernel", "unavailable_reason",
    "unsupported_reason", "derives_first_class", "validates_in_op", "settings", "MAX_ACTIVATION_CHANNELS",
]

# Upper bound on B x k x spatial elements per chunk of k classes (at least one class per chunk):
# the setting ``fft_chunk_elements``. A chunk holds its one-hot target, its half spectra P and Y
# (about as many floats each) and the inverse transform; fewer, larger chunks mean fewer launches
# (about 100 small ones per chunk). 2^26 keeps every benchmark case in one chunk; a lower value
# trades time for peak memory.


# triton.jit reads TRITON_INTERPRET when the kernels below are defined: what counts is its value
# when this module was imported.
_INTERPRETED = os.environ.get("TRITON_INTERPRET", "") == "1"


def _interpreted() -> bool:
    return _INTERPRETED


def unavailable_reason() -> str | None:
    if _IMPORT_ERROR is not None:
        return _IMPORT_ERROR
    if not torch.cuda.is_available() and not _interpreted():
        return (
            "no CUDA device, and TRITON_INTERPRET=1 was not set before scc_fast.backends.triton_fft was imported "
            "(the Triton interpreter runs CPU tensors)"
        )
    return None


def unsupported_reason(probs: torch.Tensor, target: torch.Tensor) -> str | None:
    if probs.device.type == "cuda":
        return None
    if probs.device.type == "cpu" and _interpreted():
        return None
    return (
        f"the Triton kernels need CUDA tensors (or CPU tensors with TRITON_INTERPRET=1 set before "
        f"scc_fast.backends.triton_fft is imported), got device {probs.device}"
    )


if triton is not None:

    @triton.jit
    def _narrow_labels_kernel(src_ptr, dst_ptr, n, lo, n_chan, BLOCK: tl.constexpr):
        """dst = label - lo as int8 where it is a channel (0 <= label - lo < n_chan), else -1."""
        idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        m = idx < n
        x = tl.load(src_ptr + idx, mask=m, other=-1)
        c = x - lo
        out = tl.where((c >= 0) & (c < n_chan), c, -1).to(tl.int8)
        tl.store(dst_ptr + idx, out, mask=m)

    @triton.jit
    def _merge_moments(n, mean_p, mean_y, m2_p, m2_y, c_py, n_b, mean_p_b, mean_y_b, m2_p_b, m2_y_b, c_py_b):
        """Chan et al.: the moments of a set (count n, means, sums of squared deviations M2, co-moment
        C) merged with those of a disjoint set (``_b``); no cancellation for near-constant maps.
        A count of 0 on both sides (a masked lane) stays finite."""
        n_new = n + n_b
        f = n_b / tl.maximum(n_new, 1.0)
        g = n * f
        delta_p = mean_p_b - mean_p
        delta_y = mean_y_b - mean_y
        m2_p += m2_p_b + delta_p * delta_p * g
        m2_y += m2_y_b + delta_y * delta_y * g
        c_py += c_py_b + delta_p * delta_y * g
        return n_new, mean_p + delta_p * f, mean_y + delta_y * f, m2_p, m2_y, c_py

    @triton.jit
    def _combine_columns(n, mean_p, mean_y, m2_p, m2_y, c_py):
        """Per row of a block, the moments of its columns' disjoint sets combined in closed form:
        each column's means' deviations from the combined mean, no cancellation. All arguments
        are 2D (rows x columns); a column of count 0 (masked, empty) adds nothing."""
        n_b = tl.sum(n, axis=1)
        inv = 1.0 / tl.maximum(n_b, 1.0)
        mean_p_b = tl.sum(n * mean_p, axis=1) * inv
        mean_y_b = tl.sum(n * mean_y, axis=1) * inv
        dp = mean_p - mean_p_b[:, None]
        dy = mean_y - mean_y_b[:, None]
        m2_p_b = tl.sum(m2_p + n * dp * dp, axis=1)
        m2_y_b = tl.sum(m2_y + n * dy * dy, axis=1)
        c_py_b = tl.sum(c_py + n * dp * dy, axis=1)
        return n_b, mean_p_b, mean_y_b, m2_p_b, m2_y_b, c_py_b

    @triton.jit
    def _store_moments(part_ptr, count_ptr, pair, split, n_splits, n, mean_p, m2_p, mean_y, m2_y, c_py, count, mask,
                       LABELS: tl.constexpr):
        """Split ``split``'s moments of pairs ``pair`` (a scalar, or a vector stored where ``mask``):
        ``(n, mean p, M2 p, mean y, M2 y, C py)`` to ``part[pair, split]`` and, for labels, the class
        count to ``count[pair, split]``, the layout the pair kernel reads. Both stage-1 kernels write
        them, so they cannot drift apart."""
        out = part_ptr + (pair * n_splits + split) * 6
        tl.store(out + 0, n, mask=mask)
        tl.store(out + 1, mean_p, mask=mask)
        tl.store(out + 2, m2_p, mask=mask)
        tl.store(out + 3, mean_y, mask=mask)
        tl.store(out + 4, m2_y, mask=mask)
        tl.store(out + 5, c_py, mask=mask)
        if LABELS:
            tl.store(count_ptr + pair * n_splits + split, count, mask=mask)

    @triton.jit
    def _spatial_stats_kernel(
        p_ptr,
        p_stride_b,
        p_stride_c,
        y_ptr,
        y_stride_b,
        y_stride_c,
        yout_ptr,
        part_ptr,
        count_ptr,
        n_vox,
        n_chunk,
        class0,
        span,
        n_splits,
        LABELS: tl.constexpr,
        WRITE_Y: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        """Program (pair, split): moments of p and y over voxels [split * span, +span) of the pair.

        Writes ``(n, mean p, M2 p, mean y, M2 y, C py)`` to ``part[pair, split]`` and, for labels,
        the class count to ``count[pair, split]`` (and y to ``yout`` when WRITE_Y).
        """
        pair = tl.program_id(0)
        split = tl.program_id(1)
        b = pair // n_chunk
        j = pair % n_chunk
        p_base = p_ptr + b.to(tl.int64) * p_stride_b + j.to(tl.int64) * p_stride_c
        y_base = y_ptr + b.to(tl.int64) * y_stride_b + j.to(tl.int64) * y_stride_c
        dt = p_ptr.dtype.element_ty
        lanes = tl.arange(0, BLOCK)
        zero = tl.sum(tl.zeros([BLOCK], dtype=dt), axis=0)
        n = zero
        mean_p = zero
        m2_p = zero
        mean_y = zero
        m2_y = zero
        c_py = zero
        count = tl.sum(tl.zeros([BLOCK], dtype=tl.int32), axis=0)
        start = split * span
        end = tl.minimum(start + span, n_vox)
        for off in range(start, end, BLOCK):
            idx = off + lanes
            m = idx < end
            p = tl.load(p_base + idx, mask=m, other=0.0).to(dt)
            if LABELS:
                lab = tl.load(y_base + idx, mask=m, other=-1)
                hit = (lab == class0 + j) & m
                y = hit.to(dt)
                count += tl.sum(hit.to(tl.int32), axis=0)
                if WRITE_Y:
                    tl.store(yout_ptr + pair.to(tl.int64) * n_vox + idx, y, mask=m)
            else:
                y = tl.load(y_base + idx, mask=m, other=0.0).to(dt)
            # Centered moments of this tile, then merged into the running ones (Chan et al.).
            n_t = tl.sum(m.to(dt), axis=0)
            mp_t = tl.sum(p, axis=0) / n_t
            my_t = tl.sum(y, axis=0) / n_t
            dp = tl.where(m, p - mp_t, 0.0)
            dy = tl.where(m, y - my_t, 0.0)
            n, mean_p, mean_y, m2_p, m2_y, c_py = _merge_moments(
                n, mean_p, mean_y, m2_p, m2_y, c_py,
                n_t, mp_t, my_t, tl.sum(dp * dp, axis=0), tl.sum(dy * dy, axis=0), tl.sum(dp * dy, axis=0))
        _store_moments(part_ptr, count_ptr, pair, split, n_splits, n, mean_p, m2_p, mean_y, m2_y, c_py, count, None,
                       LABELS)

    @triton.jit
    def _chunk_rows(b, j, in_chunk, n_chunk, skip, n_vox):
        """Stage 1's output rows of image b for chunk rows ``j``: their offsets into a B x (n_chunk -
        skip) x n_vox map (``skip`` 1: the chunk's row 0 is not written) and which rows it holds."""
        return (b * (n_chunk - skip) + j - skip).to(tl.int64) * n_vox, in_chunk & (j >= skip)

    @triton.jit
    def _nonfinite(x):
        """1 where float32 ``x`` is NaN or +-inf, else 0 (int32). NaN and +-inf have every exponent
        bit set: an integer test, no float compare that a compiler could assume away."""
        exponent = x.to(tl.int32, bitcast=True) & 0x7F800000
        return (exponent == 0x7F800000).to(tl.int32)

    @triton.jit
    def _label_outside(lab, m, n_chan, ignore_index, HAS_IGNORE: tl.constexpr):
        """1 where a label read (``m``) is outside 0 .. max(C, 2) - 1 (scc_fast._checks.label_range)
        and, with HAS_IGNORE, not ``ignore_index``; else 0 (int32)."""
        outside = (lab < 0) | (lab >= tl.maximum(n_chan, 2))
        if HAS_IGNORE:
            outside = outside & (lab != ignore_index)
        return (m & outside).to(tl.int32)

    @triton.jit
    def _activate(x, row_ok, ACTIVATION: tl.constexpr):
        """p of a tile of logits (channel rows x voxels): the softmax over the rows ``row_ok``
        (ACTIVATION 1; rows past C take no part) or the sigmoid (2)."""
        if ACTIVATION == 1:
            x = tl.where(row_ok[:, None], x, -float("inf"))
            e = tl.exp(x - tl.max(x, axis=0)[None, :])
            p = e / tl.sum(e, axis=0)[None, :]
        else:
            p = 1.0 / (1.0 + tl.exp(-x))
        return p

    @triton.jit
    def _one_hot(p, lab, rows, mine, first_channel, first_class, ignore_index, HAS_IGNORE: tl.constexpr):
        """The one-hot target (bool, channel rows x voxels, where ``mine``) of labels ``lab``: label
        ``first_class + c`` is loss channel c, row ``first_channel + c``. Returns p with the voxels
        labelled ``ignore_index`` (HAS_IGNORE) at 0, and the one-hot y, 0 there too."""
        cls = lab - first_class  # the loss channel the label names, if any
        if HAS_IGNORE:
            keep = lab != ignore_index
            cls = tl.where(keep, cls, -1)
            p = tl.where(keep[None, :], p, 0.0)
        hit = (cls[None, :] == (rows - first_channel)[:, None]) & mine
        return p, hit

    @triton.jit
    def _welford_step(v, n_l, p, y, mean_p, m2_p, mean_y, m2_y, c_py, LABELS: tl.constexpr):
        """Welford's update of every lane (rows x voxel slots) with its voxel's p and y; ``v`` (per
        slot) is 1 where the slot has a voxel, 0 past the end (no sample). With labels (y 0 / 1)
        ``c_py`` sums p over the ones and y's moments are left to :func:`_lane_moments`."""
        n_l += v
        step = (v / tl.maximum(n_l, 1.0))[None, :]
        dp = p - mean_p
        mean_p += dp * step
        m2_p += v[None, :] * dp * (p - mean_p)
        if LABELS:
            c_py += p * y
        else:
            dy = y - mean_y
            mean_y += dy * step
            m2_y += v[None, :] * dy * (y - mean_y)
            c_py += v[None, :] * dp * (y - mean_y)
        return n_l, mean_p, m2_p, mean_y, m2_y, c_py

    @triton.jit
    def _lane_moments(n_l, mean_p, m2_p, mean_y, m2_y, c_py, count_l, LABELS: tl.constexpr):
        """Per row, the moments of :func:`_welford_step`'s lanes merged once, in closed form
        (:func:`_combine_columns`): ``(n, mean p, mean y, M2 p, M2 y, C py)``. With labels a lane's
        y moments follow from its count k of ones (``count_l``) and the sum s of p over them
        (``c_py``): mean k / n, M2 = k - k^2 / n, C = s - k mean p (no running y moments)."""
        n_lanes = n_l[None, :] + tl.zeros_like(mean_p)
        if LABELS:
            k = count_l.to(mean_p.dtype)
            mean_y = k / tl.maximum(n_lanes, 1.0)
            m2_y = k - k * mean_y
            c_py = c_py - k * mean_p
        return _combine_columns(n_lanes, mean_p, mean_y, m2_p, m2_y, c_py)

    @triton.jit
    def _activated_moments_kernel(
        x_ptr, lab_ptr, yf_ptr, yf_stride_b, yf_stride_c, p_out_ptr, y_out_ptr, part_ptr, count_ptr, flag_ptr,
        n_vox, n_chan, first_channel, c0, n_chunk, first_class, ignore_index, span, n_splits, p_skip, y_skip,
        ACTIVATION: tl.constexpr, LABELS: tl.constexpr, HAS_IGNORE: tl.constexpr, VALIDATE: tl.constexpr,
        CP: tl.constexpr, BLOCK: tl.constexpr, CHANNEL_THREADS: tl.constexpr,
    ):
        """Program (split, image): stage 1 from the logits, for every class of the chunk at once.

        Reads the C logits of a tile of voxels (a CP x BLOCK block, channels down) and the labels
        once; p = softmax over all C (ACTIVATION 1) or sigmoid (2), 0 at voxels labelled
        ``ignore_index``; writes p and, for labels, the one-hot y of the chunk's channels
        ``first_channel + c0 + j`` (j < n_chunk) into ``p_out`` / ``y_out`` (B x n_chunk x
        spatial) for the transforms; with ``p_skip`` 1, p of chunk channel 0 is not written
        (``p_out`` is B x (n_chunk - 1) x spatial: that class's spectrum is derived from the
        others', :func:`derives_first_class`), and with ``y_skip`` 1 neither is y's (labels
        checked in range: Y of class 0 is derived too). The moments of the pairs ``(image, j)``
        go to ``part`` and ``count`` as ``_spatial_stats_kernel`` writes them. One launch for what
        took torch's softmax, the label narrowing and the statistics pass. With VALIDATE the
        program also writes ``flag[image, split]``: FLAG_LABEL_OUTSIDE (2) for a label outside
        0 .. max(n_chan, 2) - 1 other than ``ignore_index``, FLAG_NONFINITE_INPUT (1) for a NaN or
        infinite logit of any channel (``scc_loss``'s ``validate=True`` checks, made where the
        logits and labels are read anyway).
        """
        split = tl.program_id(0)
        b = tl.program_id(1)
        dt = p_out_ptr.dtype.element_ty
        rows = tl.arange(0, CP)
        row_ok = rows < n_chan
        j = rows - first_channel - c0  # the row's index in the chunk
        in_chunk = (j >= 0) & (j < n_chunk)
        x_img = x_ptr + b.to(tl.int64) * n_chan * n_vox + rows[:, None].to(tl.int64) * n_vox
        y_rows, y_mine = _chunk_rows(b, j, in_chunk, n_chunk, y_skip, n_vox)
        p_rows, p_mine = _chunk_rows(b, j, in_chunk, n_chunk, p_skip, n_vox)
        lanes = tl.arange(0, BLOCK)
        # Every lane (row, voxel slot) keeps its own running moments (Welford), merged across
        # lanes once after the loop: no reduction across threads inside the loop (per-tile sums
        # merged per tile cost 7 block reductions a tile). With labels a lane keeps its count of
        # ones and the sum of p over them instead of y's moments (:func:`_lane_moments`).
        n_l = tl.zeros([BLOCK], dtype=dt)
        zero = tl.zeros([CP, BLOCK], dtype=dt)
        mean_p, m2_p, mean_y, m2_y, c_py = zero, zero, zero, zero, zero
        count_l = tl.zeros([CP, BLOCK], dtype=tl.int32)
        if VALIDATE:  # per lane, or-ed over the loop and reduced once after it
            nonfinite_l = tl.zeros([CP, BLOCK], dtype=tl.int32)
            outside_l = tl.zeros([BLOCK], dtype=tl.int32)
        start = split * span
        end = tl.minimum(start + span, n_vox)
        for off in range(start, end, BLOCK):
            idx = off + lanes
            if CHANNEL_THREADS:
                # Contiguity 1 (always true): no vector loads, so Triton lays a warp's threads
                # down the channel rows first and the softmax's max and sum stay in the warp.
                idx = tl.max_contiguous(idx, 1)
            m = idx < end
            tile = row_ok[:, None] & m[None, :]
            x = tl.load(x_img + idx[None, :], mask=tile, other=0.0).to(tl.float32)
            if VALIDATE:
                nonfinite_l |= _nonfinite(x)
            p = _activate(x, row_ok, ACTIVATION)
            mine = in_chunk[:, None] & m[None, :]
            if LABELS:
                lab = tl.load(lab_ptr + b.to(tl.int64) * n_vox + idx, mask=m, other=-1)
                if VALIDATE:
                    outside_l |= _label_outside(lab, m, n_chan, ignore_index, HAS_IGNORE)
                p, hit = _one_hot(p, lab, rows, mine, first_channel, first_class, ignore_index, HAS_IGNORE)
                y = hit.to(dt)
                count_l += hit.to(tl.int32)
                tl.store(y_out_ptr + y_rows[:, None] + idx[None, :], y, mask=y_mine[:, None] & m[None, :])
            else:
                # yf is the chunk's view of the float target: its channel j is row j of the chunk.
                yf = yf_ptr + b.to(tl.int64) * yf_stride_b + j[:, None].to(tl.int64) * yf_stride_c
                y = tl.load(yf + idx[None, :], mask=mine, other=0.0).to(dt)
            p = tl.where(mine, p, 0.0).to(dt)
            tl.store(p_out_ptr + p_rows[:, None] + idx[None, :], p, mask=p_mine[:, None] & m[None, :])
            n_l, mean_p, m2_p, mean_y, m2_y, c_py = _welford_step(
                m.to(dt), n_l, p, y, mean_p, m2_p, mean_y, m2_y, c_py, LABELS)
        n, mean_p, mean_y, m2_p, m2_y, c_py = _lane_moments(n_l, mean_p, m2_p, mean_y, m2_y, c_py, count_l, LABELS)
        count = tl.sum(count_l, axis=1)
        _store_moments(part_ptr, count_ptr, b * n_chunk + j, split, n_splits, n, mean_p, m2_p, mean_y, m2_y, c_py,
                       count, in_chunk, LABELS)
        if VALIDATE:
            flag = tl.max(tl.max(nonfinite_l, axis=1), axis=0) | (tl.max(outside_l, axis=0) * 2)
            tl.store(flag_ptr + b * n_splits + split, flag)

    @triton.jit
    def _half_spectrum_weights(k, m, w_half, LAST_EVEN: tl.constexpr, INCLUDE_DC: tl.constexpr):
        """The weight of half-spectrum bins k (float32): 2 for a bin that stands for itself and its
        mirror, 1 for bin 0 of the last axis and its even-length Nyquist bin, 0 at DC when DC is
        out of K and where ``m`` is false."""
        kl = k % w_half
        once = kl == 0
        if LAST_EVEN:
            once = once | (kl == w_half - 1)
        w = tl.where(once, 1.0, 2.0)
        if not INCLUDE_DC:
            w = tl.where(k == 0, 0.0, w)
        return tl.where(m, w, 0.0)

    @triton.jit
    def _spectral_stats_kernel(
        P_ptr,
        Y_ptr,
        part_ptr,
        n_half,
        w_half,
        span,
        n_splits,
        LAST_EVEN: tl.constexpr,
        INCLUDE_DC: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        """Program (pair, split): weighted sums of |P|, |Y|, |P||Y| over half-spectrum bins of a span.

        P and Y are the complex half spectra viewed as real (pair, bin, re/im), contiguous.
        """
        pair = tl.program_id(0)
        split = tl.program_id(1)
        base = pair.to(tl.int64) * n_half * 2
        dt = P_ptr.dtype.element_ty
        lanes = tl.arange(0, BLOCK)
        ri = tl.arange(0, 2)
        t_a = tl.zeros([BLOCK], dtype=dt)
        t_b = tl.zeros([BLOCK], dtype=dt)
        t_ab = tl.zeros([BLOCK], dtype=dt)
        start = split * span
        end = tl.minimum(start + span, n_half)
        for off in range(start, end, BLOCK):
            k = off + lanes
            m = k < end
            offs = base + k[:, None] * 2 + ri[None, :]
            xp = tl.load(P_ptr + offs, mask=m[:, None], other=0.0)
            xy = tl.load(Y_ptr + offs, mask=m[:, None], other=0.0)
            a = tl.sqrt(tl.sum(xp * xp, axis=1))
            bm = tl.sqrt(tl.sum(xy * xy, axis=1))
            w = _half_spectrum_weights(k, m, w_half, LAST_EVEN, INCLUDE_DC).to(dt)
            wa = w * a
            t_a += wa
            t_b += w * bm
            t_ab += wa * bm
        out = part_ptr + (pair * n_splits + split) * 3
        tl.store(out + 0, tl.sum(t_a, axis=0))
        tl.store(out + 1, tl.sum(t_b, axis=0))
        tl.store(out + 2, tl.sum(t_ab, axis=0))

    @triton.jit
    def _transform_sums(tpart_ptr, pairs, pm, n_tsp, BP: tl.constexpr, SB: tl.constexpr):
        """T_a, T_b and T_ab of pairs ``pairs`` (where ``pm``): their ``n_tsp`` splits' parts summed,
        SB at a time. Plain sums accumulate BP x SB blocks and reduce once after the loop: triton 3.6's
        thread-locality pass fails to compile `acc += tl.sum(block, axis=1)` in a loop here
        (found on the device with triton 3.6; triton 3.9 compiles both)."""
        dt = tpart_ptr.dtype.element_ty
        t_a2 = tl.zeros([BP, SB], dtype=dt)
        t_b2 = tl.zeros([BP, SB], dtype=dt)
        t_ab2 = tl.zeros([BP, SB], dtype=dt)
        for s0 in range(0, n_tsp, SB):
            s = s0 + tl.arange(0, SB)
            sm = pm[:, None] & (s < n_tsp)[None, :]
            row = tpart_ptr + (pairs[:, None] * n_tsp + s[None, :]) * 3
            t_a2 += tl.load(row + 0, mask=sm, other=0.0)
            t_b2 += tl.load(row + 1, mask=sm, other=0.0)
            t_ab2 += tl.load(row + 2, mask=sm, other=0.0)
        return tl.sum(t_a2, axis=1), tl.sum(t_b2, axis=1), tl.sum(t_ab2, axis=1)

    @triton.jit
    def _pair_kernel(
        part_ptr,
        count_ptr,
        tpart_ptr,
        scc_ptr,
        valid_ptr,
        coef_ptr,
        n_pairs,
        n_sp,
        n_tsp,
        n_chunk,
        n_chan,
        c0,
        n_vox,
        mw_hi,
        mw_lo,
        pw_hi,
        pw_lo,
        LABELS: tl.constexpr,
        INCLUDE_DC: tl.constexpr,
        NEED_GRAD: tl.constexpr,
        EPS: tl.constexpr,
        FMAX: tl.constexpr,
        BP: tl.constexpr,
        SB: tl.constexpr,
    ):
        """Program: BP pairs of the chunk. Merges the per-split moments (Chan et al.) and T parts,
        then docs/loss.md section 5's Parseval sums and pair scalars (:mod:`._triton_scalars`, as
        ``torch_fft.pair_coefficients``): SCC and valid into the B x C outputs at channel c0 + j,
        and with NEED_GRAD the 5 x n_pairs coefficients of the field kernel: c_a, c_ab, flat p (0/1),
        2 c_aa and c_re. One launch for what took ~100 small torch ops.

        Scalar float arguments reach a kernel as float32: each weight comes as a float32 pair
        (hi + lo, about 48 bits), n_vox as an integer, so the float64 path keeps its precision."""
        pairs = tl.program_id(0) * BP + tl.arange(0, BP)
        pm = pairs < n_pairs
        dt = part_ptr.dtype.element_ty
        nv = tl.cast(n_vox, dt)
        magnitude_weight = tl.cast(mw_hi, dt) + tl.cast(mw_lo, dt)
        phase_weight = tl.cast(pw_hi, dt) + tl.cast(pw_lo, dt)
        zero = tl.zeros([BP], dtype=dt)
        # The splits' moments, SB at a time: each block of splits combined in closed form (the
        # deviations of its means from their combined mean, no cancellation), then merged into
        # the running moments (Chan et al.). A block's loads are independent of each other: the
        # loop is n_sp / SB dependent steps, not n_sp (bench/RESULTS.md, GPU run 4).
        n, mean_p, mean_y, m2_p, m2_y, c_py = zero, zero, zero, zero, zero, zero
        count2 = tl.zeros([BP, SB], dtype=tl.int64)
        for s0 in range(0, n_sp, SB):
            s = s0 + tl.arange(0, SB)
            sm = pm[:, None] & (s < n_sp)[None, :]
            row = part_ptr + (pairs[:, None] * n_sp + s[None, :]) * 6
            # Masked splits load as count 0 (and 0 moments): they add nothing to the block.
            n_b, mp_b, my_b, m2p_b, m2y_b, cpy_b = _combine_columns(
                tl.load(row + 0, mask=sm, other=0.0), tl.load(row + 1, mask=sm, other=0.0),
                tl.load(row + 3, mask=sm, other=0.0), tl.load(row + 2, mask=sm, other=0.0),
                tl.load(row + 4, mask=sm, other=0.0), tl.load(row + 5, mask=sm, other=0.0))
            n, mean_p, mean_y, m2_p, m2_y, c_py = _merge_moments(
                n, mean_p, mean_y, m2_p, m2_y, c_py, n_b, mp_b, my_b, m2p_b, m2y_b, cpy_b)
            if LABELS:
                count2 += tl.load(count_ptr + pairs[:, None] * n_sp + s[None, :], mask=sm, other=0).to(tl.int64)
        t_a, t_b, t_ab = _transform_sums(tpart_ptr, pairs, pm, n_tsp, BP, SB)
        count = tl.sum(count2, axis=1)
        s_y = mean_y * nv
        if LABELS:
            # The exact integer class count: the degenerate test must not round (docs/loss.md section 2).
            s_y = count.to(dt)
        mean_p, mean_y, var_p, total_a, energy_a, total_b, energy_b, cross, valid = energies(
            mean_p * nv, s_y, m2_p, c_py, c_py + nv * mean_p * mean_y, m2_y, nv, LABELS, INCLUDE_DC)
        if LABELS:
            if INCLUDE_DC:
                valid = count > 0
            else:
                valid = (count > 0) & (count < n_vox)
        if INCLUDE_DC:
            n_k = nv
        else:
            n_k = nv - 1.0
        scc, rho_mag, rho_phase, den, zero_mag, zero_phase, var_a = pair_scalars(
            energy_a, total_a, energy_b, total_b, cross, t_a, t_b, t_ab, n_k, magnitude_weight, phase_weight, EPS, FMAX)
        out = (pairs // n_chunk) * n_chan + c0 + pairs % n_chunk
        tl.store(scc_ptr + out, scc, mask=pm)
        tl.store(valid_ptr + out, valid.to(tl.int8), mask=pm)
        if NEED_GRAD:
            c_a, c_ab, c_aa, c_re, flat_p = grad_coefficients(
                rho_mag, rho_phase, den, zero_mag, zero_phase, var_a, t_a, t_b, t_ab, n_k, var_p, total_a, nv,
                magnitude_weight, phase_weight, EPS)
            # A degenerate pair's field is 0 (docs/loss.md section 2: 0 gradient), so an upstream gradient that is
            # not 0 there (the reduction's uniform one, with a derived class 0) adds nothing. The
            # coefficients of an exactly degenerate pair are 0 already; this also holds where
            # rounding leaves noise in a spectrum that is 0 in exact arithmetic.
            tl.store(coef_ptr + pairs, tl.where(valid, c_a, 0.0), mask=pm)
            tl.store(coef_ptr + n_pairs + pairs, tl.where(valid, c_ab, 0.0), mask=pm)
            tl.store(coef_ptr + 2 * n_pairs + pairs, flat_p.to(dt), mask=pm)
            tl.store(coef_ptr + 3 * n_pairs + pairs, tl.where(valid, 2.0 * c_aa, 0.0), mask=pm)
            tl.store(coef_ptr + 4 * n_pairs + pairs, tl.where(valid, c_re, 0.0), mask=pm)

    @triton.jit
    def _gradient_spectrum(xp, xy, c_a, c_ab, flat, c_p, c_y, dc, INCLUDE_DC: tl.constexpr):
        """The spectrum of dSCC/dp at bins of P and Y (``xp``, ``xy``: the bins' shape, then
        re / im): ``(c_a + c_ab |Y|) P / |P| + c_p P + c_y Y`` (``c_p`` = 2 c_aa, ``c_y`` = c_re),
        the first term 0 where |P| = 0 and, off DC, where p is flat (``flat`` 1: there |P_k| is
        0 up to rounding and P_k / |P_k| := 0, as docs/loss.md section 2 says); the whole DC bin (``dc``) 0 when DC
        is out of K. The coefficients, ``flat`` and ``dc`` are tensors that broadcast against the
        bins' shape (not scalars: they get a re / im axis)."""
        a = tl.sqrt(tl.sum(xp * xp, axis=-1))
        bm = tl.sqrt(tl.sum(xy * xy, axis=-1))
        keep = (a > 0) & (dc | (flat == 0))
        # P / |P| before scaling: bounded by 1 even where |P| is subnormal.
        scale = tl.where(keep, c_a + c_ab * bm, 0.0)
        a_safe = tl.where(keep, a, 1.0)
        field = (xp / tl.expand_dims(a_safe, -1)) * tl.expand_dims(scale, -1)
        field = field + tl.expand_dims(c_p, -1) * xp + tl.expand_dims(c_y, -1) * xy
        if not INCLUDE_DC:
            field = tl.where(tl.expand_dims(dc, -1), 0.0, field)
        return field

    @triton.jit
    def _field_kernel(
        P_ptr, Y_ptr, coef_ptr, n_pairs, n_half, INCLUDE_DC: tl.constexpr, BLOCK: tl.constexpr
    ):
        """Program (tile, pair): P <- the spectrum of dSCC/dp, in place:

            (c_a + c_ab |Y|) P / |P|  +  2 c_aa P  +  c_re Y,

        so that its unscaled inverse transform (DFT^H, ``irfftn`` with ``norm="forward"``) is the
        gradient. The first term is 0 where |P| = 0 and outside DC for a pair whose p is constant
        (``flat``: there |P_k| is 0 up to rounding and P_k / |P_k| := 0, as docs/loss.md section 2 says). The others
        are the spatial terms ``2N c_aa p + N c_re y`` moved into the spectrum (the transform is
        linear and p = DFT^H P / N): no pass over p and y after the transforms, and p is freed
        once transformed. With DC out of K the whole DC bin is 0,
        which is the spatial terms' ``- mean`` (docs/loss.md section 5). ``coef`` holds the pair kernel's
        rows c_a, c_ab, flat, 2 c_aa, c_re (n_pairs each).
        """
        tile = tl.program_id(0)
        pair = tl.program_id(1)
        base = pair.to(tl.int64) * n_half * 2
        k = tile * BLOCK + tl.arange(0, BLOCK)
        m = k < n_half
        offs = base + k[:, None] * 2 + tl.arange(0, 2)[None, :]
        xp = tl.load(P_ptr + offs, mask=m[:, None], other=0.0)
        xy = tl.load(Y_ptr + offs, mask=m[:, None], other=0.0)
        # The pair's coefficients as vectors over the bins (the interpreter's | needs a vector).
        zero = tl.zeros([BLOCK], dtype=xp.dtype)
        field = _gradient_spectrum(
            xp, xy, tl.load(coef_ptr + pair) + zero, tl.load(coef_ptr + n_pairs + pair) + zero,
            tl.load(coef_ptr + 2 * n_pairs + pair) + zero, tl.load(coef_ptr + 3 * n_pairs + pair) + zero,
            tl.load(coef_ptr + 4 * n_pairs + pair) + zero, k == 0, INCLUDE_DC)
        tl.store(P_ptr + offs, field, mask=m[:, None])


    @triton.jit
    def _derived_spectra(P_ptr, Y_ptr, b, k, m, rows, n_chan, n_half, n_vox, Y_SKIP: tl.constexpr):
        """The half spectra of every class of image b at bins k, CP x BLOCK x 2 (class, bin, re/im):
        P of classes 1 on as transformed (P holds B x (C - 1) maps) and P of class 0 derived: the
        softmax over every channel makes the maps sum to one at each voxel, so P_0 = N delta_k -
        sum_{c >= 1} P_c. Y as transformed, or with Y_SKIP (labels checked in range, so the
        one-hot maps sum to one too) Y of class 0 derived the same way from B x (C - 1) maps."""
        ri = tl.arange(0, 2)
        row_ok = rows < n_chan
        bins = k[None, :, None] * 2 + ri[None, None, :]
        derived_rows = (b * (n_chan - 1) + tl.maximum(rows - 1, 0)).to(tl.int64) * n_half * 2
        all_mask = row_ok[:, None, None] & m[None, :, None]
        derived_mask = all_mask & (rows >= 1)[:, None, None]
        xp = tl.load(P_ptr + derived_rows[:, None, None] + bins, mask=derived_mask, other=0.0)
        dc = ((k == 0)[:, None] & (ri == 0)[None, :]).to(xp.dtype) * tl.cast(n_vox, xp.dtype)
        first = (rows == 0)[:, None, None]
        xp = tl.where(first, (dc - tl.sum(xp, axis=0))[None, :, :], xp)
        if Y_SKIP:
            xy = tl.load(Y_ptr + derived_rows[:, None, None] + bins, mask=derived_mask, other=0.0)
            xy = tl.where(first, (dc - tl.sum(xy, axis=0))[None, :, :], xy)
        else:
            y_rows = (b * n_chan + rows).to(tl.int64) * n_half * 2
            xy = tl.load(Y_ptr + y_rows[:, None, None] + bins, mask=all_mask, other=0.0)
        return xp, xy

    @triton.jit
    def _derived_stats_kernel(
        P_ptr,
        Y_ptr,
        part_ptr,
        n_chan,
        n_half,
        w_half,
        n_vox,
        span,
        n_splits,
        LAST_EVEN: tl.constexpr,
        INCLUDE_DC: tl.constexpr,
        Y_SKIP: tl.constexpr,
        CP: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        """Program (split, image): ``_spectral_stats_kernel``'s sums for every class of the image
        at once, with P (and with Y_SKIP Y) of class 0 derived from the others'
        (:func:`_derived_spectra`). Writes
        ``part[(image, class), split]``, the layout the pair kernel reads."""
        split = tl.program_id(0)
        b = tl.program_id(1)
        dt = P_ptr.dtype.element_ty
        rows = tl.arange(0, CP)
        lanes = tl.arange(0, BLOCK)
        t_a = tl.zeros([CP, BLOCK], dtype=dt)
        t_b = tl.zeros([CP, BLOCK], dtype=dt)
        t_ab = tl.zeros([CP, BLOCK], dtype=dt)
        start = split * span
        end = tl.minimum(start + span, n_half)
        for off in range(start, end, BLOCK):
            k = off + lanes
            m = k < end
            xp, xy = _derived_spectra(P_ptr, Y_ptr, b, k, m, rows, n_chan, n_half, n_vox, Y_SKIP)
            a = tl.sqrt(tl.sum(xp * xp, axis=2))
            bm = tl.sqrt(tl.sum(xy * xy, axis=2))
            w = _half_spectrum_weights(k, m, w_half, LAST_EVEN, INCLUDE_DC).to(dt)[None, :]
            wa = w * a
            t_a += wa
            t_b += w * bm
            t_ab += wa * bm
        out = part_ptr + ((b * n_chan + rows) * n_splits + split) * 3
        row_ok = rows < n_chan
        tl.store(out + 0, tl.sum(t_a, axis=1), mask=row_ok)
        tl.store(out + 1, tl.sum(t_b, axis=1), mask=row_ok)
        tl.store(out + 2, tl.sum(t_ab, axis=1), mask=row_ok)

    @triton.jit
    def _derived_field_kernel(
        P_ptr, Y_ptr, coef_ptr, weight_ptr, n_pairs, n_chan, n_half, n_vox,
        INCLUDE_DC: tl.constexpr, Y_SKIP: tl.constexpr, HAS_WEIGHT: tl.constexpr, CP: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        """Program (tile, image): ``_field_kernel``'s spectrum G_c of dSCC_c/dp_c for every class of
        the image, P (and with Y_SKIP Y) of class 0 derived (:func:`_derived_spectra`), written over P as G_c - G_0
        for the classes 1 on. Shifting every class's gradient by the same map leaves the softmax's
        backward unchanged (sum_c p_c = 1) where the upstream gradient is the same for every
        class of the image, so class 0 needs no inverse transform. With HAS_WEIGHT each G_c is
        first multiplied by ``weight[c]`` (a class-weighted loss's weights, carried here so that
        its upstream gradient is the same for every class)."""
        tile = tl.program_id(0)
        b = tl.program_id(1)
        rows = tl.arange(0, CP)
        row_ok = rows < n_chan
        k = tile * BLOCK + tl.arange(0, BLOCK)
        m = k < n_half
        xp, xy = _derived_spectra(P_ptr, Y_ptr, b, k, m, rows, n_chan, n_half, n_vox, Y_SKIP)
        pair = b * n_chan + rows
        # Each class's coefficients as a column (classes x 1), the DC test as a row (1 x bins).
        field = _gradient_spectrum(
            xp, xy, tl.load(coef_ptr + pair, mask=row_ok, other=0.0)[:, None],
            tl.load(coef_ptr + n_pairs + pair, mask=row_ok, other=0.0)[:, None],
            tl.load(coef_ptr + 2 * n_pairs + pair, mask=row_ok, other=0.0)[:, None],
            tl.load(coef_ptr + 3 * n_pairs + pair, mask=row_ok, other=0.0)[:, None],
            tl.load(coef_ptr + 4 * n_pairs + pair, mask=row_ok, other=0.0)[:, None],
            (k == 0)[None, :], INCLUDE_DC)
        if HAS_WEIGHT:
            field = field * tl.load(weight_ptr + rows, mask=row_ok, other=0.0).to(field.dtype)[:, None, None]
        field0 = tl.sum(tl.where((rows == 0)[:, None, None], field, 0.0), axis=0)
        ri = tl.arange(0, 2)
        p_rows = (b * (n_chan - 1) + tl.maximum(rows - 1, 0)).to(tl.int64) * n_half * 2
        offs = p_rows[:, None, None] + k[None, :, None] * 2 + ri[None, None, :]
        mask = ((rows >= 1) & row_ok)[:, None, None] & m[None, :, None]
        tl.store(P_ptr + offs, field - field0[None, :, :], mask=mask)


@functools.lru_cache(maxsize=None)
def _sm_count(index: int | None) -> int:
    return torch.cuda.get_device_properties(index if index is not None else torch.cuda.current_device()).multi_processor_count


#: Stage 1 with the activation on a GPU: values in a tile (channel rows x voxels, so the more
#: channels the fewer voxels) and warps per program. 1024 / 8 builds without spills for 2-32 rows
#: (sm_90, triton 3.6 and 3.9); on the device it runs at a few times its memory traffic's time
#: (bench/RESULTS.md, GPU run 5). The settings ``fft_stage1_values`` / ``fft_stage1_warps``
#: (``scc-fast bench stage1-tune`` times others). ``fft_stage1_channel_threads``: lay a tile's threads down the channel rows first (``CHANNEL_THREADS``): with 4-wide vector
#: loads along the voxels Triton puts a warp's threads along the voxels and the remaining warps
#: down the rows, so the softmax's max and sum over channels cross warps through shared memory
#: every tile (1024 / 8: at 4 rows and at 16, read from the sm_90 TTGIR); without vector loads
#: they stay in a warp (shuffles), at 63-128 registers for 4-32 rows. Unmeasured on a GPU: off
#: until ``scc-fast bench stage1-tune`` says it is faster.


def _stage1_config(device: torch.device, n_chan: int) -> tuple[int, int, int, bool]:
    """(channel rows CP, voxels per tile, warps, threads down the channels first) of stage 1 with
    the activation for C = ``n_chan``. The interpreter costs per operation, not per register:
    larger tiles there."""
    rows = next_power_of_2(n_chan)
    s = _settings.current()
    if device.type == "cuda":
        return rows, max(16, s.fft_stage1_values // rows), s.fft_stage1_warps, s.fft_stage1_channel_threads
    return rows, max(16, 4096 // rows), 4, s.fft_stage1_channel_threads


#: The derived-class kernels (``_derived_stats_kernel``, ``_derived_field_kernel``) hold a tile of
#: every class's complex P and Y bins: values (classes x bins) a tile and warps on a GPU.
DERIVED_VALUES = 1024
DERIVED_WARPS = 8


def _derived_config(device: torch.device, n_chan: int) -> tuple[int, int, int]:
    """(class rows CP, bins per tile, warps) of the derived-class kernels for C = ``n_chan``."""
    rows = max(2, next_power_of_2(n_chan))
    if device.type == "cuda":
        return rows, max(16, DERIVED_VALUES // rows), DERIVED_WARPS
    return rows, max(16, 4096 // rows), 4


def _config(device: torch.device) -> tuple[int, int]:
    """(BLOCK, target number of programs per reduction launch) for this device."""
    if device.type == "cuda":
        return 1024, 8 * _sm_count(device.index)
    # Interpreter: each program instance costs about a millisecond, so few, large programs.
    return 4096, 1


def _splits(n_items: int, n_pairs: int, block: int, target_programs: int, splits: int | None) -> tuple[int, int]:
    """(number of splits of each pair's range, span of one split, a multiple of BLOCK)."""
    tiles = -(-n_items // block)
    if splits is None:
        splits = -(-target_programs // max(n_pairs, 1))
    splits = max(1, min(splits, tiles))
    span = -(-tiles // splits) * block
    return -(-n_items // span), span


def _float32_pair(x: float) -> tuple[float, float]:
    """x as hi + lo, both float32 values (about 48 bits): a kernel's float arguments are float32."""
    hi = struct.unpack("f", struct.pack("f", x))[0]
    return hi, struct.unpack("f", struct.pack("f", x - hi))[0]


#: The pair kernel reads each partial sum as blocks of BP pairs x SB splits, about PAIR_VALUES
#: values, SB up to PAIR_MAX_SPLIT_BLOCK (:func:`_pair_blocks`). Its loop over the splits is a
#: chain of dependent steps in one program per BP pairs: with 32 x 32 blocks, the 528 splits of
#: brats-3d and btcv-3d took 17 steps (bench/RESULTS.md, GPU run 5); 4 x 256 take 3.
PAIR_VALUES = 1024
PAIR_MAX_SPLIT_BLOCK = 256


def _pair_blocks(n_splits: int) -> tuple[int, int]:
    """(pairs BP, splits SB) of the pair kernel's blocks for ``n_splits`` splits: powers of two,
    SB covering the splits up to PAIR_MAX_SPLIT_BLOCK, BP x SB = PAIR_VALUES."""
    sb = min(PAIR_MAX_SPLIT_BLOCK, max(16, next_power_of_2(n_splits)))
    return max(1, PAIR_VALUES // sb), sb


def _check_forward(activation, first_channel, ignore_index, n_chan, per_class, acc, limit, step, labels,
                   derive_first, validate, field_weights) -> None:
    """The ValueError of an option :func:`_forward` cannot compute with the others given."""
    if derive_first and not _derivable(activation, first_channel, ignore_index, n_chan, per_class, acc, limit):
        raise ValueError(
            "derive_first needs softmax over every channel, no ignore_index, float32 and one chunk "
            f"(got activation {activation}, first_channel {first_channel}, ignore_index {ignore_index}, "
            f"{n_chan} classes in chunks of {step}, {acc})"
        )
    if field_weights is not None and (not derive_first or field_weights.numel() != n_chan):
        raise ValueError(
            f"field_weights needs derive_first and one weight per class ({n_chan}); got derive_first={derive_first}, "
            f"{field_weights.numel()} weights"
        )
    if validate and not (activation in (1, 2) and labels):
        raise ValueError(
            "validate needs logits (softmax or sigmoid computed by stage 1) and integer labels "
            f"(got activation {activation}, {'integer labels' if labels else 'a float target'})"
        )


def _narrow_labels(target: torch.Tensor, first_class: int, n_chan: int, block: int) -> torch.Tensor:
    """The labels as int8 channel indices (-1: no channel). The statistics pass reads the labels
    once per class: 1 byte a voxel instead of 8 per class. (With the activation, stage 1 reads
    the labels once for all classes of a tile.)"""
    narrow = torch.empty(target.shape, dtype=torch.int8, device=target.device)
    _narrow_labels_kernel[(-(-target.numel() // block),)](target, narrow, target.numel(), first_class, n_chan,
                                                          BLOCK=block)
    return narrow


def _moments(probs, target, y_view, y_chunk, c0, k, n_vox, check, activation, first_channel, first_class, ignore_index,
             labels, p_skip, y_skip, stage1, block, target_programs, splits, acc):
    """Stage 1 for the chunk of classes c0 .. c0 + k: ``(p_chunk, part, counts, n_sp, flags)``,
    the spatial moments per pair and split, the map p the transform takes (written here with the
    activation, a view of ``probs`` without), and with ``check`` the FLAG_* bits of the checks per
    (image, split). With the activation a program takes one image's tile for every class
    (``_activated_moments_kernel``), without it one pair's (``_spatial_stats_kernel``; labels:
    B x spatial, the same map for every class, channel stride 0)."""
    n_batch, device = probs.shape[0], probs.device
    n_pairs = n_batch * k
    rows, lanes, warps, channel_threads = stage1
    if activation:
        n_sp, span = _splits(n_vox, n_batch, lanes, target_programs, splits)
    else:
        n_sp, span = _splits(n_vox, n_pairs, block, target_programs, splits)
    part = torch.empty(n_pairs, n_sp, 6, dtype=acc, device=device)
    counts = torch.empty(n_pairs, n_sp, dtype=torch.int32, device=device) if labels else part
    flags = None
    y_sc = 0 if labels else y_view.stride(1)
    if activation:
        p_chunk = torch.empty(n_batch, k - p_skip, *probs.shape[2:], dtype=acc, device=device)
        if check:
            flags = torch.empty(n_batch, n_sp, dtype=torch.int32, device=device)
        _activated_moments_kernel[(n_sp, n_batch)](
            probs, target, y_view, y_view.stride(0), y_sc,
            p_chunk, y_chunk, part, counts, flags if check else counts,
            n_vox, probs.shape[1], first_channel, c0, k, first_class,
            0 if ignore_index is None else int(ignore_index), span, n_sp, p_skip, y_skip,
            ACTIVATION=int(activation), LABELS=labels, HAS_IGNORE=labels and ignore_index is not None,
            VALIDATE=check, CP=rows, BLOCK=lanes, CHANNEL_THREADS=channel_threads, num_warps=warps,
        )  # fmt: skip
    else:
        p_chunk = probs[:, c0 : c0 + k]
        _spatial_stats_kernel[(n_pairs, n_sp)](
            p_chunk, probs.stride(0), probs.stride(1), y_view, y_view.stride(0), y_sc, y_chunk, part, counts,
            n_vox, k, first_class + c0, span, n_sp, LABELS=labels, WRITE_Y=labels, BLOCK=block,
        )  # fmt: skip
    return p_chunk, part, counts, n_sp, flags


def _spectral_sums(P_r, Y_r, n_pairs, n_batch, n_chan, n_half, w_half, n_vox, last_even, include_dc, y_skip,
                   derived, block, target_programs, splits, acc):
    """Stage 3, T_a, T_b, T_ab per pair and split: ``(tpart, n_tsp)``. Where class 0 is derived
    (``derived``: the derived kernels' rows, block and warps), a program per split of an image's
    classes."""
    if derived is not None:
        d_rows, d_block, d_warps = derived
        n_tsp, tspan = _splits(n_half, n_batch, d_block, target_programs, splits)
        tpart = torch.empty(n_pairs, n_tsp, 3, dtype=acc, device=P_r.device)
        _derived_stats_kernel[(n_tsp, n_batch)](
            P_r, Y_r, tpart, n_chan, n_half, w_half, n_vox, tspan, n_tsp,
            LAST_EVEN=last_even, INCLUDE_DC=include_dc, Y_SKIP=bool(y_skip), CP=d_rows, BLOCK=d_block,
            num_warps=d_warps,
        )  # fmt: skip
    else:
        n_tsp, tspan = _splits(n_half, n_pairs, block, target_programs, splits)
        tpart = torch.empty(n_pairs, n_tsp, 3, dtype=acc, device=P_r.device)
        _spectral_stats_kernel[(n_pairs, n_tsp)](
            P_r, Y_r, tpart, n_half, w_half, tspan, n_tsp, LAST_EVEN=last_even, INCLUDE_DC=include_dc, BLOCK=block,
        )  # fmt: skip
    return tpart, n_tsp


def _assemble(grad: torch.Tensor | None, g: torch.Tensor, c0: int, n_chan: int) -> torch.Tensor:
    """The gradient of every class, ``g`` (a chunk's, classes c0 on) written into it (made at the
    first chunk)."""
    if grad is None:
        grad = g.new_empty((g.shape[0], n_chan, *g.shape[2:]))
    grad[:, c0 : c0 + g.shape[1]] = g
    return grad


def _field_spectrum(P_r, Y_r, coef, field_weights, n_pairs, n_batch, n_chan, n_half, n_vox, include_dc, y_skip,
                    derived, block) -> None:
    """Stage 5: the gradient's spectrum, in place of P."""
    if derived is not None:
        d_rows, d_block, d_warps = derived
        _derived_field_kernel[(-(-n_half // d_block), n_batch)](
            P_r, Y_r, coef, field_weights.contiguous() if field_weights is not None else coef,
            n_pairs, n_chan, n_half, n_vox,
            INCLUDE_DC=include_dc, Y_SKIP=bool(y_skip), HAS_WEIGHT=field_weights is not None, CP=d_rows,
            BLOCK=d_block, num_warps=d_warps,
        )  # fmt: skip
    else:
        _field_kernel[(-(-n_half // block), n_pairs)](P_r, Y_r, coef, n_pairs, n_half, INCLUDE_DC=include_dc,
                                                      BLOCK=block)


def _forward(probs: torch.Tensor, target: torch.Tensor, first_class: int, include_dc: bool, magnitude_weight: float,
             phase_weight: float, need_grad: bool, *, activation: int = 0, first_channel: int = 0,
             ignore_index: int | None = None, chunk_elements: int | None = None, splits: int | None = None,
             block: int | None = None, derive_first: bool = False, validate: bool = False,
             field_weights: torch.Tensor | None = None):
    """SCC (B x C'), valid (B x C') and, if ``need_grad``, dSCC/dp (B x C' x spatial, contiguous).

    ``probs`` holds the probabilities B x C' x spatial; with ``activation`` (1: softmax over all
    C channels, 2: sigmoid) the logits B x C x spatial, of which channels ``first_channel`` on are
    the loss's, and stage 1 computes p (voxels labelled ``ignore_index``: p = 0, y = 0).
    ``chunk_elements``, ``splits`` and ``block`` override the launch configuration (tests).
    ``derive_first`` (where :func:`derives_first_class`) derives class 0's spectrum from the
    others' (the module's docstring): the gradient is then B x (C - 1) x spatial, dSCC_c/dp_c -
    dSCC_0/dp_0, each term times its ``field_weights`` entry where given. ``validate`` (where
    :func:`validates_in_op`) makes ``scc_loss(validate=True)``'s checks in stage 1 and raises
    their ``ValueError`` after the launches (one device sync); with ``derive_first`` Y of class 0
    is then derived too.
    """
    acc = accumulation_dtype(probs.dtype)
    # Logits are read in their own dtype by the kernel; probabilities are computed in acc.
    probs = probs.contiguous() if activation else probs.to(acc).contiguous()
    labels = not target.is_floating_point()
    target = target.contiguous() if labels else target.to(acc).contiguous()
    device = probs.device
    n_batch = probs.shape[0]
    n_chan = probs.shape[1] - (first_channel if activation else 0)
    spatial = tuple(probs.shape[2:])
    dims = tuple(range(2, probs.dim()))
    n_vox = math.prod(spatial)  # not probs[0, 0].numel(): two select ops, each a dispatch on the host
    w_half = spatial[-1] // 2 + 1
    n_half = n_vox // spatial[-1] * w_half
    default_block, target_programs = _config(device)
    # Stage 1 with the activation holds a tile of every channel (CP rows) in registers
    # (fft_stage1_values), so fewer voxels a tile the more channels.
    rows, lanes, warps, channel_threads = _stage1_config(device, probs.shape[1])
    stage1 = (rows, block or lanes, warps, channel_threads)
    derived = None
    if derive_first:  # the derived kernels' rows, tile and warps
        d_rows, d_block, d_warps = _derived_config(device, n_chan)
        derived = (d_rows, block or d_block, d_warps)
    block = block or default_block

    scc = torch.empty(n_batch, n_chan, dtype=acc, device=device)
    # Triton reads and writes a bool tensor's bytes as int8: the kernels take it without a view.
    valid = torch.empty(n_batch, n_chan, dtype=torch.bool, device=device)
    weights = (*_float32_pair(magnitude_weight), *_float32_pair(phase_weight))
    eps, fmax = float(torch.finfo(acc).eps), float(torch.finfo(acc).max)
    grad = None  # the single chunk's inverse transform, or assembled from the chunks'
    per_class = n_batch * n_vox
    limit = _settings.current().fft_chunk_elements if chunk_elements is None else chunk_elements
    step = max(1, min(n_chan, limit // per_class))
    _check_forward(activation, first_channel, ignore_index, n_chan, per_class, acc, limit, step, labels,
                   derive_first, validate, field_weights)
    p_skip, y_skip = int(derive_first), int(derive_first and validate)
    flags = None  # stage 1's FLAG_* bits per (image, split), where it makes the checks

    class0 = first_class
    if labels and not activation and n_chan > 1 and n_chan <= 127 and target.element_size() > 1:
        target, class0 = _narrow_labels(target, first_class, n_chan, block), 0

    for c0 in range(0, n_chan, step):
        k = min(n_chan, c0 + step) - c0
        n_pairs = n_batch * k
        y_view = target if labels else target[:, c0 : c0 + k]
        y_chunk = torch.empty(n_batch, k - y_skip, *spatial, dtype=acc, device=device) if labels else y_view

        # 1. Spatial moments, and the p and one-hot y the transforms need.
        check = validate and c0 == 0  # the first chunk's stage 1 reads every logit and label
        p_chunk, part, counts, n_sp, chunk_flags = _moments(
            probs, target, y_view, y_chunk, c0, k, n_vox, check, activation, first_channel, class0, ignore_index,
            labels, p_skip, y_skip, stage1, block, target_programs, splits, acc,
        )
        flags = chunk_flags if check else flags

        # 2. Half spectra, y's first: each map is freed as soon as it is transformed, so at most
        # two maps and one spectrum, or one map and two spectra, are alive at once.
        Y = torch.fft.rfftn(y_chunk, dim=dims)
        del y_chunk
        P = torch.fft.rfftn(p_chunk, dim=dims)
        del p_chunk
        P_r = torch.view_as_real(P)
        Y_r = torch.view_as_real(Y)

        # 3. T_a, T_b, T_ab.
        tpart, n_tsp = _spectral_sums(P_r, Y_r, n_pairs, n_batch, n_chan, n_half, w_half, n_vox,
                                      spatial[-1] % 2 == 0, include_dc, y_skip, derived, block, target_programs,
                                      splits, acc)

        # 4. Per-pair sums by Parseval, SCC, valid and the gradient's coefficients: one launch.
        coef = torch.empty(5, n_pairs, dtype=acc, device=device) if need_grad else tpart
        pair_block, split_block = _pair_blocks(max(n_sp, n_tsp))
        _pair_kernel[(-(-n_pairs // pair_block),)](
            part, counts, tpart, scc, valid, coef,
            n_pairs, n_sp, n_tsp, k, n_chan, c0, n_vox, *weights,
            LABELS=labels, INCLUDE_DC=include_dc, NEED_GRAD=need_grad, EPS=eps, FMAX=fmax, BP=pair_block, SB=split_block,
        )  # fmt: skip
        del part, counts, tpart
        if not need_grad:
            del P, Y, P_r, Y_r
            continue

        # 5. The gradient's spectrum, in place of P; Y is not needed after it.
        _field_spectrum(P_r, Y_r, coef, field_weights, n_pairs, n_batch, n_chan, n_half, n_vox, include_dc, y_skip,
                        derived, block)
        del Y, Y_r, P_r

        # 6. Inverse transform, unscaled (the coefficients carry no N): dSCC/dp of the chunk.
        g = torch.fft.irfftn(P, s=spatial, dim=dims, norm="forward")
        del P
        # (one chunk: B x (C - 1) x spatial where class 0 is derived)
        grad = g if k == n_chan else _assemble(grad, g, c0, n_chan)
        del g
    if flags is not None:
        # After every launch, so that the device has the whole forward queued while the host waits.
        raise_flagged(flags, target, probs.shape[1], ignore_index)
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
    """Per-pair SCC and the non-degenerate mask; see :mod:`scc_fast.backends` for the contract.

    Args:
        probs: B x C' x H x W or B x C' x D x H x W, float (computed in float32, float64 for float64).
        target: integer labels B x spatial (label ``first_class + j`` is channel ``j``, others
            such as -1 are 0 everywhere) or a float target B x C' x spatial.

    Returns:
        ``(scc, valid)``, both B x C'; scc is differentiable in ``probs``.
    """
    return probability_correlation("triton_fft", probs, target, first_class=first_class, include_dc=include_dc,
                                   magnitude_weight=magnitude_weight, phase_weight=phase_weight)


def _probs_field(probs, target, first_class, include_dc, magnitude_weight, phase_weight, need_grad):
    """``(scc, valid, field)`` of probabilities: field = dSCC/dp (B x C' x spatial, or (0,)), in
    float32 (float64 for float64 ``probs``)."""
    if _IMPORT_ERROR is not None:
        raise RuntimeError(_IMPORT_ERROR)
    with torch.no_grad():
        scc, valid, grad = _forward(probs, target, first_class, include_dc, magnitude_weight, phase_weight, need_grad)
    return scc, valid, grad if grad is not None else scc.new_empty((0,))


def activation_in_kernel() -> bool:
    """With the activation fused (:mod:`scc_fast.backends.activation`), whether stage 1 computes
    softmax / sigmoid from the logits itself (:func:`field`): one launch instead of
    torch's softmax, the label narrowing and the statistics pass, and no B x C probability tensor
    beside the chunk's. The setting ``fft_activation_in_kernel`` (False: the probabilities are
    computed first with torch, for A/B comparisons)."""
    return _settings.current().fft_activation_in_kernel

#: The most channels (C, background included) stage 1 takes with the activation: it holds a tile
#: of every channel's logits. Wider inputs get their probabilities from torch first.
MAX_ACTIVATION_CHANNELS = 32


#: Derive class 0's spectrum from the other classes' where the softmax runs over every channel
#: (the maps sum to one at each voxel): one map fewer transformed per image and one fewer
#: inverse-transformed (a quarter of those transforms at 4 classes, half at 2), and the forward's
#: peak one class's map lower (p of C - 1 classes, y and Y instead of p, Y and P). Float32 rounding of the others' spectra then lands on
#: class 0: where that class has a tiny share of the probability mass everywhere (0.03% on average,
#: a network that predicts almost no background) its gradient is about 10x less accurate (4e-5
#: relative instead of 4e-6; at 0.5% and above as accurate as the transform). On by default;
#: The setting ``fft_derive=False`` turns it off.


def derives_first_class(x: torch.Tensor, activation: str | None, first_channel: int, ignore_index: int | None) -> bool:
    """Whether :func:`field` can derive class 0's spectrum for ``x`` (B x C x spatial
    logits) with these settings: softmax over every channel (``first_channel`` 0), no
    ``ignore_index``, stage 1 computing p (at most :data:`MAX_ACTIVATION_CHANNELS` channels, not
    float64) and one chunk of classes. Its gradient is then only right for an upstream gradient
    that is the same for every class of an image: :func:`loss` asks for it with reduction
    "mean" or "sum", whose derivative :func:`~scc_fast.backends.activation.fused_loss` makes
    uniform, the class weights passed as ``field_weights``)."""
    if not (_settings.current().fft_derive and activation_in_kernel()):
        return False
    code = 1 if activation == "softmax" else 0
    per_class = x.shape[0] * math.prod(x.shape[2:])
    return _derivable(code, first_channel, ignore_index, x.shape[1], per_class, accumulation_dtype(x.dtype),
                      _settings.current().fft_chunk_elements)


def _derivable(activation: int, first_channel: int, ignore_index, n_chan: int, per_class: int, acc: torch.dtype,
               limit: int) -> bool:
    """Whether class 0 can be derived: softmax (code 1) over every channel, no ignored label, 2 to
    MAX_ACTIVATION_CHANNELS classes computed in float32, all in one chunk of ``limit`` elements
    (``per_class`` = B x voxels each)."""
    return (activation == 1 and first_channel == 0 and ignore_index is None and n_chan >= 2
            and _stage1_holds(n_chan, acc) and n_chan * per_class <= limit)


def _stage1_holds(n_chan: int, acc: torch.dtype) -> bool:
    """Whether stage 1 can compute p of ``n_chan`` channels (a tile of every channel's logits in
    registers: at most MAX_ACTIVATION_CHANNELS) in ``acc`` (it computes in float32)."""
    return n_chan <= MAX_ACTIVATION_CHANNELS and acc == torch.float32


def _stage1_computes_p(x: torch.Tensor) -> bool:
    """Whether :func:`field` has stage 1 compute p from ``x`` (B x C x spatial logits),
    else torch computes p first."""
    return activation_in_kernel() and _stage1_holds(x.shape[1], accumulation_dtype(x.dtype))


def validates_in_op(
    *, activation: str | None, labels: bool, first_channel: int, ignore_index: int | None, x: torch.Tensor | None = None
) -> bool:
    """Whether :func:`field` makes ``scc_loss(validate=True)``'s checks itself for the
    logits ``x``: the first chunk's stage 1 reads every logit and label anyway, so with softmax or
    sigmoid and integer labels (any ``first_channel`` and ``ignore_index``) it flags a label
    outside the classes (other than ``ignore_index``) or a NaN/Inf logit as it goes, and the error
    is raised after the forward's launches (one device sync where separate checks, :func:`scc_fast._checks.check_values`, take
    two syncs and passes of their own over the labels and logits). Where class 0 is derived
    (:func:`derives_first_class`), its target spectrum is then derived too: the one-hot maps of
    labels in range sum to one. (A float target is checked by separate checks: stage 1 reads
    only its chunk's channels.)"""
    return (activation in ("softmax", "sigmoid") and labels and x is not None and _stage1_computes_p(x)
            and unsupported_reason(x, x) is None)


def settings() -> dict[str, object]:
    """The settings in force (``scc-fast backends`` prints them): whether class 0 under softmax is
    derived from the others' spectra, whether stage 1 applies the softmax/sigmoid, the elements
    per chunk of classes and stage 1's tile."""
    s = _settings.current()
    return {
        "derive_first_class": s.fft_derive,
        "activation_in_kernel": activation_in_kernel(),
        "chunk_elements": s.fft_chunk_elements,
        "stage1_values": s.fft_stage1_values,
        "stage1_warps": s.fft_stage1_warps,
        "stage1_channel_threads": s.fft_stage1_channel_threads,
    }


def field(x: torch.Tensor, target: torch.Tensor, request: FieldRequest, field_weights=None):
    """``(scc, valid, field)`` (:class:`scc_fast.backends._protocol.FusedBackend`) of
    ``activation(x)`` over channels ``first_channel`` on, voxels labelled ``ignore_index``
    counted as p = 0 and target 0, p computed by stage 1 where it can (:func:`activation_in_kernel`,
    at most :data:`MAX_ACTIVATION_CHANNELS` channels, not float64), by torch first otherwise.
    field = dSCC/dp (B x C' x spatial float32, or (0,)); with ``derive_first`` (where
    :func:`derives_first_class`) B x (C' - 1) x spatial, the classes 1 on less class 0's
    (:func:`_forward`), each class's multiplied by its ``field_weights`` entry first where given.
    ``validate`` (where :func:`validates_in_op`): stage 1 makes ``scc_loss(validate=True)``'s
    checks and their ``ValueError`` is raised here."""
    r = request
    if not (r.activation and activation_in_kernel()):
        return probability_field(_probs_field, x, target, r)
    if _IMPORT_ERROR is not None:
        raise RuntimeError(_IMPORT_ERROR)
    reason = unsupported_reason(x, target)
    if reason is not None:
        raise RuntimeError(f"backend 'triton_fft' cannot run: {reason}")
    if field_weights is not None and not r.derive_first:
        raise ValueError("field_weights are multiplied into a derived field: they need derive_first=True")
    if r.validate and not _stage1_computes_p(x):
        raise ValueError(
            f"validate=True needs stage 1 to compute p (at most {MAX_ACTIVATION_CHANNELS} channels, not float64, "
            f"activation_in_kernel); got {x.shape[1]} channels of {x.dtype}"
        )
    if not r.derive_first and not _stage1_computes_p(x):
        # Too many channels for one tile, or float64 (stage 1 computes in float32).
        return probability_field(_probs_field, x.to(accumulation_dtype(x.dtype)), target, r)
    with torch.no_grad():
        scc, valid, grad = _forward(
            x, target, r.first_class, *r.coefficients(), r.need_grad, activation=r.activation,
            first_channel=r.first_channel, ignore_index=r.ignore_index, derive_first=r.derive_first,
            validate=r.validate, field_weights=field_weights,
        )
    return with_no_aux(scc, valid, grad if grad is not None else scc.new_empty((0,)))


# The registered op's backward and fake implementation (scc_fast.backends.activation).
backward, fake = field_backward, field_fake


# The activation fused around field (scc_fast.backends.activation).
activated_correlation = fused_entry("triton_fft", sys.modules[__name__])


def loss(x: torch.Tensor, target: torch.Tensor, options: LossOptions) -> torch.Tensor:
    """The loss (:class:`scc_fast.backends._protocol.Backend`): the activation computed by stage 1
    (:func:`activation_in_kernel`), ``validate``'s checks there too (:func:`validates_in_op`), and
    class 0 derived from the others for the mean and the sum (:func:`derives_first_class`)."""
    o = options
    in_kernel = o.activation is not None and activation_in_kernel()
    x = x if in_kernel else to_accumulation(x)
    labels = not target.is_floating_point()
    checks_in_op = o.validate and validates_in_op(
        activation=o.activation, labels=labels, first_channel=o.first_channel, ignore_index=o.ignore_index, x=x
    )
    derive_first = o.reduction != "none" and derives_first_class(x, o.activation, o.first_channel, o.ignore_index)
    outside = o.activation is not None and not kernel_backward(x, "triton_fft")  # float64: no backward kernel
    return fused_loss("triton_fft", x, target, o, in_kernel=in_kernel, checks_in_op=checks_in_op,
                      derive_first=derive_first, activation_outside=outside)
