"""Helpers shared by the tests of the fused activation (``test_activation``, ``test_native``) and the
correctness matrix (``test_matrix``). Not a test module."""

from __future__ import annotations

import torch

import scc_fast


def fused_case(shape, ignore_index, seed=0):
    """Logits (float64, spread x3) and integer labels; with ``ignore_index`` the first two rows of
    image 0 carry it (255 needs uint8 labels, as a user's masks often are)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=g, dtype=torch.float64) * 3
    labels = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=g)
    if ignore_index == 255:
        labels = labels.to(torch.uint8)
    if ignore_index is not None:
        labels[0, :2] = ignore_index
    return logits, labels


def fused_vs_reference(backend, activation, include_background, ignore_index, shape, dtype, seed=0):
    """``(out, ref, grad, ref_grad)``: ``scc_loss`` per pair (reduction "none") with the activation,
    background drop and ``ignore_index``, and its input gradient under random per-pair upstream
    gradients, from ``backend`` in ``dtype`` and from the float64 reference. ``activation=None``
    feeds probabilities (a softmax of the logits)."""
    logits, labels = fused_case(shape, ignore_index, seed)
    kw = dict(
        softmax=activation == "softmax",
        sigmoid=activation == "sigmoid",
        include_background=include_background,
        ignore_index=ignore_index,
        reduction="none",
    )
    inputs = logits if activation else torch.softmax(logits, 1)
    x_ref = inputs.clone().requires_grad_(True)
    ref = scc_fast.scc_loss(x_ref, labels, backend="reference", **kw)
    upstream = torch.rand(ref.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64) + 0.5
    (ref * upstream).sum().backward()
    x = inputs.to(dtype).requires_grad_(True)
    out = scc_fast.scc_loss(x, labels, backend=backend, **kw)
    (out * upstream.to(out.dtype)).sum().backward()
    return out.detach(), ref.detach(), x.grad, x_ref.grad
