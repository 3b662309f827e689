"""Backend "native": the compiled CPU operator ``torch.ops.scc_fast.scc_forward`` (``csrc/``).

The identities of docs/loss.md section 5 in C++: one complex FFT carries the spectra of p and y (split by Hermitian
symmetry), fused passes give the spatial sums, ``T_a``, ``T_b``, ``T_ab`` and the gradient field,
one complex inverse FFT gives the gradients of two pairs (the spatial terms added in the spectrum),
and a last pass unpacks them.
The transforms run in place, by the operator's own mixed-radix FFT (AVX-512 or AVX2, float32) or MKL where
libtorch exports it (:func:`fft_engine`), on maps whose rows are padded where the last axis is a
multiple of 8 (power-of-two strides collide in the cache), and the operator's buffers are reused
from call to call (:func:`cached_bytes`, :func:`empty_cache`).
The gradient field dSCC/dp is computed in the forward call and saved; backward is one elementwise
pass (``torch.ops.scc_fast.scc_backward``). The softmax or sigmoid (and the ignore mask) run
inside the operator, so no probability tensor is made or kept.

The operator runs inside the fused backends' one registered op,
``torch.ops.scc_fast.activated_correlation`` (:mod:`scc_fast.backends.activation`), as this
module's :func:`field`, :func:`backward` and :func:`fake`. It is optional at build time
(``scc_fast._C``); this module registers the C++ operators' fake (meta) kernels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

import sys

from .. import _settings
from .._checks import raise_flagged
from ._protocol import FieldRequest, LossOptions
from .activation import ACTIVATIONS, activation_name, fused_entry, fused_loss, probability_correlation  # the C++ enum Activation (csrc/cpu/scc_cpu.cpp) uses these codes

__all__ = [
    "activated_correlation",
    "cached_bytes",
    "correlation",
    "empty_cache",
    "fft_engine",
    "isa",
    "loss",
    "unavailable_reason",
    "unsupported_reason",
    "validates_in_op",
]

_HOW_TO_BUILD = (
    "build it with `pip install --no-build-isolation -e .` (or `pip install --no-build-isolation .`) from a "
    "source checkout, with torch installed and a C++ compiler on PATH, and without SCC_FAST_SKIP_NATIVE=1"
)

# The operators scc_fast._C registers (csrc/scc_ops.cpp, csrc/cpu/).
_OPS = (
    "scc_forward",
    "scc_backward",
    "native_fft_engine",
    "native_isa",
    "native_cache_bytes",
    "native_empty_cache",
    "native_radix_fft",
    "native_configure",
)

_LOAD_ERROR: str | None = None
_REGISTERED = False


def _load() -> str | None:
    """Import ``scc_fast._C`` once and register the Python side of the op; the error text if it fails."""
    global _LOAD_ERROR, _REGISTERED
    if _REGISTERED or _LOAD_ERROR is not None:
        return _LOAD_ERROR
    try:
        from .. import _C  # noqa: F401  (loading the library registers the op)
    except ImportError as exc:
        _LOAD_ERROR = (
            f"scc_fast was installed without its native operator (importing scc_fast._C failed: {exc}); "
            + _HOW_TO_BUILD
        )
        return _LOAD_ERROR
    missing = [name for name in _OPS if not hasattr(torch.ops.scc_fast, name)]
    if missing:
        _LOAD_ERROR = (
            f"scc_fast._C was imported but did not register torch.ops.scc_fast.{', '.join(missing)} "
            "(a build from older sources?); " + _HOW_TO_BUILD
        )
        return _LOAD_ERROR
    _register_python_side()
    _settings.on_change(_configure)
    _REGISTERED = True
    return None


def _configure(s: _settings.Settings) -> None:
    """Hand the operator its switches (scc_fast._settings; csrc/cpu/scc_cpu_settings.h)."""
    torch.ops.scc_fast.native_configure(
        s.native_fft,
        s.native_isa,
        -1 if s.native_cache_mb is None else s.native_cache_mb,
        0 if s.native_chunk_bytes is None else s.native_chunk_bytes,
        -1 if s.native_row_pad is None else s.native_row_pad,
        s.native_complement,
    )


def _register_python_side() -> None:
    @torch.library.register_fake("scc_fast::scc_forward")
    def _(input, target, activation, first_channel, first_class, ignore_label, include_dc, magnitude_weight,
          phase_weight, need_grad):
        torch._check(input.dim() >= 3, lambda: f"input must be B x C x spatial, got {tuple(input.shape)}")
        torch._check(input.dtype in (torch.float32, torch.float64), lambda: f"input must be float32/64, got {input.dtype}")
        torch._check(0 <= first_channel < input.shape[1], lambda: f"first_channel out of range: {first_channel}")
        pairs = (input.shape[0], input.shape[1] - first_channel)
        grad = input.new_empty(pairs + tuple(input.shape[2:])) if need_grad else input.new_empty((0,))
        uses_stats = activation == ACTIVATIONS["softmax"] or ignore_label is not None
        stats = input.new_empty((input.shape[0], 2) + tuple(input.shape[2:])) if uses_stats else input.new_empty((0,))
        flags = input.new_empty((input.shape[0],), dtype=torch.uint8)
        return input.new_empty(pairs), input.new_empty(pairs, dtype=torch.bool), grad, stats, flags

    @torch.library.register_fake("scc_fast::scc_backward")
    def _(field, grad_scc, input, stats, activation, first_channel):
        return input.new_empty(input.shape)


def unavailable_reason() -> str | None:
    return _load()


def _require() -> None:
    reason = _load()
    if reason is not None:
        raise RuntimeError(f"backend 'native' cannot run: {reason}")


def fft_engine(spatial_shape: Sequence[int] | None = None, dtype: torch.dtype = torch.float32) -> str:
    """The transforms the operator uses for maps of ``spatial_shape`` (e.g. ``(64, 64, 64)``) in
    ``dtype`` (float32 or float64); without a shape, those of shapes the first engine does not fit.

    - ``"radix_avx512"`` or ``"radix_avx2"``: the operator's own in-place mixed-radix FFT (radices
      2, 3, 4, 5, 7), for float32 maps with 2 or 3 axes whose sizes have no prime factor above 7,
      the last a multiple of 8 from 16 to 2048 (64^3, 224^2, 96^3, 256^2, ...), in the build of the
      inner loops' instruction set (:func:`isa`: AVX-512, or AVX2 with FMA). Where MKL runs its
      generic code (AMD CPUs) a step is faster with it than with MKL's transforms; where MKL runs
      its own AVX2 or AVX-512 code (Intel CPUs), somewhat slower (bench/RESULTS.md, 'CPU: the
      operator's own mixed-radix FFT' and 'CPU: the radix transform on AVX2');
    - ``"mkl_inplace"``: MKL's DFTI called in place, where libtorch exports it (x86-64 torch builds);
    - ``"aten"``: ``torch.fft``, out of place.

    The private setting ``native_fft`` (:mod:`scc_fast._settings`) ``"mkl"`` keeps MKL for every
    shape, ``"aten"`` selects ATen's transforms (comparisons, tests). All give the same results to
    rounding.
    """
    _require()
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"fft_engine: dtype must be torch.float32 or torch.float64, got {dtype}")
    shape = [] if spatial_shape is None else [int(s) for s in spatial_shape]
    if spatial_shape is not None and (not shape or min(shape) < 1):
        raise ValueError(f"fft_engine: spatial_shape must be a non-empty sequence of sizes >= 1, got {spatial_shape!r}")
    return torch.ops.scc_fast.native_fft_engine(shape, dtype)


def isa() -> str:
    """The build of the operator's inner loops that the next call runs: ``"avx512"``, ``"avx2"`` or
    ``"baseline"``, the widest this CPU supports (x86-64 builds with GCC carry all three).

    The private setting ``native_isa`` (``"baseline"``, ``"avx2"``, ``"avx512"``;
    :mod:`scc_fast._settings`) caps it (comparisons, tests), and with it the build of the
    operator's own FFT (:func:`fft_engine`). The builds give the same results to rounding.
    """
    _require()
    return torch.ops.scc_fast.native_isa()


def cached_bytes() -> int:
    """Bytes of released operator buffers kept for reuse.

    The gradient field and statistics saved for backward, the workspace and the input gradient
    are the same sizes call after call in training; writing into reused memory instead of fresh
    pages is measurably faster (``bench/RESULTS.md``, 'CPU: transforms in place, operator buffers
    reused'). The cache holds at most the private setting ``native_cache_mb`` MiB
    (:mod:`scc_fast._settings`; default: 64, or the bytes of the latest call's buffers where those
    are more, so that one step's buffers always fit; ``0`` turns it off); memory in use by live
    tensors is never counted or touched.
    """
    _require()
    return int(torch.ops.scc_fast.native_cache_bytes())


def empty_cache() -> None:
    """Frees the released operator buffers the cache holds (as ``torch.cuda.empty_cache`` does)."""
    _require()
    torch.ops.scc_fast.native_empty_cache()


def validates_in_op(
    *, activation: str | None, labels: bool, first_channel: int, ignore_index: int | None, x: torch.Tensor | None = None
) -> bool:
    """Whether :func:`activated_correlation` makes ``validate=True``'s checks inside the operator.

    The softmax reads every logit (a NaN/Inf test rides on its max) and the build pass counts
    each class's voxels, whose sum is the image's size exactly when every label is a class of the
    loss: with softmax, integer labels, every channel in the loss and no ignore_index, both
    checks cost no pass of their own (the separate passes cost a few percent of a step:
    bench/RESULTS.md, 'CPU: `validate` inside the operator ...'). Otherwise the checks run before
    the operator. ``x`` (the input; other backends' answer depends on it) is not needed here.
    """
    return activation == "softmax" and labels and first_channel == 0 and ignore_index is None


def unsupported_reason(probs: torch.Tensor, target: torch.Tensor) -> str | None:
    if probs.device.type != "cpu":
        return f"the native operator is built for CPU only, got probs on {probs.device}"
    if probs.dtype not in (torch.float32, torch.float64):
        return f"the native operator takes float32 or float64 probs, got {probs.dtype}"
    if target.is_complex() or target.dtype == torch.bool:
        return f"the native operator takes integer labels or a float target, got {target.dtype}"
    return None


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
        probs: B x C' x spatial, float32 or float64, on CPU.
        target: integer labels B x spatial or a float target B x C' x spatial.

    Returns:
        ``(scc, valid)``, both B x C'; ``scc`` is differentiable in ``probs``.
    """
    return probability_correlation("native", probs, target, first_class=first_class, include_dc=include_dc,
                                   magnitude_weight=magnitude_weight, phase_weight=phase_weight)


def activated_correlation(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    activation: str | None,
    first_channel: int = 0,
    first_class: int = 0,
    ignore_index: int | None = None,
    include_dc: bool = False,
    magnitude_weight: float = 0.5,
    phase_weight: float = 0.5,
    validate: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair SCC of ``activation(input)``, the activation fused into the operator.

    The probabilities are never a tensor: the forward pass computes them inside its passes
    (softmax from per-voxel max and 1 / sum, 2 x B x spatial values, kept for backward), and
    backward recomputes them from ``input`` while it applies the activation's Jacobian, in one
    pass. This saves the B x C x spatial probabilities and the separate softmax forward and
    backward.

    Args:
        input: B x C x spatial logits (``activation`` "softmax" over C, or "sigmoid"), or
            probabilities (``activation=None``); float32 or float64, on CPU.
        target: integer labels B x spatial, or a float target B x C' x spatial for the
            channels in the loss (C' = C - first_channel).
        activation: None, "softmax" or "sigmoid".
        first_channel: channels before it take part in the softmax but not in the loss (1
            leaves the background out).
        first_class: the label of loss channel 0 (integer labels only).
        ignore_index: voxels with this label count as probability 0 and target 0 in every
            channel, and get no gradient (integer labels only).
        validate: raise ``scc_loss(validate=True)``'s ``ValueError`` for labels outside 0 .. C - 1
            and for NaN/Inf in ``input``, from what the operator's passes saw (after its forward
            call). Only where :func:`validates_in_op` is true.

    Returns:
        ``(scc, valid)``, both B x C'; ``scc`` is differentiable in ``input``.
    """
    return _activated(input, target, activation=activation, first_channel=first_channel, first_class=first_class,
                      ignore_index=ignore_index, include_dc=include_dc, magnitude_weight=magnitude_weight,
                      phase_weight=phase_weight, validate=validate)


def field(x: torch.Tensor, target: torch.Tensor, request: FieldRequest, field_weights=None):
    """``(scc, valid, field, stats)`` (:class:`scc_fast.backends._protocol.FusedBackend`) by the
    operator ``torch.ops.scc_fast.scc_forward``: ``stats`` are the per-voxel softmax statistics
    its backward reads (shape (0,) where there are none)."""
    r = request
    _require()
    if r.derive_first or field_weights is not None:
        raise ValueError("backend 'native' derives no class's field: derive_first must be False, field_weights None")
    name = activation_name(r.activation)
    labels = not target.is_floating_point()
    if r.validate and not validates_in_op(activation=name, labels=labels, first_channel=r.first_channel,
                                          ignore_index=r.ignore_index):
        raise ValueError(
            "validate=True needs softmax, integer labels, first_channel=0 and no ignore_index (validates_in_op); "
            f"got activation={name!r}, target dtype {target.dtype}, first_channel={r.first_channel}, "
            f"ignore_index={r.ignore_index!r}"
        )
    reason = unsupported_reason(x, target)
    if reason is not None:
        raise RuntimeError(f"backend 'native' cannot run: {reason}")
    scc, valid, grad, stats, flags = torch.ops.scc_fast.scc_forward(
        x, target, r.activation, r.first_channel, r.first_class, r.ignore_index, *r.coefficients(), r.need_grad
    )
    if r.validate:  # per-image flags (csrc/cpu/scc_cpu.cpp, enum InputFlag: the FLAG_* bits)
        raise_flagged(flags, target, x.shape[1])
    return scc, valid, grad, stats


def backward(backend, x, target, field, aux, grad_scc, request: FieldRequest, scale=None, eager=False):
    """dL/dx by the operator's backward, ``torch.ops.scc_fast.scc_backward``: the upstream
    gradient (times ``scale`` where given), the field and the activation's Jacobian, p recomputed
    from ``x`` and the saved statistics ``aux``, in one pass."""
    if scale is not None:
        grad_scc = grad_scc * scale
    return torch.ops.scc_fast.scc_backward(field, grad_scc.contiguous(), x, aux, request.activation,
                                           request.first_channel)


def fake(x: torch.Tensor, target: torch.Tensor, request: FieldRequest):
    """The fake outputs of :func:`field` (the registered op's fake implementation)."""
    pairs = (x.shape[0], x.shape[1] - request.first_channel)
    grad = x.new_empty(pairs + tuple(x.shape[2:])) if request.need_grad else x.new_empty((0,))
    uses_stats = request.activation == ACTIVATIONS["softmax"] or request.ignore_index is not None
    stats = x.new_empty((x.shape[0], 2) + tuple(x.shape[2:])) if uses_stats else x.new_empty((0,))
    return x.new_empty(pairs), x.new_empty(pairs, dtype=torch.bool), grad, stats


def loss(x: torch.Tensor, target: torch.Tensor, options: LossOptions) -> torch.Tensor:
    """The loss (:class:`scc_fast.backends._protocol.Backend`): the activation, background drop and
    ignore mask inside the operator, and ``validate``'s checks too where :func:`validates_in_op`."""
    o = options
    checks_in_op = o.validate and validates_in_op(
        activation=o.activation, labels=not target.is_floating_point(), first_channel=o.first_channel,
        ignore_index=o.ignore_index,
    )
    return fused_loss("native", x, target, o, checks_in_op=checks_in_op)


# The registered op of scc_fast.backends.activation calls field, backward and fake.
_activated = fused_entry("native", sys.modules[__name__])
