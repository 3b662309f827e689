"""Triton kernels of :mod:`scc_fast.backends.activation`: the backward pass (upstream gradients and the
activation's Jacobian in one pass, p recomputed from the input), and the per-voxel statistics from
which backend "triton" computes p inside its own kernels. Imported only when they run."""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .._grid import cdiv, next_power_of_2

__all__ = ["activation_backward", "activation_stats"]


@triton.jit
def _online_softmax_step(m, x):
    """One channel's logits x into the running max m over channels: ``(m', alpha, e)`` with the
    running sums' rescale ``alpha = exp(m - m')`` and ``e = exp(x - m')``. A logit of -inf
    adds 0, also while every logit so far is -inf (the shift is then 0, not -inf - -inf)."""
    m_new = tl.maximum(m, x)
    shift = tl.where(m_new == -float("inf"), 0.0, m_new)
    return m_new, tl.exp(m - shift), tl.exp(x - shift)


@triton.jit
def _softmax_max_sum(x_img, n_chan, n_vox, offs, mask, BLOCK: tl.constexpr):
    """Per voxel of a block: the max m over channels 0 .. n_chan - 1 of one image's logits, and
    sum_c exp(x_c - m), in one pass over the channels."""
    m = tl.full([BLOCK], -float("inf"), tl.float32)
    s = tl.zeros([BLOCK], tl.float32)
    for c in range(0, n_chan):
        m, alpha, e = _online_softmax_step(m, tl.load(x_img + c * n_vox + offs, mask=mask, other=0.0).to(tl.float32))
        s = s * alpha + e
    return m, s


@triton.jit
def _activation_backward_kernel(
    x_ptr, field_ptr, up_ptr, scale_ptr, label_ptr, out_ptr,
    n_vox, n_chan, first_channel, ignore_index, up_skip,
    ACTIVATION: tl.constexpr, HAS_IGNORE: tl.constexpr, HAS_SCALE: tl.constexpr, BLOCK: tl.constexpr,
):
    """One block of voxels of one image: p recomputed from x over all channels, then
    dL/dx for every channel (formulas in scc_fast.backends.activation). The upstream gradient of
    the field's channel j of image b is ``up[b, up_skip + j]`` (up: B x (n_loss + up_skip)),
    times ``scale[0]`` with HAS_SCALE (the loss's gradient by a reduction's one value: a torch
    multiplication, a launch of its own, less)."""
    b = tl.program_id(1)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_vox
    n_loss = n_chan - first_channel
    x_img = x_ptr + b * n_chan * n_vox
    f_img = field_ptr + b * n_loss * n_vox
    o_img = out_ptr + b * n_chan * n_vox
    keep = tl.full([BLOCK], 1.0, tl.float32)
    if HAS_IGNORE:
        lab = tl.load(label_ptr + b * n_vox + offs, mask=mask, other=0)
        keep = tl.where(lab == ignore_index, 0.0, 1.0)
    up_img = up_ptr + b * (n_loss + up_skip) + up_skip - first_channel  # + c: channel c's upstream
    up_scale = 1.0
    if HAS_SCALE:
        up_scale = tl.load(scale_ptr).to(tl.float32)
    if ACTIVATION == 1:
        # Pass 1: the max m, s = sum_c exp(x_c - m) and d = sum_c exp(x_c - m) g_c (g_c = u_c f_c,
        # loss channels only) together, rescaled as m grows (online softmax): x is read twice,
        # not four times as with separate max, sum and dot passes (those took 2.4x the kernel's
        # memory traffic at btcv-3d: bench/RESULTS.md, GPU run 5); the field is read twice either way.
        # The channels before the loss's first take part in m and s only (d stays 0).
        m, s = _softmax_max_sum(x_img, first_channel, n_vox, offs, mask, BLOCK)
        dot = tl.zeros([BLOCK], tl.float32)
        for c in range(first_channel, n_chan):
            m, alpha, e = _online_softmax_step(m, tl.load(x_img + c * n_vox + offs, mask=mask, other=0.0).to(tl.float32))
            u = tl.load(up_img + c).to(tl.float32) * up_scale
            f = tl.load(f_img + (c - first_channel) * n_vox + offs, mask=mask, other=0.0).to(tl.float32)
            s = s * alpha + e
            dot = dot * alpha + e * (u * f)
        # Pass 2: p_c = keep exp(x_c - m) / s (so an ignored voxel gets 0 in every channel) and
        # dL/dx_c = p_c (g_c - sum_k p_k g_k).
        shift = tl.where(m == -float("inf"), 0.0, m)
        scale = keep / s
        dot = dot * scale
        for c in range(0, first_channel):
            p = tl.exp(tl.load(x_img + c * n_vox + offs, mask=mask, other=0.0).to(tl.float32) - shift) * scale
            tl.store(o_img + c * n_vox + offs, (-p * dot).to(out_ptr.dtype.element_ty), mask=mask)
        for c in range(first_channel, n_chan):
            p = tl.exp(tl.load(x_img + c * n_vox + offs, mask=mask, other=0.0).to(tl.float32) - shift) * scale
            u = tl.load(up_img + c).to(tl.float32) * up_scale
            f = tl.load(f_img + (c - first_channel) * n_vox + offs, mask=mask, other=0.0).to(tl.float32)
            tl.store(o_img + c * n_vox + offs, (p * (u * f - dot)).to(out_ptr.dtype.element_ty), mask=mask)
    else:
        for c in range(0, first_channel):
            tl.store(o_img + c * n_vox + offs, tl.zeros([BLOCK], tl.float32).to(out_ptr.dtype.element_ty),
                     mask=mask)
        for c in range(first_channel, n_chan):
            u = tl.load(up_img + c).to(tl.float32) * up_scale
            f = tl.load(f_img + (c - first_channel) * n_vox + offs, mask=mask, other=0.0).to(tl.float32)
            g = u * f * keep
            if ACTIVATION == 2:
                xs = tl.load(x_img + c * n_vox + offs, mask=mask, other=0.0).to(tl.float32)
                sg = 1.0 / (1.0 + tl.exp(-xs))
                g = g * sg * (1.0 - sg)
            tl.store(o_img + c * n_vox + offs, g.to(out_ptr.dtype.element_ty), mask=mask)


def activation_backward(x, field, grad_scc, target, activation, first_channel, ignore_index, skip=0, scale=None):
    """dL/dx in one launch: see scc_fast.backends.activation for the formula. With ``skip`` 1 the
    field leaves out loss channel 0 (a derived class 0): that channel is taken as one outside the
    loss, and grad_scc is read from column 1 (no copy of its columns). ``scale``, a one-element
    tensor or None, multiplies every upstream gradient (read in the kernel, in float32)."""
    n_batch, n_chan = x.shape[:2]
    n_vox = math.prod(x.shape[2:])
    x = x.contiguous()
    field = field.contiguous()
    out = torch.empty_like(x)
    # The interpreter's cost per program instance hardly depends on its size: few, large blocks
    # (measured: bench/RESULTS.md, 'Figures moved out of the code's comments').
    block = min(next_power_of_2(n_vox), 8192) if x.device.type == "cpu" else 1024
    labels = target.contiguous() if ignore_index is not None else x  # any pointer when unused
    up = grad_scc.contiguous()  # read as float32 by the kernel: no conversion launched here
    grid = (cdiv(n_vox, block), n_batch)
    _activation_backward_kernel[grid](
        x, field, up, scale if scale is not None else up, labels, out,
        n_vox, n_chan, first_channel + skip, 0 if ignore_index is None else int(ignore_index), skip,
        ACTIVATION=activation, HAS_IGNORE=ignore_index is not None, HAS_SCALE=scale is not None, BLOCK=block,
    )
    return out


@triton.jit
def _activation_stats_kernel(
    x_ptr, label_ptr, out_ptr, n_vox, n_chan, n_batch, ignore_index,
    ACTIVATION: tl.constexpr, HAS_IGNORE: tl.constexpr, BLOCK: tl.constexpr,
):
    """One block of voxels of one image: m (the max over channels) and r = keep / sum_c exp(x_c - m)
    for softmax; m = 0 and r = keep for sigmoid (keep = 0 at an ignored voxel, else 1)."""
    b = tl.program_id(1)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_vox
    keep = tl.full([BLOCK], 1.0, tl.float32)
    if HAS_IGNORE:
        lab = tl.load(label_ptr + b * n_vox + offs, mask=mask, other=0)
        keep = tl.where(lab == ignore_index, 0.0, 1.0)
    m = tl.zeros([BLOCK], tl.float32)
    r = keep
    if ACTIVATION == 1:
        m, s = _softmax_max_sum(x_ptr + b * n_chan * n_vox, n_chan, n_vox, offs, mask, BLOCK)
        r = keep / s
    tl.store(out_ptr + b * n_vox + offs, m, mask=mask)
    tl.store(out_ptr + (n_batch + b) * n_vox + offs, r, mask=mask)


def activation_stats(x, target, activation, ignore_index):
    """2 x B x spatial float32 (m, r) of ``x`` (B x C x spatial logits) in one launch: p_c =
    exp(x_c - m) r (softmax, ``activation`` 1) or r / (1 + exp(-x_c)) (sigmoid, 2), and 0 at
    voxels labelled ``ignore_index`` (integer ``target``)."""
    n_batch, n_chan = x.shape[:2]
    n_vox = math.prod(x.shape[2:])
    x = x.contiguous()
    out = torch.empty((2, n_batch) + tuple(x.shape[2:]), dtype=torch.float32, device=x.device)
    block = min(next_power_of_2(n_vox), 8192) if x.device.type == "cpu" else 1024
    labels = target.contiguous() if ignore_index is not None else x  # any pointer when unused
    grid = (cdiv(n_vox, block), n_batch)
    _activation_stats_kernel[grid](
        x, labels, out, n_vox, n_chan, n_batch, 0 if ignore_index is None else int(ignore_index),
        ACTIVATION=activation, HAS_IGNORE=ignore_index is not None, BLOCK=block,
    )
    return out
