"""The activation (softmax / sigmoid), background drop and ignore mask around a backend, with
the probabilities never kept for backward.

Backends compute the gradient field ``dSCC/dp`` in their forward call. Applied outside, the
activation makes autograd keep the B x C x spatial probabilities for the activation's backward,
and backward runs three full-size passes (field x upstream, softmax backward, then the input
gradient). Here one registered op, ``torch.ops.scc_fast.activated_correlation``, computes the
probabilities, hands them to the backend's ``correlation_field`` and keeps only the input (the
caller's tensor, no new memory) and the field; the probabilities are freed before it returns.
Its backward is ``torch.ops.scc_fast.activation_backward``: one pass that recomputes p from the
input and applies the upstream gradients and the activation's Jacobian,

    softmax: dL/dx_c = keep * p_c (g_c - sum_k p_k g_k),   g_c = grad_scc[b, c] * field_c
    sigmoid: dL/dx_c = keep * g_c s_c (1 - s_c),            none: dL/dx_c = keep * g_c

(g_c = 0 for a dropped background channel; keep = 0 at ignored voxels). That pass is one Triton
kernel, used on CUDA (float32 and narrower) and, for the Triton backends, on CPU under
``TRITON_INTERPRET=1``. Elsewhere (CPU torch backend, float64) the activation is applied outside
as usual: written with torch ops the fused backward is no leaner than autograd's (measured on the
2-core CPU, 8x9x224²: slower, and no lower peak). The torch-ops version of the pass stays as the
op's fallback and as the kernel's check in the tests. The native CPU operator does the same inside its own C++ code
(:mod:`scc_fast.backends.native`).

A backend opts in by providing ``correlation_field(probs, target, first_class, include_dc,
magnitude_weight, phase_weight, need_grad) -> (scc, valid, field)`` (field float32, float64
for float64 probs; shape (0,) when not ``need_grad``) and an ``activated_correlation`` that
calls :func:`activated_correlation` with its name.
"""

from __future__ import annotations

import os

import torch

from .._numerics import accumulation_dtype, refuse_double_backward

try:  # Triton is optional: without it the backward pass is written with torch ops.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the installation
    triton = None
    tl = None

__all__ = ["ACTIVATIONS", "activated_correlation", "probabilities"]

#: Activation codes of the registered ops (the native operator uses the same numbers).
ACTIVATIONS: dict[str | None, int] = {None: 0, "softmax": 1, "sigmoid": 2}

# triton.jit reads TRITON_INTERPRET when the kernel is defined: its value at import counts.
_INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
_TRITON_BACKENDS = ("triton", "triton_fft")


def probabilities(
    x: torch.Tensor,
    target: torch.Tensor,
    activation: str | None,
    first_channel: int,
    ignore_index: int | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(p, target)`` as every backend's ``correlation`` takes them.

    ``p`` is the activation of ``x`` over channels ``first_channel`` on, 0 at voxels labelled
    ``ignore_index``; ``target`` (integer labels) has those voxels relabelled -1, which no
    channel matches. A float target is returned unchanged (``ignore_index`` must be None).
    """
    p = torch.softmax(x, dim=1) if activation == "softmax" else torch.sigmoid(x) if activation == "sigmoid" else x
    if ignore_index is not None:
        keep = target != ignore_index
        p = p * keep.unsqueeze(1).to(p.dtype)
        target = torch.where(keep, target, torch.full_like(target, -1))
    if first_channel:
        p = p[:, first_channel:]
    return p, target


def _kernel_backward(x: torch.Tensor, backend: str) -> bool:
    """Whether backward runs as the one-pass Triton kernel (float32/16 on CUDA, or a Triton
    backend under the interpreter)."""
    if triton is None or x.dtype == torch.float64:
        return False
    return x.is_cuda or (_INTERPRETED and backend in _TRITON_BACKENDS and x.device.type == "cpu")


def _field(backend: str, p, target, first_class, include_dc, magnitude_weight, phase_weight, need_grad):
    from . import load  # the registry imports this module's users lazily; avoid an import cycle

    return load(backend).correlation_field(
        p, target, first_class, include_dc, magnitude_weight, phase_weight, need_grad
    )


@torch.library.custom_op("scc_fast::activated_correlation", mutates_args=())
def _activated_correlation_op(
    x: torch.Tensor,
    target: torch.Tensor,
    backend: str,
    activation: int,
    first_channel: int,
    first_class: int,
    ignore_index: int | None,
    include_dc: bool,
    magnitude_weight: float,
    phase_weight: float,
    need_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SCC (B x C'), valid (B x C' bool) and the field dSCC/dp (B x C' x spatial, or (0,))."""
    name = {code: name for name, code in ACTIVATIONS.items()}[activation]
    p, backend_target = probabilities(x, target, name, first_channel, ignore_index)
    scc, valid, field = _field(
        backend, p.contiguous(), backend_target, first_class, include_dc, magnitude_weight, phase_weight, need_grad
    )
    return scc, valid, field


@_activated_correlation_op.register_fake
def _(x, target, backend, activation, first_channel, first_class, ignore_index, include_dc, magnitude_weight,
      phase_weight, need_grad):
    acc = accumulation_dtype(x.dtype)
    pairs = (x.shape[0], x.shape[1] - first_channel)
    field = x.new_empty(pairs + tuple(x.shape[2:]) if need_grad else (0,), dtype=acc)
    return x.new_empty(pairs, dtype=acc), x.new_empty(pairs, dtype=torch.bool), field


def _setup_context(ctx, inputs, output):
    x, target, backend, activation, first_channel = inputs[:5]
    ctx.ignore_index = inputs[6]
    ctx.backend, ctx.activation, ctx.first_channel = backend, activation, first_channel
    ctx.set_materialize_grads(False)
    ctx.mark_non_differentiable(output[1], output[2])
    ctx.save_for_backward(x, target, output[2])


def _backward(ctx, grad_scc, grad_valid, grad_field):
    refuse_double_backward(ctx.backend)
    x, target, field = ctx.saved_tensors
    nones = (None,) * 10
    if grad_scc is None:
        return (None,) + nones
    if field.numel() == 0:
        raise RuntimeError(f"scc_fast {ctx.backend}: backward called but the forward ran with need_grad=False")
    use_kernel = _kernel_backward(x, ctx.backend)
    grad_x = torch.ops.scc_fast.activation_backward(
        x, field, grad_scc.contiguous(), target, ctx.activation, ctx.first_channel, ctx.ignore_index, use_kernel
    )
    return (grad_x,) + nones


_activated_correlation_op.register_autograd(_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------------------------
# Backward: upstream gradients and the activation's Jacobian in one pass
# --------------------------------------------------------------------------------------------


def _backward_torch(x, field, grad_scc, target, activation, first_channel, ignore_index):
    """The backward pass with torch ops (CPU, float64, or without Triton)."""
    acc = field.dtype
    g = field * grad_scc.to(acc).view(grad_scc.shape + (1,) * (field.dim() - 2))
    if first_channel:
        g = torch.cat([g.new_zeros((g.shape[0], first_channel) + tuple(g.shape[2:])), g], dim=1)
    xa = x.to(acc)
    if activation == ACTIVATIONS["softmax"]:
        p = torch.softmax(xa, dim=1)
        grad = p * (g - (p * g).sum(dim=1, keepdim=True))
    elif activation == ACTIVATIONS["sigmoid"]:
        s = torch.sigmoid(xa)
        grad = g * s * (1 - s)
    else:
        grad = g
    if ignore_index is not None:
        grad = grad * (target != ignore_index).unsqueeze(1).to(acc)
    return grad.to(x.dtype)


if triton is not None:

    @triton.jit
    def _activation_backward_kernel(
        x_ptr, field_ptr, up_ptr, label_ptr, out_ptr,
        n_vox, n_chan, first_channel, ignore_index,
        ACTIVATION: tl.constexpr, HAS_IGNORE: tl.constexpr, BLOCK: tl.constexpr,
    ):
        """One block of voxels of one image: p recomputed from x over all channels, then
        dL/dx for every channel (see the module docstring)."""
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
        if ACTIVATION == 1:
            m = tl.full([BLOCK], -float("inf"), tl.float32)
            for c in range(0, n_chan):
                m = tl.maximum(m, tl.load(x_img + c * n_vox + offs, mask=mask, other=0.0).to(tl.float32))
            s = tl.zeros([BLOCK], tl.float32)
            for c in range(0, n_chan):
                s += tl.exp(tl.load(x_img + c * n_vox + offs, mask=mask, other=0.0).to(tl.float32) - m)
            scale = keep / s  # p' = keep * p, so an ignored voxel gets 0 in every channel
            dot = tl.zeros([BLOCK], tl.float32)
            for c in range(first_channel, n_chan):
                p = tl.exp(tl.load(x_img + c * n_vox + offs, mask=mask, other=0.0).to(tl.float32) - m) * scale
                u = tl.load(up_ptr + b * n_loss + c - first_channel).to(tl.float32)
                f = tl.load(f_img + (c - first_channel) * n_vox + offs, mask=mask, other=0.0).to(tl.float32)
                dot += p * (u * f)
            for c in range(0, first_channel):
                p = tl.exp(tl.load(x_img + c * n_vox + offs, mask=mask, other=0.0).to(tl.float32) - m) * scale
                tl.store(o_img + c * n_vox + offs, (-p * dot).to(out_ptr.dtype.element_ty), mask=mask)
            for c in range(first_channel, n_chan):
                p = tl.exp(tl.load(x_img + c * n_vox + offs, mask=mask, other=0.0).to(tl.float32) - m) * scale
                u = tl.load(up_ptr + b * n_loss + c - first_channel).to(tl.float32)
                f = tl.load(f_img + (c - first_channel) * n_vox + offs, mask=mask, other=0.0).to(tl.float32)
                tl.store(o_img + c * n_vox + offs, (p * (u * f - dot)).to(out_ptr.dtype.element_ty), mask=mask)
        else:
            for c in range(0, first_channel):
                tl.store(o_img + c * n_vox + offs, tl.zeros([BLOCK], tl.float32).to(out_ptr.dtype.element_ty),
                         mask=mask)
            for c in range(first_channel, n_chan):
                u = tl.load(up_ptr + b * n_loss + c - first_channel).to(tl.float32)
                f = tl.load(f_img + (c - first_channel) * n_vox + offs, mask=mask, other=0.0).to(tl.float32)
                g = u * f * keep
                if ACTIVATION == 2:
                    xs = tl.load(x_img + c * n_vox + offs, mask=mask, other=0.0).to(tl.float32)
                    sg = 1.0 / (1.0 + tl.exp(-xs))
                    g = g * sg * (1.0 - sg)
                tl.store(o_img + c * n_vox + offs, g.to(out_ptr.dtype.element_ty), mask=mask)


def _backward_kernel(x, field, grad_scc, target, activation, first_channel, ignore_index):
    n_batch, n_chan = x.shape[:2]
    n_vox = x[0, 0].numel()
    x = x.contiguous()
    field = field.contiguous()
    out = torch.empty_like(x)
    # The interpreter costs about 1 ms per program instance whatever its size: few, large blocks.
    block = min(triton.next_power_of_2(n_vox), 8192) if x.device.type == "cpu" else 1024
    labels = target.contiguous() if ignore_index is not None else x  # any pointer when unused
    grid = (triton.cdiv(n_vox, block), n_batch)
    _activation_backward_kernel[grid](
        x, field, grad_scc.to(torch.float32).contiguous(), labels, out,
        n_vox, n_chan, first_channel, 0 if ignore_index is None else int(ignore_index),
        ACTIVATION=activation, HAS_IGNORE=ignore_index is not None, BLOCK=block,
    )
    return out


@torch.library.custom_op("scc_fast::activation_backward", mutates_args=())
def _activation_backward_op(
    x: torch.Tensor,
    field: torch.Tensor,
    grad_scc: torch.Tensor,
    target: torch.Tensor,
    activation: int,
    first_channel: int,
    ignore_index: int | None,
    use_kernel: bool,
) -> torch.Tensor:
    """dLoss/dx from the upstream ``grad_scc`` (B x C') and the saved field (B x C' x spatial)."""
    # The kernel computes in float32; float64 keeps its precision through torch ops.
    if use_kernel and x.dtype != torch.float64 and triton is not None:
        return _backward_kernel(x, field, grad_scc, target, activation, first_channel, ignore_index)
    return _backward_torch(x, field, grad_scc, target, activation, first_channel, ignore_index)


@_activation_backward_op.register_fake
def _(x, field, grad_scc, target, activation, first_channel, ignore_index, use_kernel):
    return torch.empty_like(x)


def activated_correlation(
    backend: str,
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    activation: str | None,
    first_channel: int = 0,
    first_class: int = 0,
    ignore_index: int | None = None,
    include_dc: bool = False,
    magnitude_weight: float = 0.5,
    phase_weight: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair SCC of ``activation(x)`` by ``backend``, the probabilities never saved.

    Args:
        backend: a backend name whose module provides ``correlation_field``.
        x: B x C x spatial logits (``activation`` "softmax" over C, or "sigmoid") or
            probabilities (``activation=None``).
        target: integer labels B x spatial, or a float target B x C' x spatial for the
            channels in the loss (C' = C - first_channel).
        first_channel: channels before it take part in the softmax but not in the loss.
        first_class: the label of loss channel 0 (integer labels).
        ignore_index: voxels with this label count as probability 0 and target 0 in every
            channel, and get no gradient (integer labels only).

    Returns:
        ``(scc, valid)``, both B x C'; ``scc`` is differentiable in ``x``.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be None, 'softmax' or 'sigmoid', got {activation!r}")
    if not _kernel_backward(x, backend):
        # Written with torch ops, the fused backward recomputes the softmax and holds as many
        # full-size temporaries as autograd's own softmax backward (measured on CPU: slower, no
        # lower peak), so without the kernel the activation is applied outside, as usual.
        from . import load

        p, backend_target = probabilities(x, target, activation, first_channel, ignore_index)
        return load(backend).correlation(
            p, backend_target, first_class=first_class, include_dc=include_dc,
            magnitude_weight=magnitude_weight, phase_weight=phase_weight,
        )
    need_grad = torch.is_grad_enabled() and x.requires_grad
    scc, valid, _ = _activated_correlation_op(
        x,
        target,
        backend,
        ACTIVATIONS[activation],
        int(first_channel),
        int(first_class),
        None if ignore_index is None else int(ignore_index),
        bool(include_dc),
        float(magnitude_weight),
        float(phase_weight),
        need_grad,
    )
    return scc, valid
