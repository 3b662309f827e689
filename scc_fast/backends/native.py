"""Backend "native": the compiled CPU operator ``torch.ops.scc_fast.scc_forward`` (``csrc/``).

SPEC section 2 in C++: one complex FFT carries the spectra of p and y (split by Hermitian
symmetry), fused passes give the spatial sums, ``T_a``, ``T_b``, ``T_ab`` and the gradient field,
one complex inverse FFT gives the gradients of two pairs, and a last pass adds the spatial terms.
The gradient is computed in the forward call and saved; backward multiplies it by grad_output.

The operator is optional at build time (``scc_fast._C``). This module registers its fake
(meta) kernel, so ``torch.compile`` traces it, and its autograd formula.
"""

from __future__ import annotations

import torch

from .._numerics import refuse_double_backward

__all__ = ["correlation", "unavailable_reason", "unsupported_reason"]

_HOW_TO_BUILD = (
    "build it with `pip install --no-build-isolation -e .` (or `pip install --no-build-isolation .`) from a "
    "source checkout, with torch installed and a C++ compiler on PATH, and without SCC_FAST_SKIP_NATIVE=1"
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
    if not hasattr(torch.ops.scc_fast, "scc_forward"):
        _LOAD_ERROR = "scc_fast._C was imported but did not register torch.ops.scc_fast.scc_forward; " + _HOW_TO_BUILD
        return _LOAD_ERROR
    _register_python_side()
    _REGISTERED = True
    return None


def _register_python_side() -> None:
    @torch.library.register_fake("scc_fast::scc_forward")
    def _(probs, target, first_class, include_dc, magnitude_weight, phase_weight, need_grad):
        torch._check(probs.dim() >= 3, lambda: f"probs must be B x C x spatial, got {tuple(probs.shape)}")
        torch._check(probs.dtype in (torch.float32, torch.float64), lambda: f"probs must be float32/64, got {probs.dtype}")
        pairs = probs.shape[:2]
        grad = probs.new_empty(probs.shape) if need_grad else probs.new_empty((0,))
        return probs.new_empty(pairs), probs.new_empty(pairs, dtype=torch.bool), grad

    def setup_context(ctx, inputs, output):
        # No zero-filled gradients for the outputs nothing flows into (valid, and the B x C x spatial
        # grad): that would cost a full-size allocation in every backward.
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(output[2])

    def backward(ctx, grad_scc, grad_valid, grad_grad):
        refuse_double_backward("native")
        (grad,) = ctx.saved_tensors
        torch._check(grad.dim() >= 3, lambda: "scc_forward was called with need_grad=False; it has no gradient")
        if grad_scc is None:
            return None, None, None, None, None, None, None
        upstream = grad_scc.reshape(grad_scc.shape + (1,) * (grad.dim() - 2))
        return grad * upstream, None, None, None, None, None, None

    torch.library.register_autograd("scc_fast::scc_forward", backward, setup_context=setup_context)


def unavailable_reason() -> str | None:
    return _load()


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
    reason = _load()
    if reason is not None:
        raise RuntimeError(f"backend 'native' cannot run: {reason}")
    reason = unsupported_reason(probs, target)
    if reason is not None:
        raise RuntimeError(f"backend 'native' cannot run: {reason}")
    need_grad = torch.is_grad_enabled() and probs.requires_grad
    scc, valid, _ = torch.ops.scc_fast.scc_forward(
        probs, target, int(first_class), bool(include_dc), float(magnitude_weight), float(phase_weight), need_grad
    )
    return scc, valid
