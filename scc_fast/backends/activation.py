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

Eager calls run the op's ``torch.autograd.Function`` twin, :class:`_ActivatedCorrelationEager`:
the same code without the custom op's dispatch layers (the Triton backends are host-bound on a
GPU); torch.compile, tensor subclasses and dispatch modes get the registered op.

A backend opts in by providing ``correlation_field(probs, target, first_class, include_dc,
magnitude_weight, phase_weight, need_grad) -> (scc, valid, field)`` (field float32, float64
for float64 probs; shape (0,) when not ``need_grad``) and an ``activated_correlation`` that
calls :func:`activated_correlation` with its name. A backend whose kernels can compute p
themselves also provides ``activated_field(x, target, activation, first_channel, first_class,
ignore_index, include_dc, magnitude_weight, phase_weight, need_grad)`` and a true
``activation_in_kernel()``; the op then hands it the logits for softmax and sigmoid, and no
probability tensor is made at all (backend "triton": per-voxel statistics, one launch).
"""

from __future__ import annotations

import importlib.util
import os
from types import ModuleType
from typing import Optional

import torch

from .. import _checks, _settings
from .._numerics import accumulation_dtype, plain_eager, refuse_double_backward, to_accumulation
from .._reduction import loss_and_derivative, pair_loss
from ._protocol import LossOptions

# Triton is optional (without it the backward pass is written with torch ops), and imported only
# when the kernel runs: the kernel lives in _activation_kernel, so `import scc_fast` stays light.
_HAVE_TRITON = importlib.util.find_spec("triton") is not None

__all__ = [
    "ACTIVATIONS", "activated_correlation", "activated_loss", "activation_code", "activation_name", "fused_entry",
    "fused_loss", "plain_loss", "probabilities",
]

#: Backend name -> module, filled by :func:`fused_entry` as each fused backend is imported.
_ENTRIES: dict[str, ModuleType] = {}

#: Activation codes of the registered ops (the native operator uses the same numbers).
ACTIVATIONS: dict[str | None, int] = {None: 0, "softmax": 1, "sigmoid": 2}


def activation_code(activation: str | None) -> int:
    """The ops' code of ``activation`` (None, "softmax" or "sigmoid"); ValueError for anything else."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be None, 'softmax' or 'sigmoid', got {activation!r}")
    return ACTIVATIONS[activation]


def activation_name(code: int) -> str | None:
    """The activation an ops' code stands for (the inverse of :func:`activation_code`)."""
    return {c: name for name, c in ACTIVATIONS.items()}[code]


# The setting ``recompute_field`` keeps nothing but the input between forward and backward: the
# forward computes SCC without the gradient field (for the Triton backends: no inverse transforms,
# 3 of 5 launches in 3D) and backward computes it again, with the field. Less memory held through
# the rest of the training step (one tensor of the input's size) for one more forward pass of the
# loss. Off by default (bench/RESULTS.md, GPU runs 3 and 4: slower, the same peak). Applies where
# the activation is fused (:func:`activated_correlation` with its kernel backward).

# CPU tensors go to the kernel only under the Triton interpreter; like triton_scc and triton_fft,
# this reads TRITON_INTERPRET once, at import.
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
    if not _HAVE_TRITON or x.dtype == torch.float64:
        return False
    return x.is_cuda or (_INTERPRETED and backend in _TRITON_BACKENDS and x.device.type == "cpu")


def _field(backend: str, p, target, first_class, include_dc, magnitude_weight, phase_weight, need_grad):
    return _ENTRIES[backend].correlation_field(
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
    ignore_index: Optional[int],  # typing.Optional: the spelling torch.library documents
    include_dc: bool,
    magnitude_weight: float,
    phase_weight: float,
    need_grad: bool,
    recompute: bool,
    derive_first: bool = False,
    validate: bool = False,
    field_weights: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SCC (B x C'), valid (B x C' bool) and the field dSCC/dp (B x C' x spatial, or (0,)). With
    ``recompute`` (and ``need_grad`` False) backward computes the field again instead of
    reading a saved one. With ``derive_first`` (backend "triton_fft", where its
    ``derives_first_class`` says so) the field is B x (C' - 1) x spatial, the classes 1 on less
    class 0's, for an upstream gradient that is the same for every class of an image; with
    ``field_weights`` too (one per class, the loss's class weights) each class's field is
    multiplied by its weight first (w_c G_c - w_0 G_0), so that a weighted loss's upstream
    gradient can be the same for every class. With ``validate`` (where the backend's
    ``validates_in_op`` says so) the backend makes ``scc_loss(validate=True)``'s checks in its
    kernels and raises their ``ValueError``."""
    return _forward(x, target, backend, activation, first_channel, first_class, ignore_index, include_dc,
                    magnitude_weight, phase_weight, need_grad, derive_first, validate, field_weights)


def _forward(x, target, backend, activation, first_channel, first_class, ignore_index, include_dc,
             magnitude_weight, phase_weight, need_grad, derive_first=False, validate=False, field_weights=None):
    module = _ENTRIES[backend]
    in_kernel = getattr(module, "activation_in_kernel", None)
    if activation and in_kernel is not None and in_kernel():
        # The backend computes p inside its kernels from per-voxel statistics: no probabilities made.
        return module.activated_field(
            x, target, activation, first_channel, first_class, ignore_index, include_dc, magnitude_weight,
            phase_weight, need_grad, **({"derive_first": True} if derive_first else {}),
            **({"validate": True} if validate else {}),
            **({"field_weights": field_weights} if field_weights is not None else {}),
        )
    if derive_first or validate:
        raise ValueError(
            f"backend {backend!r} does not derive a class's field or make the checks here "
            f"(derive_first={derive_first}, validate={validate})"
        )
    p, backend_target = probabilities(x, target, activation_name(activation), first_channel, ignore_index)
    scc, valid, field = _field(
        backend, p.contiguous(), backend_target, first_class, include_dc, magnitude_weight, phase_weight, need_grad
    )
    return scc, valid, field


@_activated_correlation_op.register_fake
def _(x, target, backend, activation, first_channel, first_class, ignore_index, include_dc, magnitude_weight,
      phase_weight, need_grad, recompute, derive_first=False, validate=False, field_weights=None):
    acc = accumulation_dtype(x.dtype)
    pairs = (x.shape[0], x.shape[1] - first_channel)
    field_shape = (pairs[0], pairs[1] - int(derive_first)) + tuple(x.shape[2:])
    field = x.new_empty(field_shape if need_grad else (0,), dtype=acc)
    return x.new_empty(pairs, dtype=acc), x.new_empty(pairs, dtype=torch.bool), field


def _keep_options(ctx, inputs):
    """The op's non-tensor inputs on ``ctx``, for backward."""
    ctx.backend, ctx.activation, ctx.first_channel = inputs[2:5]
    ctx.ignore_index = inputs[6]
    ctx.recompute, ctx.derive_first, ctx.validate = inputs[11:14]
    ctx.options = inputs[5:10]  # first_class, ignore_index, include_dc, magnitude_weight, phase_weight
    ctx.set_materialize_grads(False)


def _setup_context(ctx, inputs, output):
    _keep_options(ctx, inputs)
    ctx.mark_non_differentiable(output[1], output[2])
    ctx.save_for_backward(inputs[0], inputs[1], output[2], inputs[14])  # x, target, field, field_weights


def _backward_with(ctx, grad_scc, activation_backward, **scale):
    """dL/dx through ``activation_backward`` (the registered op, or its implementation in eager mode,
    which also takes the upstream gradient as ``grad_scc`` times a ``scale``)."""
    refuse_double_backward(ctx.backend)
    x, target, field, field_weights = ctx.saved_tensors[:4]
    nones = (None,) * 14
    if grad_scc is None:
        return (None,) + nones
    if ctx.recompute:  # the forward kept no field: run it again, with the gradient this time
        # (validate as in the forward: what the backend computes may depend on it; the checks
        # passed there, so they pass again)
        with torch.no_grad():
            _, _, field = _forward(
                x, target, ctx.backend, ctx.activation, ctx.first_channel, *ctx.options, True, ctx.derive_first,
                ctx.validate, field_weights,
            )
    if field.numel() == 0:
        raise RuntimeError(f"scc_fast {ctx.backend}: backward called but the forward ran with need_grad=False")
    use_kernel = _kernel_backward(x, ctx.backend)
    grad_x = activation_backward(
        x, field, grad_scc.contiguous(), target, ctx.activation, ctx.first_channel, ctx.ignore_index, use_kernel,
        **scale,
    )
    return (grad_x,) + nones


def _backward(ctx, grad_scc, grad_valid, grad_field):
    return _backward_with(ctx, grad_scc, torch.ops.scc_fast.activation_backward)


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


@torch.library.custom_op("scc_fast::activation_backward", mutates_args=())
def _activation_backward_op(
    x: torch.Tensor,
    field: torch.Tensor,
    grad_scc: torch.Tensor,
    target: torch.Tensor,
    activation: int,
    first_channel: int,
    ignore_index: Optional[int],
    use_kernel: bool,
) -> torch.Tensor:
    """dLoss/dx from the upstream ``grad_scc`` (B x C') and the saved field (B x C' x spatial, or
    B x (C' - 1) x spatial where class 0's was derived: :func:`_activation_backward`)."""
    return _activation_backward(x, field, grad_scc, target, activation, first_channel, ignore_index, use_kernel)


def _activation_backward(x, field, grad_scc, target, activation, first_channel, ignore_index, use_kernel,
                         scale=None):
    # The kernel computes in float32; float64 keeps its precision through torch ops.
    use_kernel = use_kernel and x.dtype != torch.float64 and _HAVE_TRITON
    # ``scale`` (eager mode only): the upstream gradient is grad_scc * scale, a one-element
    # scale multiplied in the kernel, other shapes here.
    if scale is not None and not (use_kernel and scale.numel() == 1):
        grad_scc, scale = grad_scc * scale, None
    # A field with one loss channel fewer than grad_scc has columns is a derived class 0's
    # (backend "triton_fft", ``derive_first``): the classes 1 on less class 0's, for an upstream
    # gradient that is the same for every class of an image, so the backward takes loss channel
    # 0 as a channel outside the loss (its field is 0) and reads grad_scc from column 1.
    skip = grad_scc.shape[1] - field.shape[1] if field.dim() > 1 else 0
    if use_kernel:
        from ._activation_kernel import activation_backward

        return activation_backward(x, field, grad_scc, target, activation, first_channel, ignore_index, skip, scale)
    return _backward_torch(x, field, grad_scc[:, skip:], target, activation, first_channel + skip, ignore_index)


@_activation_backward_op.register_fake
def _(x, field, grad_scc, target, activation, first_channel, ignore_index, use_kernel):
    return torch.empty_like(x)


class _ActivatedCorrelationEager(torch.autograd.Function):
    """The registered op's eager twin: the same forward, context and backward, called without
    the custom op's dispatch layers (argument defaults, autograd and backend redispatch, twice a
    step with the backward op: about a third of the loss's Python time on the 2-core CPU, and the
    Triton backends are host-bound on a GPU). Used outside torch.compile and tensor subclasses
    or dispatch modes, which get the registered op (its fake implementation traces it)."""

    # forward takes ctx (no separate setup_context): apply then skips binding the arguments to
    # forward's signature with inspect, about 20 us a call.
    @staticmethod
    def forward(ctx, *inputs):
        output = _forward(*inputs[:11], *inputs[12:15])
        _setup_context(ctx, inputs, output)
        return output

    @staticmethod
    def backward(ctx, grad_scc, grad_valid, grad_field):
        return _backward_with(ctx, grad_scc, _activation_backward)


class _ActivatedLossEager(torch.autograd.Function):
    """:class:`_ActivatedCorrelationEager` and the loss's reduction over the pairs in one autograd
    node (``scc_loss`` in eager mode): one ``Function.apply`` and one backward node a step fewer
    on the host, whose work a GPU step waits for. The reduction is :func:`scc_fast._reduction.
    loss_and_derivative`, as in its own node; backward scales its saved derivative by the
    upstream gradient and runs the activation's backward."""

    @staticmethod
    def forward(ctx, *inputs):
        # inputs: the op's 15, then class_weights, reduction
        scc, valid, field = _forward(*inputs[:11], *inputs[12:15])
        loss, dloss_dscc = loss_and_derivative(scc, valid, inputs[15], inputs[16], uniform_grad=inputs[12])
        _keep_options(ctx, inputs)
        ctx.save_for_backward(inputs[0], inputs[1], field, inputs[14], dloss_dscc)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        if grad_loss is None:
            return _backward_with(ctx, None, _activation_backward) + (None, None)
        # dL/dscc = grad_loss * dloss/dscc, multiplied where the activation's backward reads it.
        return _backward_with(ctx, ctx.saved_tensors[4], _activation_backward, scale=grad_loss) + (None, None)


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
    derive_first: bool = False,
    validate: bool = False,
    field_weights: torch.Tensor | None = None,
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
        derive_first: class 0's field derived from the others' (backend "triton_fft", where its
            ``derives_first_class`` is true): the gradient is then right only for an upstream
            gradient of ``scc`` that is the same for every class of an image.
        field_weights: with ``derive_first``, one weight per class (C') multiplied into each
            class's gradient (the gradient is then that of the weighted sum of ``scc``, times the
            one upstream value: for a class-weighted loss whose derivative by ``scc`` leaves the
            weights out, ``scc_fast._reduction.pair_loss(..., uniform_grad=True)``).
        validate: ``scc_loss(validate=True)``'s checks made by the backend's kernels (where its
            ``validates_in_op`` is true), their ``ValueError`` raised after its forward launches.

    Returns:
        ``(scc, valid)``, both B x C'; ``scc`` is differentiable in ``x``.
    """
    code = activation_code(activation)
    if not _kernel_backward(x, backend):
        # Written with torch ops, the fused backward recomputes the softmax and holds as many
        # full-size temporaries as autograd's own softmax backward (measured on CPU: slower, no
        # lower peak), so without the kernel the activation is applied outside, as usual.
        if derive_first or validate or field_weights is not None:
            raise ValueError(
                f"backend {backend!r} cannot derive a class's field or make the checks without its backward kernel "
                f"(derive_first={derive_first}, validate={validate}, field_weights given: {field_weights is not None})"
            )
        p, backend_target = probabilities(x, target, activation, first_channel, ignore_index)
        return _ENTRIES[backend].correlation(
            p, backend_target, first_class=first_class, include_dc=include_dc,
            magnitude_weight=magnitude_weight, phase_weight=phase_weight,
        )
    op = _ActivatedCorrelationEager.apply if plain_eager(x, target) else _activated_correlation_op
    inputs = _op_inputs(backend, x, target, code, first_channel, first_class, ignore_index, include_dc,
                        magnitude_weight, phase_weight, derive_first, validate, field_weights)
    scc, valid, _ = op(*inputs)
    return scc, valid


def _op_inputs(backend, x, target, code, first_channel, first_class, ignore_index, include_dc, magnitude_weight,
               phase_weight, derive_first, validate, field_weights) -> tuple:
    """The registered op's 15 inputs for a call with these arguments (need_grad and recompute
    decided here, from grad mode and the setting ``recompute_field``)."""
    need_grad = torch.is_grad_enabled() and x.requires_grad
    recompute = need_grad and _settings.current().recompute_field
    return (
        x, target, backend, code, int(first_channel), int(first_class),
        None if ignore_index is None else int(ignore_index), bool(include_dc), float(magnitude_weight),
        float(phase_weight), need_grad and not recompute, recompute, bool(derive_first), bool(validate), field_weights,
    )  # fmt: skip


def activated_loss(
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
    derive_first: bool = False,
    validate: bool = False,
    field_weights: torch.Tensor | None = None,
    class_weights: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor | None:
    """The loss in one autograd node (for :func:`fused_loss`), or None where that does not apply.

    :func:`activated_correlation` (the same arguments) followed by
    :func:`scc_fast._reduction.pair_loss` with ``class_weights`` and ``reduction``
    (``derive_first`` makes the reduction's derivative uniform, as ``uniform_grad``: with class
    weights the caller passes them as ``field_weights`` too), where the
    op's eager twin would run: eager mode, plain tensors, the activation's backward kernel.
    Elsewhere (torch.compile, tensor subclasses, dispatch modes, no kernel) it returns None and
    the caller takes the two steps.
    """
    if not _kernel_backward(x, backend) or not plain_eager(x, target):
        return None
    if class_weights is not None and not plain_eager(class_weights):
        return None
    inputs = _op_inputs(backend, x, target, activation_code(activation), first_channel, first_class, ignore_index,
                        include_dc, magnitude_weight, phase_weight, derive_first, validate, field_weights)
    return _ActivatedLossEager.apply(*inputs, class_weights, reduction)


def plain_loss(correlation, x: torch.Tensor, target: torch.Tensor, options: LossOptions) -> torch.Tensor:
    """The loss with the activation, background drop and ignore mask applied here with torch ops
    and ``correlation`` (a backend's) computing the pairs; autograd keeps the probabilities."""
    o = options
    if o.validate:
        _checks.check_values(x, target, o.ignore_index)
    p, target = probabilities(to_accumulation(x), target, o.activation, o.first_channel, o.ignore_index)
    scc, valid = correlation(p, target, first_class=o.first_class, **o.coefficients())
    return pair_loss(scc, valid, o.class_weights, o.reduction)


def fused_loss(
    backend: str,
    x: torch.Tensor,
    target: torch.Tensor,
    options: LossOptions,
    *,
    in_kernel: bool = False,
    checks_in_op: bool = False,
    derive_first: bool = False,
) -> torch.Tensor:
    """The loss of a backend registered with :func:`fused_entry`, the probabilities never saved.

    Args:
        backend: the backend's name.
        x, target, options: as the backend's ``loss`` gets them (:mod:`scc_fast.backends._protocol`).
        in_kernel: the backend's kernels compute the activation from ``x`` as it is (float16 and
            bfloat16 logits are then read without a float32 copy).
        checks_in_op: with ``options.validate``, the backend's kernels make the checks.
        derive_first: class 0's field derived from the others' (:func:`activated_correlation`);
            only with reduction "mean" or "sum", whose derivative is then made uniform.
    """
    o = options
    if not _settings.current().fuse_activation:  # the A/B setting: the activation outside
        return plain_loss(_ENTRIES[backend].correlation, x, target, o)
    if not in_kernel:
        x = to_accumulation(x)
    if o.validate and not checks_in_op:
        _checks.check_values(x, target, o.ignore_index)
    field_weights = o.class_weights if derive_first else None
    args = dict(activation=o.activation, first_channel=o.first_channel, first_class=o.first_class,
                ignore_index=o.ignore_index, derive_first=derive_first, validate=checks_in_op and o.validate,
                field_weights=field_weights, **o.coefficients())
    loss = activated_loss(backend, x, target, **args, class_weights=o.class_weights, reduction=o.reduction)
    if loss is not None:  # eager mode: the op and the reduction in one autograd node
        return loss
    scc, valid = activated_correlation(backend, x, target, **args)
    return pair_loss(scc, valid, o.class_weights, o.reduction, uniform_grad=derive_first)


def fused_entry(backend: str, module: ModuleType):
    """Register ``module`` (with ``correlation_field``) as backend ``backend``'s and return its
    ``activated_correlation``: :func:`activated_correlation` with the name bound. The op names its
    backend by string (custom ops take no modules) and finds the module here, so this module never
    imports the registry or a backend."""
    _ENTRIES[backend] = module

    def activated(x: torch.Tensor, target: torch.Tensor, **options) -> tuple[torch.Tensor, torch.Tensor]:
        return activated_correlation(backend, x, target, **options)

    activated.__name__ = activated.__qualname__ = "activated_correlation"
    activated.__doc__ = (
        f"Per-pair SCC of ``activation(x)`` by backend {backend!r}, the probabilities never saved for "
        "backward; see :func:`scc_fast.backends.activation.activated_correlation` for the arguments."
    )
    return activated
