"""Autograd of the registered ops that return ``(scc, valid, field)`` with ``field = dSCC/dprobs``
computed in the forward call: backward is the field scaled by each pair's upstream gradient.
Shared by the Triton ops (``triton_correlation_2d``/``_2d_split``/``_3d``, ``triton_fft_correlation``)."""

from __future__ import annotations

from typing import Callable

import torch

from .._numerics import refuse_double_backward


def field_scaling_autograd(backend: str, n_inputs: int) -> tuple[Callable, Callable]:
    """``(setup_context, backward)`` for ``op.register_autograd``.

    The op's first input is ``probs`` and it has ``n_inputs`` inputs; its outputs are
    ``(scc B x C', valid B x C', field B x C' x spatial or (0,) without gradient)``. Only the
    field is saved; ``dL/dprobs = field * grad_scc[b, c]`` over every spatial dim, in the dtype
    of ``probs``.
    """

    def setup_context(ctx, inputs, output):
        ctx.probs_dtype = inputs[0].dtype
        ctx.save_for_backward(output[2])
        ctx.mark_non_differentiable(output[1], output[2])

    def backward(ctx, grad_scc, grad_valid, grad_field):
        refuse_double_backward(backend)
        (field,) = ctx.saved_tensors
        if field.numel() == 0:
            raise RuntimeError(f"scc_fast {backend} op: backward called but the forward ran with need_grad=False")
        upstream = grad_scc.to(field.dtype).reshape(tuple(grad_scc.shape) + (1,) * (field.dim() - 2))
        return ((field * upstream).to(ctx.probs_dtype),) + (None,) * (n_inputs - 1)

    return setup_context, backward
