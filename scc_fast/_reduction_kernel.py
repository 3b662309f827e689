"""Triton kernel of :mod:`scc_fast._reduction`: the loss's reduction over the (image, class) pairs
and its derivative in one launch. Imported only when it runs."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._grid import next_power_of_2

__all__ = ["pair_loss"]

#: Reduction codes of the kernel.
REDUCTIONS = {"none": 0, "sum": 1, "mean": 2}


@triton.jit
def _pair_weights(valid_ptr, weight_ptr, offs, mask, n_classes, HAS_WEIGHT: tl.constexpr):
    """(valid, w) of a block of pairs: w = valid x the weight of class ``offs % n_classes``."""
    keep = (tl.load(valid_ptr + offs, mask=mask, other=0) != 0) & mask
    w = tl.where(keep, 1.0, 0.0)
    if HAS_WEIGHT:
        w = w * tl.load(weight_ptr + offs % n_classes, mask=mask, other=0.0).to(tl.float32)
    return keep, w


@triton.jit
def _grad_weights(w, mask, UNIFORM_GRAD: tl.constexpr):
    """The pairs' weights in the derivative: ``w`` (valid x class weight), or with UNIFORM_GRAD 1
    for every pair (the backward carries the valid factor and the class weights)."""
    g = w
    if UNIFORM_GRAD:
        g = tl.where(mask, 1.0, 0.0)
    return g


@triton.jit
def _pair_loss_kernel(
    scc_ptr, valid_ptr, weight_ptr, loss_ptr, dscc_ptr, n_pairs, n_classes,
    HAS_WEIGHT: tl.constexpr, REDUCTION: tl.constexpr, UNIFORM_GRAD: tl.constexpr, BLOCK: tl.constexpr,
):
    """One program for every pair: loss_i = w_i (1 - scc_i) where valid (0 elsewhere, a NaN scc of
    a degenerate pair included), w_i = valid_i * the weight of class i % n_classes; reduced by
    REDUCTION (0 none, 1 sum, 2 mean over sum w_i, 0 if that is 0), and dloss/dscc_i = -w_i
    (/ sum w_i for the mean); with UNIFORM_GRAD -1 (/ sum w_i) instead of -w_i for every pair, valid
    or not, whatever its class weight."""
    loss_acc = tl.zeros([BLOCK], tl.float32)
    w_acc = tl.zeros([BLOCK], tl.float32)
    for start in range(0, n_pairs, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < n_pairs
        keep, w = _pair_weights(valid_ptr, weight_ptr, offs, mask, n_classes, HAS_WEIGHT)
        s = tl.load(scc_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        loss = tl.where(keep, (1.0 - s) * w, 0.0)
        if REDUCTION == 0:
            tl.store(loss_ptr + offs, loss, mask=mask)
        if REDUCTION != 2:
            tl.store(dscc_ptr + offs, -_grad_weights(w, mask, UNIFORM_GRAD),
                     mask=mask)
        loss_acc += loss
        w_acc += w
    if REDUCTION == 1:
        tl.store(loss_ptr, tl.sum(loss_acc, axis=0))
    if REDUCTION == 2:
        total = tl.sum(w_acc, axis=0)
        total = tl.where(total > 0, total, 1.0)
        tl.store(loss_ptr, tl.sum(loss_acc, axis=0) / total)
        for start in range(0, n_pairs, BLOCK):  # the derivative needs the total: a second, short pass
            offs = start + tl.arange(0, BLOCK)
            mask = offs < n_pairs
            _, w = _pair_weights(valid_ptr, weight_ptr, offs, mask, n_classes, HAS_WEIGHT)
            w = _grad_weights(w, mask, UNIFORM_GRAD)
            tl.store(dscc_ptr + offs, -w / total, mask=mask)


def pair_loss(
    scc: torch.Tensor,
    valid: torch.Tensor,
    class_weights: torch.Tensor | None,
    reduction: str,
    block: int = 1024,
    uniform_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, dloss/dscc)`` of float32 ``scc`` (B x C'), ``valid`` (B x C' bool) and optional class
    weights (C', any float dtype); ``loss`` is B x C' for ``"none"``, else a scalar. With
    ``uniform_grad`` the derivative leaves out the valid factor and the class weights
    (:func:`scc_fast._reduction.pair_loss`)."""
    scc = scc.contiguous()
    n_pairs = scc.numel()
    loss = torch.empty_like(scc) if reduction == "none" else scc.new_empty(())
    dscc = torch.empty_like(scc)
    weight = class_weights.contiguous() if class_weights is not None else scc
    block = min(block, max(16, next_power_of_2(n_pairs)))
    _pair_loss_kernel[(1,)](
        scc, valid.contiguous(), weight, loss, dscc, n_pairs, max(1, scc.shape[-1]),
        HAS_WEIGHT=class_weights is not None, REDUCTION=REDUCTIONS[reduction], UNIFORM_GRAD=uniform_grad,
        BLOCK=block,
    )  # fmt: skip
    return loss, dscc
