"""The one registered op of the fused backends and the activation around it, the probabilities
never kept for backward.

``torch.ops.scc_fast.activated_correlation(x, target, backend, ...)`` calls the backend's
``field`` (:class:`~scc_fast.backends._protocol.FusedBackend`), which applies the activation
(softmax / sigmoid), background drop and ignore mask itself, in its kernels or with torch ops
(:func:`probability_field`), and returns the per-pair SCC, the valid mask and the gradient field
``dSCC/dp``. The op keeps only the input (the caller's tensor, no new memory) and the field.
Its backward is the backend's ``backward``; for all but ``native`` :func:`field_backward`,
``torch.ops.scc_fast.activation_backward`` in traced code: one pass that recomputes p from the
input and applies the upstream gradients and the activation's Jacobian,

    softmax: dL/dx_c = keep * p_c (g_c - sum_k p_k g_k),   g_c = grad_scc[b, c] * field_c
    sigmoid: dL/dx_c = keep * g_c s_c (1 - s_c),            none: dL/dx_c = keep * g_c

(g_c = 0 for a dropped background channel; keep = 0 at ignored voxels). That pass is one Triton
kernel on CUDA (float32 and narrower) and, for the Triton backends, on CPU under
``TRITON_INTERPRET=1``; torch ops elsewhere. Without the kernel (CPU torch backend, float64) the
backend's loss asks :func:`fused_loss` to apply the activation outside the op, as usual: written
with torch ops the fused backward is no leaner than autograd's. Probabilities
(``activation=None``) take the same op: it is every fused backend's ``correlation``.

The loss (:func:`fused_loss`) in eager mode is one autograd node, :class:`_ActivatedLossEager`:
the op's forward, context and backward with the reduction, without the custom op's dispatch
layers. torch.compile, tensor subclasses and dispatch modes get the registered op and the
reduction (:func:`scc_fast._reduction.pair_loss`).

A backend's ``field`` may return, besides the field, what its own backward needs (``aux``):
backend ``native`` returns its per-voxel softmax statistics, and its ``backward`` is its compiled
operator's. The others' ``backward`` is :func:`field_backward` and their ``fake``
:func:`field_fake`.
"""

from __future__ import annotations

import importlib.util
import os
from types import ModuleType
from typing import NamedTuple, Optional

import torch

from .. import _checks, _settings
from .._numerics import accumulation_dtype, plain_eager, refuse_double_backward, to_accumulation
from .._reduction import loss_and_derivative, pair_loss
from ._protocol import FieldRequest, LossOptions

# Triton is optional (without it the backward pass is written with torch ops), and imported only
# when the kernel runs: the kernel lives in _activation_kernel, so `import scc_fast` stays light.
_HAVE_TRITON = importlib.util.find_spec("triton") is not None

__all__ = [
    "ACTIVATIONS", "activated_correlation", "activation_code", "activation_name", "field_backward", "field_fake",
    "fused_entry", "fused_loss", "kernel_backward", "plain_loss", "probabilities", "probability_correlation",
    "probability_field", "with_no_aux",
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


def kernel_backward(x: torch.Tensor, backend: str) -> bool:
    """Whether backward runs as the one-pass Triton kernel (float32/16 on CUDA, or a Triton
    backend under the interpreter)."""
    if not _HAVE_TRITON or x.dtype == torch.float64:
        return False
    return x.is_cuda or (_INTERPRETED and backend in _TRITON_BACKENDS and x.device.type == "cpu")


def probability_field(field, x: torch.Tensor, target: torch.Tensor, request: FieldRequest):
    """A backend's ``field`` (:class:`~scc_fast.backends._protocol.FusedBackend`) with the
    activation, background drop and ignore mask applied here with torch ops: ``field(probs,
    target, first_class, include_dc, magnitude_weight, phase_weight, need_grad)`` computes the
    pairs from the probabilities."""
    r = request
    if r.derive_first or r.validate:
        raise ValueError(
            "the backend derives no class's field and makes no checks with the probabilities given "
            f"(derive_first={r.derive_first}, validate={r.validate})"
        )
    p, backend_target = probabilities(x, target, activation_name(r.activation), r.first_channel, r.ignore_index)
    return with_no_aux(*field(p.contiguous(), backend_target, r.first_class, *r.coefficients(), r.need_grad))


def with_no_aux(scc: torch.Tensor, valid: torch.Tensor, field: torch.Tensor):
    """``(scc, valid, field, aux)`` of a backend whose backward needs nothing besides the field:
    aux None (no tensor made in eager mode; the registered op returns an empty one)."""
    return scc, valid, field, None


def field_fake(x: torch.Tensor, target: torch.Tensor, request: FieldRequest):
    """The fake outputs of a fused backend's ``field`` whose field is in the accumulation dtype and
    whose backward needs nothing else (``aux`` of shape (0,)): the op's fake implementation."""
    acc = accumulation_dtype(x.dtype)
    pairs = (x.shape[0], x.shape[1] - request.first_channel)
    field_shape = (pairs[0], pairs[1] - int(request.derive_first)) + tuple(x.shape[2:])
    field = x.new_empty(field_shape if request.need_grad else (0,), dtype=acc)
    return x.new_empty(pairs, dtype=acc), x.new_empty(pairs, dtype=torch.bool), field, x.new_empty((0,), dtype=acc)


def field_backward(backend: str, x, target, field, aux, grad_scc, request: FieldRequest, scale=None, eager=False):
    """dL/dx of a fused backend whose backward needs only the field: the upstream gradient
    ``grad_scc`` (times a one-element ``scale`` where given), the field and the activation's
    Jacobian in one pass (:func:`_activation_backward`); in traced code (``eager`` False) through
    the registered op ``torch.ops.scc_fast.activation_backward``."""
    use_kernel = kernel_backward(x, backend)
    r = request
    if eager:
        return _activation_backward(x, field, grad_scc, target, r.activation, r.first_channel, r.ignore_index,
                                    use_kernel, scale=scale)
    return torch.ops.scc_fast.activation_backward(x, field, grad_scc, target, r.activation, r.first_channel,
                                                  r.ignore_index, use_kernel)


class _OpInputs(NamedTuple):
    """The registered op's inputs, by name (:func:`_named`; the op takes them by position)."""

    x: torch.Tensor
    target: torch.Tensor
    backend: str
    request: FieldRequest
    recompute: bool
    field_weights: torch.Tensor | None

    def field(self):
        """``(scc, valid, field, aux)`` by the backend's ``field``."""
        return _ENTRIES[self.backend].field(self.x, self.target, self.request, self.field_weights)


def _named(x, target, backend, activation, first_channel, first_class, ignore_index, include_dc, magnitude_weight,
           phase_weight, need_grad, recompute, derive_first=False, validate=False, field_weights=None) -> _OpInputs:
    """The op's inputs (its schema's order) by name."""
    request = FieldRequest(activation, first_channel, first_class, ignore_index, include_dc, magnitude_weight,
                           phase_weight, need_grad, derive_first, validate)
    return _OpInputs(x, target, backend, request, recompute, field_weights)


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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """SCC (B x C'), valid (B x C' bool), the field dSCC/dp (B x C' x spatial, or (0,)) and what
    else the backend's backward needs (``aux``) by the backend's ``field``
    (:class:`~scc_fast.backends._protocol.FieldRequest` for the arguments).
    With ``recompute`` (and ``need_grad`` False) backward computes the field again instead of
    reading a saved one."""
    scc, valid, field, aux = _named(x, target, backend, activation, first_channel, first_class, ignore_index,
                                    include_dc, magnitude_weight, phase_weight, need_grad, recompute, derive_first,
                                    validate, field_weights).field()
    return scc, valid, field, aux if aux is not None else scc.new_empty((0,))


@_activated_correlation_op.register_fake
def _(x, target, backend, activation, first_channel, first_class, ignore_index, include_dc, magnitude_weight,
      phase_weight, need_grad, recompute, derive_first=False, validate=False, field_weights=None):
    a = _named(x, target, backend, activation, first_channel, first_class, ignore_index, include_dc,
               magnitude_weight, phase_weight, need_grad, recompute, derive_first, validate, field_weights)
    return _ENTRIES[backend].fake(x, target, a.request)


def _keep(ctx, inputs: _OpInputs, field: torch.Tensor, aux: torch.Tensor, *extra: torch.Tensor) -> None:
    """The op's options on ``ctx`` (its tensors saved for backward, with ``extra``)."""
    # three attributes, not a _replace(d) copy of the inputs: less host work, every step
    ctx.backend, ctx.request, ctx.recompute = inputs.backend, inputs.request, inputs.recompute
    ctx.set_materialize_grads(False)
    if inputs.recompute:  # backward computes the field and aux again
        aux = None
    ctx.save_for_backward(inputs.x, inputs.target, field, inputs.field_weights, aux, *extra)


def _setup_context(ctx, inputs, output):
    _keep(ctx, _named(*inputs), output[2], output[3])
    ctx.mark_non_differentiable(output[1], output[2], output[3])


def _backward_with(ctx, grad_scc, eager: bool, scale=None):
    """dL/dx (and None for the op's other inputs) by the backend's ``backward``: in eager mode
    (the loss node) with the upstream gradient ``grad_scc`` times a one-element ``scale``."""
    r = ctx.request
    refuse_double_backward(ctx.backend)
    x, target, field, field_weights, aux = ctx.saved_tensors[:5]
    nones = (None,) * 14
    if grad_scc is None:
        return (None,) + nones
    module = _ENTRIES[ctx.backend]
    if ctx.recompute:  # the forward kept no field: run it again, with the gradient this time
        # (validate as in the forward: what the backend computes may depend on it; the checks
        # passed there, so they pass again)
        with torch.no_grad():
            _, _, field, aux = _OpInputs(x, target, ctx.backend, r._replace(need_grad=True), True,
                                         field_weights).field()
    if field.numel() == 0:
        raise RuntimeError(f"scc_fast {ctx.backend}: backward called but the forward ran with need_grad=False")
    grad_x = module.backward(ctx.backend, x, target, field, aux, grad_scc.contiguous(), r, scale, eager)
    return (grad_x,) + nones


def _backward(ctx, grad_scc, grad_valid, grad_field, grad_aux):
    return _backward_with(ctx, grad_scc, False)


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


class _ActivatedLossEager(torch.autograd.Function):
    """The loss in eager mode as one autograd node: the registered op's forward, context and
    backward and the reduction over the pairs, called without the custom op's dispatch layers.
    The Triton backends are host-bound on a GPU, and the registered op with the reduction's own
    node costs more host time a step (bench/RESULTS.md, "one autograd route"). torch.compile,
    tensor subclasses and dispatch modes get the registered op (its fake implementation traces
    it) and :func:`scc_fast._reduction.pair_loss`. The reduction is :func:`scc_fast._reduction.
    loss_and_derivative`; backward scales its saved derivative by the upstream gradient and runs
    the activation's backward."""

    # forward takes ctx (no separate setup_context): apply then skips binding the arguments to
    # forward's signature with inspect, host time a GPU step waits for (measured: bench/RESULTS.md,
    # 'CPU: Python host time of a triton_fft step ...' and 'Figures moved out of the code's comments').
    @staticmethod
    def forward(ctx, *inputs):
        # inputs: the op's 15, then class_weights, reduction
        op_inputs = _named(*inputs[:15])
        scc, valid, field, aux = op_inputs.field()
        loss, dloss_dscc = loss_and_derivative(scc, valid, inputs[15], inputs[16],
                                               uniform_grad=op_inputs.request.derive_first)
        _keep(ctx, op_inputs, field, aux, dloss_dscc)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        if grad_loss is None:
            return _backward_with(ctx, None, True) + (None, None)
        # dL/dscc = grad_loss * dloss/dscc, multiplied where the backend's backward reads it.
        return _backward_with(ctx, ctx.saved_tensors[5], True, scale=grad_loss) + (None, None)


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
    """Per-pair SCC of ``activation(x)`` by ``backend`` through the registered op, the
    probabilities never saved.

    Args:
        backend: a backend name registered with :func:`fused_entry`.
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
    inputs = _op_inputs(backend, x, target, code, first_channel, first_class, ignore_index, include_dc,
                        magnitude_weight, phase_weight, derive_first, validate, field_weights)
    scc, valid, _, _ = _activated_correlation_op(*inputs)
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
    activation_outside: bool = False,
) -> torch.Tensor:
    """The loss of a backend registered with :func:`fused_entry`, the probabilities never saved.

    In eager mode, with plain tensors, one autograd node (:class:`_ActivatedLossEager`);
    elsewhere the registered op and the reduction.

    Args:
        backend: the backend's name.
        x, target, options: as the backend's ``loss`` gets them (:mod:`scc_fast.backends._protocol`).
        in_kernel: the backend's kernels compute the activation from ``x`` as it is (float16 and
            bfloat16 logits are then read without a float32 copy).
        checks_in_op: with ``options.validate``, the backend's kernels make the checks.
        derive_first: class 0's field derived from the others' (:func:`activated_correlation`);
            only with reduction "mean" or "sum", whose derivative is then made uniform.
        activation_outside: apply the activation with torch ops before the op, autograd keeping
            the probabilities: for a backend whose backward would run as torch ops
            (:func:`kernel_backward` false), which recompute the softmax and hold as many
            full-size temporaries as autograd's own softmax backward (slower on a CPU, no lower
            peak).
    """
    o = options
    if activation_outside or not _settings.current().fuse_activation:  # (the setting: an A/B switch)
        return plain_loss(_ENTRIES[backend].correlation, x, target, o)
    if not in_kernel:
        x = to_accumulation(x)
    if o.validate and not checks_in_op:
        _checks.check_values(x, target, o.ignore_index)
    field_weights = o.class_weights if derive_first else None
    validate = checks_in_op and o.validate
    if plain_eager(x, target) and (o.class_weights is None or plain_eager(o.class_weights)):
        inputs = _op_inputs(backend, x, target, activation_code(o.activation), o.first_channel, o.first_class,
                            o.ignore_index, o.include_dc, o.magnitude_weight, o.phase_weight, derive_first, validate,
                            field_weights)
        return _ActivatedLossEager.apply(*inputs, o.class_weights, o.reduction)
    scc, valid = activated_correlation(
        backend, x, target, activation=o.activation, first_channel=o.first_channel, first_class=o.first_class,
        ignore_index=o.ignore_index, derive_first=derive_first, validate=validate, field_weights=field_weights,
        **o.coefficients(),
    )
    return pair_loss(scc, valid, o.class_weights, o.reduction, uniform_grad=derive_first)


def fused_entry(backend: str, module: ModuleType):
    """Register ``module`` as backend ``backend``'s and return its ``activated_correlation``:
    :func:`activated_correlation` with the name bound. The registered op names its backend by
    string (custom ops take no modules) and finds the module's ``field`` here (a
    :class:`~scc_fast.backends._protocol.FusedBackend`), so this module never imports the registry
    or a backend."""
    _ENTRIES[backend] = module

    def activated(x: torch.Tensor, target: torch.Tensor, **options) -> tuple[torch.Tensor, torch.Tensor]:
        return activated_correlation(backend, x, target, **options)

    activated.__name__ = activated.__qualname__ = "activated_correlation"
    activated.__doc__ = (
        f"Per-pair SCC of ``activation(x)`` by backend {backend!r}, the probabilities never saved for "
        "backward; see :func:`scc_fast.backends.activation.activated_correlation` for the arguments."
    )
    return activated


def probability_correlation(backend: str, probs: torch.Tensor, target: torch.Tensor, **coefficients):
    """A fused backend's ``correlation`` (:class:`~scc_fast.backends._protocol.Backend`): the
    registered op on probabilities."""
    return activated_correlation(backend, probs, target, activation=None, **coefficients)
