"""The loss's reduction over (image, class) pairs: ``1 - scc`` over the valid pairs, class-weighted,
reduced, with a backward of one product.

The loss is linear in ``scc``, so its derivative (``-w / total`` for the mean, ``-w`` otherwise,
``w`` = valid x class weight) is computed with the forward and saved. With ``uniform_grad`` the
derivative leaves out the valid factor and the class weight, the same value for every pair
(``-1 / total``, ``-1``), which backend "triton_fft" needs where it derives class 0's field from the
others': its backward carries both (a degenerate pair's field is zero, and the class weights are
multiplied into the field). On a GPU the forward is one
Triton launch (:mod:`scc_fast._reduction_kernel`) instead of about ten small torch ops, and the
backward one product instead of autograd's chain through the reduction: the fast backends are
host-bound on a GPU, where every op costs a launch. Elsewhere (CPU, float64, torch.compile, which
fuses the ops itself) the same formula runs as torch ops.
"""

from __future__ import annotations

import importlib.util

import torch

from ._numerics import plain_eager

__all__ = ["loss_and_derivative", "pair_loss"]

_HAVE_TRITON = importlib.util.find_spec("triton") is not None


def _use_kernel(scc: torch.Tensor) -> bool:
    """The Triton kernel for float32 CUDA tensors in eager mode (no tracing, no dispatch mode)."""
    return _HAVE_TRITON and scc.is_cuda and scc.dtype == torch.float32 and plain_eager(scc)


def pair_loss_torch(
    scc: torch.Tensor,
    valid: torch.Tensor,
    class_weights: torch.Tensor | None,
    reduction: str,
    uniform_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, dloss/dscc)`` with torch ops; the contract of :func:`scc_fast._reduction_kernel.pair_loss`."""
    loss = torch.where(valid, 1.0 - scc, 0.0)
    pair_w = valid.to(scc.dtype)
    grad_w = torch.full_like(scc, -1.0) if uniform_grad else None
    if class_weights is not None:
        cw = class_weights.to(scc.dtype)
        loss = loss * cw
        pair_w = pair_w * cw
    if reduction == "mean":
        total = pair_w.sum()
        total = torch.where(total > 0, total, 1.0)
        return loss.sum() / total, grad_w.div_(total) if uniform_grad else pair_w.div_(total).neg_()
    return (loss.sum() if reduction == "sum" else loss), grad_w if uniform_grad else pair_w.neg_()


def loss_and_derivative(
    scc: torch.Tensor,
    valid: torch.Tensor,
    class_weights: torch.Tensor | None,
    reduction: str,
    uniform_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, dloss/dscc)`` without autograd: the Triton kernel for float32 CUDA tensors in eager
    mode, torch ops elsewhere (arguments as :func:`pair_loss`)."""
    if _use_kernel(scc):
        from ._reduction_kernel import pair_loss as kernel

        return kernel(scc, valid, class_weights, reduction, uniform_grad=uniform_grad)
    return pair_loss_torch(scc, valid, class_weights, reduction, uniform_grad)


class _PairLoss(torch.autograd.Function):
    # forward takes ctx (no separate setup_context): apply then skips binding the arguments to
    # forward's signature with inspect.
    @staticmethod
    def forward(ctx, scc, valid, class_weights, reduction, uniform_grad):
        loss, dloss_dscc = loss_and_derivative(scc, valid, class_weights, reduction, uniform_grad)
        ctx.save_for_backward(dloss_dscc)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        (dloss_dscc,) = ctx.saved_tensors
        return grad_loss * dloss_dscc, None, None, None, None


def pair_loss(
    scc: torch.Tensor,
    valid: torch.Tensor,
    class_weights: torch.Tensor | None,
    reduction: str,
    uniform_grad: bool = False,
) -> torch.Tensor:
    """The loss from per-pair ``scc`` and ``valid`` (both B x C'), differentiable in ``scc``.

    Args:
        scc: per-pair SCC, float32 or float64. A degenerate pair's value is ignored (even NaN).
        valid: bool, False for degenerate pairs (0 loss, 0 gradient, left out of the mean).
        class_weights: one weight per class (C'), or None.
        reduction: ``"none"`` (B x C'), ``"sum"`` or ``"mean"`` over the valid pairs' weights
            (0, still in the graph, when every pair is degenerate).
        uniform_grad: the derivative by ``scc`` without the valid factor and the class weight:
            ``-1 / total`` (mean, total the valid pairs' weights) or ``-1`` for every pair. Only for
            a ``scc`` whose backward carries them: degenerate pairs with a zero gradient and the
            class weights in the gradient (backend "triton_fft"'s derived class 0; the reference
            does neither).
    """
    return _PairLoss.apply(scc, valid, class_weights, reduction, uniform_grad)
