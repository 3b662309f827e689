"""The loss's reduction over (image, class) pairs (scc_fast/_reduction.py): value and gradient
against autograd through the plain formula in float64, for the torch ops and for the Triton kernel
the GPU uses (run here under TRITON_INTERPRET=1); every reduction, with and without class weights,
degenerate pairs (whose scc is NaN here and must not leak) and every pair degenerate."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

import scc_fast
from scc_fast import _reduction
from scc_fast._reduction import pair_loss

from _aot import assert_compiles

HAVE_KERNEL = importlib.util.find_spec("triton") is not None and os.environ.get("TRITON_INTERPRET") == "1"
PATHS = ["torch"] + (["kernel"] if HAVE_KERNEL else [])


def formula(scc, valid, cw, reduction):
    loss = torch.where(valid, 1.0 - scc, torch.zeros_like(scc))
    pair_w = valid.double()
    if cw is not None:
        loss, pair_w = loss * cw, pair_w * cw
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    total = pair_w.sum()
    return loss.sum() / torch.where(total > 0, total, torch.ones_like(total))


def case(shape, all_degenerate, weighted, seed=5):
    gen = torch.Generator().manual_seed(seed)
    scc = torch.randn(shape, dtype=torch.float64, generator=gen)
    valid = torch.rand(shape, generator=gen) > 0.3
    if all_degenerate:
        valid[:] = False
    scc[~valid] = float("nan")
    cw = torch.rand(shape[1], dtype=torch.float64, generator=gen) + 0.1 if weighted else None
    if weighted:
        cw[-1] = 0.0  # a class weighted out
    return scc, valid, cw


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("all_degenerate", [False, True])
@pytest.mark.parametrize("shape", [(3, 4), (7, 5)])
def test_pair_loss_matches_autograd_through_the_formula(monkeypatch, path, reduction, weighted, all_degenerate, shape):
    """Tolerance: float32 rounding (1e-6 relative) for the float32 inputs both paths get."""
    if path == "kernel":
        monkeypatch.setattr(_reduction, "_use_kernel", lambda scc: True)
    scc64, valid, cw = case(shape, all_degenerate, weighted)
    upstream = torch.randn(shape, dtype=torch.float64) if reduction == "none" else torch.tensor(1.7, dtype=torch.float64)
    a = scc64.float().requires_grad_(True)
    b = scc64.clone().requires_grad_(True)
    out = pair_loss(a, valid, cw, reduction)
    ref = formula(b, valid, cw, reduction)
    out.backward(upstream.float())
    ref.backward(upstream)
    assert out.requires_grad and out.shape == ref.shape and out.dtype == torch.float32
    assert torch.allclose(out.double(), ref.detach(), rtol=1e-6, atol=1e-7), (out, ref)
    assert torch.isfinite(a.grad).all()
    assert torch.allclose(a.grad.double(), b.grad, rtol=1e-6, atol=1e-7), (a.grad, b.grad)
    if all_degenerate and reduction != "none":
        assert out.item() == 0 and torch.all(a.grad == 0)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
def test_uniform_grad_leaves_the_valid_factor_out_of_the_derivative(monkeypatch, path, reduction, weighted):
    """``uniform_grad``: the same loss, and a derivative by scc of -1 / total (mean, total the valid
    pairs' class weights) or -1 for every pair, degenerate ones and class weights included: backend
    triton_fft's derived class 0 needs one upstream value for every class of an image (its field
    carries the class weights)."""
    if path == "kernel":
        monkeypatch.setattr(_reduction, "_use_kernel", lambda scc: True)
    scc64, valid, cw = case((3, 4), False, weighted)
    a = scc64.float().requires_grad_(True)
    out = pair_loss(a, valid, cw, reduction, uniform_grad=True)
    ref = formula(scc64, valid, cw, reduction)
    out.backward(torch.ones_like(out))
    w = torch.ones(3, 4, dtype=torch.float64)
    if reduction == "mean":
        w = w / (valid.double() * (cw if cw is not None else 1.0)).sum()
    assert torch.allclose(out.double(), ref, rtol=1e-6, atol=1e-7)
    assert torch.allclose(a.grad.double(), -w, rtol=1e-6, atol=1e-7), (a.grad, -w)
    assert (~valid).any() and (a.grad[~valid] != 0).all()  # not the valid-masked derivative
    if cw is not None:  # (the weighted case weights its last class out: not in the derivative)
        assert (cw == 0).any() and (a.grad[:, cw == 0] != 0).all()


@pytest.mark.skipif(not HAVE_KERNEL, reason="Triton interpreter not available")
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_kernel_loops_over_blocks(reduction):
    """More pairs than one block (37 pairs, blocks of 16): every block is summed and written."""
    from scc_fast._reduction_kernel import pair_loss as kernel

    scc64, valid, cw = case((37, 3), False, True)
    loss, dscc = kernel(scc64.float(), valid, cw, reduction, block=16)
    b = scc64.clone().requires_grad_(True)
    ref = formula(b, valid, cw, reduction)
    ref.backward(torch.ones_like(ref))
    assert torch.allclose(loss.double(), ref.detach(), rtol=1e-6, atol=1e-7)
    assert torch.allclose(dscc.double(), b.grad, rtol=1e-6, atol=1e-7)


@pytest.mark.skipif(not HAVE_KERNEL, reason="Triton interpreter not available")
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_scc_loss_with_the_kernel_reduction_matches(monkeypatch, reduction):
    """The public loss with the reduction's kernel (as on a GPU) equals it with torch ops."""
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 3, 10, 9, generator=gen)
    labels = torch.randint(0, 3, (2, 10, 9), generator=gen)
    labels[1][labels[1] == 2] = 0  # a degenerate pair
    kw = dict(softmax=True, weight=[0.5, 2.0, 1.0], reduction=reduction, backend="torch")
    results = []
    for use in (False, True):
        monkeypatch.setattr(_reduction, "_use_kernel", lambda scc, use=use: use)
        x = logits.clone().requires_grad_(True)
        loss = scc_fast.scc_loss(x, labels, **kw)
        loss.sum().backward()
        results.append((loss.detach(), x.grad))
    assert torch.allclose(results[0][0], results[1][0], rtol=1e-6, atol=1e-7)
    assert torch.allclose(results[0][1], results[1][1], rtol=1e-5, atol=1e-9)


def test_kernel_is_for_float32_cuda_in_eager_mode_only():
    assert not _reduction._use_kernel(torch.zeros(2, 3))  # CPU: torch ops
    assert not _reduction._use_kernel(torch.zeros(2, 3, dtype=torch.float64))


_AOT_SCRIPT = r"""
import itertools

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from scc_fast import _reduction_kernel as m

for red in (0, 1, 2):
    for (w, wt), uniform in itertools.product(((True, "*fp64"), (True, "*fp32"), (False, "*fp32")), (False, True)):
        sig = dict(scc_ptr="*fp32", valid_ptr="*i1", weight_ptr=wt, loss_ptr="*fp32", dscc_ptr="*fp32", n_pairs="i32",
                   n_classes="i32")
        consts = dict(HAS_WEIGHT=w, REDUCTION=red, UNIFORM_GRAD=uniform, BLOCK=1024)
        triton.compile(ASTSource(fn=m._pair_loss_kernel, signature={**sig, **{k: "constexpr" for k in consts}},
                                 constexprs=consts), target=GPUTarget("cuda", 90, 32))
print("compiled")
"""


def test_kernel_compiles_for_the_gpu():
    """The interpreter accepts code the compiler rejects: compile every variant for sm_90 (H100 /
    H200) ahead of time, no GPU needed."""
    pytest.importorskip("triton.backends.nvidia")
    assert_compiles(_AOT_SCRIPT, timeout=300)
