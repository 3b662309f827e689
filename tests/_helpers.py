"""Helpers every correctness test shares: the tolerances, the error measure, inputs and the
comparison against the float64 reference. Not a test module.

The tolerances are docs/loss.md section 6's, ``||out - ref|| / ||ref||`` for the per-pair values
and the input gradient against the float64 reference: float64 1e-10, float32 1e-5. They are
stated here once; tests import ``TOL`` rather than writing the numbers again.
"""

from __future__ import annotations

from typing import Callable

import torch

from scc_fast.reference import reference_correlation

TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def rel_err(out: torch.Tensor, ref: torch.Tensor, floor: float = 0.0) -> float:
    """||out - ref|| / max(||ref||, floor) in float64 on the CPU; the absolute error where that is 0.

    ``floor=1`` for losses and correlations: they are O(1) quantities (the loss is 1 - SCC), and
    when SCC is close to 1 (or a correlation close to 0) their own rounding is absolute, not
    relative to a small value.
    """
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    diff = torch.linalg.vector_norm(out - ref).item()
    scale = max(torch.linalg.vector_norm(ref).item(), floor)
    return diff / scale if scale > 0 else diff


def activate(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the channels, or the sigmoid of a single channel."""
    return torch.softmax(logits, dim=1) if logits.shape[1] > 1 else torch.sigmoid(logits)


def make_inputs(shape, labels: bool, seed: int = 0, ignore: float = 0.0, n_labels: int | None = None,
                follow: bool = False, logits: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities (float64, B x C x spatial) and integer labels B x spatial, or a soft float
    target of the probabilities' shape.

    Args:
        labels: integer labels (else a soft target, the activation of random logits).
        ignore: the fraction of voxels labelled -1, what ``scc_loss`` passes for ``ignore_index``.
        n_labels: labels drawn from 0 .. n_labels - 1 (default max(C, 2): one channel holds a mask).
        follow: probabilities that partly follow the target, as a network's do (SCC well away
            from 0, where a relative error means something).
        logits: return the logits (float64, 2 x standard normal) instead of their activation.
    """
    g = torch.Generator().manual_seed(seed)
    spatial = (shape[0],) + tuple(shape[2:])
    if labels:
        target = torch.randint(0, n_labels or max(shape[1], 2), spatial, generator=g)
        hint = torch.stack([(target == c) for c in range(shape[1])], 1).double()
        if ignore:
            target[torch.rand(spatial, generator=g) < ignore] = -1
    else:
        target = activate(torch.randn(shape, generator=g, dtype=torch.float64) * 3)
        hint = target
    z = torch.randn(shape, generator=g, dtype=torch.float64) * 2 + (2 * hint if follow else 0)
    return (z if logits else activate(z)), target


def per_pair_grad(fn: Callable, probs: torch.Tensor, target: torch.Tensor, seed: int = 1, **kw):
    """``(scc, valid, grad)``: per-pair values, validity and the input gradient of a random
    weighting of the per-pair output (so that grad_output is not all ones)."""
    x = probs.detach().clone().requires_grad_(True)
    scc, valid = fn(x, target, **kw)
    w = torch.rand(scc.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    (grad,) = torch.autograd.grad((scc * w.to(scc.device, scc.dtype)).sum(), x)
    return scc.detach(), valid, grad


def check_against_reference(fn: Callable, probs: torch.Tensor, target: torch.Tensor, dtype: torch.dtype,
                            device: str | torch.device = "cpu", tol: float | None = None, **kw):
    """``fn`` (a backend's ``correlation``) on ``probs`` in ``dtype`` on ``device`` against the
    float64 reference: dtypes, shapes, the valid mask exactly, finite values, and values and
    gradient within ``tol`` (default ``TOL[dtype]``). Returns ``fn``'s ``(scc, valid, grad)``."""
    tol = TOL[dtype] if tol is None else tol
    ref, ref_valid, ref_grad = per_pair_grad(reference_correlation, probs, target, **kw)
    t = target.to(device) if not target.is_floating_point() else target.to(device, dtype)
    out, valid, grad = per_pair_grad(fn, probs.to(device, dtype), t, **kw)
    assert out.dtype == dtype and grad.dtype == dtype and valid.dtype == torch.bool
    assert out.shape == ref.shape and grad.shape == probs.shape
    assert torch.equal(valid.cpu(), ref_valid)
    assert torch.isfinite(out).all() and torch.isfinite(grad).all()
    assert rel_err(out, ref) <= tol, rel_err(out, ref)
    if ref_grad.norm() > 0:
        assert rel_err(grad, ref_grad) <= tol, rel_err(grad, ref_grad)
    else:
        assert grad.abs().max() == 0
    return out, valid, grad
