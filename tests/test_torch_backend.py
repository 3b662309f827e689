"""Backend "torch" against the float64 reference (docs/loss.md section 6 tolerances)."""

from __future__ import annotations

import itertools

import pytest
import torch

import scc_fast
from scc_fast.backends import torch_fft
from scc_fast.reference import reference_complex_correlation, reference_correlation

from _helpers import make_inputs, per_pair_grad, rel_err


@pytest.mark.parametrize("shape", [(2, 3, 12, 9), (1, 2, 5, 6, 7)])
@pytest.mark.parametrize("include_dc", [False, True])
@pytest.mark.parametrize("labels", [True, False])
def test_complex_kind_equals_fft_formula(shape, include_dc, labels):
    logits, target = make_inputs(shape, labels, logits=True)
    probs = torch.softmax(logits, 1)
    ref, ref_valid, ref_grad = per_pair_grad(reference_complex_correlation, probs, target, include_dc=include_dc)
    out, valid, grad = per_pair_grad(torch_fft.complex_correlation, probs, target, include_dc=include_dc)
    assert torch.equal(valid, ref_valid)
    assert rel_err(out, ref) <= 1e-10
    assert rel_err(grad, ref_grad) <= 1e-10


def test_first_class_maps_labels_to_channels():
    logits, target = make_inputs((2, 3, 10, 11), labels=True, logits=True)
    probs = torch.softmax(logits, 1)[:, 1:]
    ref, _ = reference_correlation(probs, target, first_class=1)
    out, _ = torch_fft.correlation(probs, target, first_class=1)
    assert rel_err(out, ref) <= 1e-10


@pytest.mark.parametrize("include_dc", [False, True])
def test_gradcheck(include_dc):
    logits, target = make_inputs((1, 2, 6, 5), labels=True, seed=3, logits=True)
    probs = torch.softmax(logits, 1).requires_grad_(True)
    fn = lambda p: torch_fft.correlation(p, target, include_dc=include_dc, magnitude_weight=0.4, phase_weight=0.6)[0]
    assert torch.autograd.gradcheck(fn, (probs,), eps=1e-6, atol=1e-7)


def test_gradcheck_3d_float_target():
    logits, target = make_inputs((1, 2, 4, 3, 5), labels=False, seed=4, logits=True)
    probs = torch.softmax(logits, 1).requires_grad_(True)
    fn = lambda p: torch_fft.correlation(p, target)[0]
    assert torch.autograd.gradcheck(fn, (probs,), eps=1e-6, atol=1e-7)


# ---------------------------------------------------------------- public API, torch vs reference


def _loss_and_grad(backend, logits, target, **kw):
    x = logits.detach().clone().requires_grad_(True)
    loss = scc_fast.scc_loss(x, target, backend=backend, **kw)
    upstream = torch.rand(loss.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64).to(loss.dtype)
    (grad,) = torch.autograd.grad((loss * upstream).sum(), x)
    return loss.detach(), grad


@pytest.mark.parametrize("include_background", [True, False])
def test_scc_loss_float_target(include_background):
    logits, target = make_inputs((2, 3, 9, 12), labels=False, seed=5, logits=True)
    kw = dict(softmax=True, include_background=include_background, reduction="none")
    ref, ref_grad = _loss_and_grad("reference", logits, target, **kw)
    out, grad = _loss_and_grad("torch", logits.float(), target.float(), **kw)
    assert out.shape == (2, 3 if include_background else 2)
    assert rel_err(out, ref) <= 1e-5 and rel_err(grad, ref_grad) <= 1e-5


def test_ignore_index_zeroes_voxels_in_prediction_and_target():
    logits, target = make_inputs((2, 3, 10, 10), labels=True, seed=6, logits=True)
    target[:, :3] = 255
    out = scc_fast.scc_loss(logits, target, softmax=True, ignore_index=255, reduction="none", backend="torch")
    probs = torch.softmax(logits, 1)
    probs[:, :, :3] = 0
    y = torch.nn.functional.one_hot(target.clamp_max(2), 3).movedim(-1, 1).double()
    y[:, :, :3] = 0
    scc, valid = reference_correlation(probs, y)
    assert rel_err(out, torch.where(valid, 1 - scc, torch.zeros_like(scc))) <= 1e-10


def test_ignore_index_inside_class_range():
    """An ignore_index that is also a class id: its voxels count for no class."""
    logits, target = make_inputs((1, 3, 8, 9), labels=True, seed=8, logits=True)
    ref, ref_grad = _loss_and_grad("reference", logits, target, softmax=True, ignore_index=2, reduction="none")
    out, grad = _loss_and_grad("torch", logits, target, softmax=True, ignore_index=2, reduction="none")
    assert out[0, 2] == 0  # the class is gone from the target: degenerate
    assert rel_err(out, ref) <= 1e-10 and rel_err(grad, ref_grad) <= 1e-10


def test_single_channel_binary_labels():
    logits = torch.randn(2, 1, 12, 12, dtype=torch.float64)
    target = (torch.rand(2, 12, 12) > 0.7).long()
    ref, ref_grad = _loss_and_grad("reference", logits, target, sigmoid=True)
    out, grad = _loss_and_grad("torch", logits, target, sigmoid=True)
    mask = target.unsqueeze(1).double()
    scc, _ = reference_correlation(torch.sigmoid(logits), mask)
    assert rel_err(out, 1 - scc.mean()) <= 1e-10
    assert rel_err(out, ref) <= 1e-10 and rel_err(grad, ref_grad) <= 1e-10


# ---------------------------------------------------------------- degenerate pairs and edge values


@pytest.mark.parametrize("backend", ["torch", "reference"])
@pytest.mark.parametrize("include_dc", [False, True])
def test_degenerate_pairs_excluded(backend, include_dc):
    logits, target = make_inputs((2, 3, 8, 8), labels=True, seed=9, logits=True)
    target[0] = 0  # image 0: class 0 covers everything, classes 1 and 2 absent
    x = logits.clone().requires_grad_(True)
    loss = scc_fast.scc_loss(x, target, softmax=True, include_dc=include_dc, reduction="none", backend=backend)
    expect_zero = [(0, 1), (0, 2)] + ([] if include_dc else [(0, 0)])
    for b, c in expect_zero:
        assert loss[b, c] == 0
    mean = scc_fast.scc_loss(logits, target, softmax=True, include_dc=include_dc, backend=backend)
    n_valid = 6 - len(expect_zero)
    assert torch.allclose(mean, loss.sum() / n_valid)
    # A degenerate pair passes no gradient to its channel's map (softmax couples channels, so
    # test through probabilities).
    probs = torch.softmax(logits, 1).requires_grad_(True)
    per_pair = scc_fast.scc_loss(probs, target, include_dc=include_dc, reduction="none", backend=backend)
    (g,) = torch.autograd.grad(per_pair[0, 1] + per_pair[0, 2], probs)
    assert torch.all(g == 0)


@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_all_pairs_degenerate_gives_zero_loss_and_gradient(backend):
    x = torch.randn(2, 2, 8, 8, requires_grad=True)
    target = torch.zeros(2, 8, 8, dtype=torch.long)
    loss = scc_fast.scc_loss(x, target, softmax=True, include_background=False, backend=backend)
    loss.backward()
    assert loss.item() == 0 and torch.all(x.grad == 0)


@pytest.mark.parametrize("backend", ["torch", "reference"])
@pytest.mark.parametrize("include_dc", [False, True])
def test_constant_prediction_is_finite_and_zero_correlation(backend, include_dc):
    probs = torch.full((1, 2, 9, 8), 0.5, requires_grad=True)
    target = torch.randint(0, 2, (1, 9, 8))
    scc = scc_fast.spectral_correlation(probs, target, include_dc=include_dc, kind="magnitude", backend=backend)
    loss = scc_fast.scc_loss(probs, target, include_dc=include_dc, backend=backend)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(probs.grad).all()
    if not include_dc:  # no energy outside DC: the correlation is defined as 0
        assert torch.all(scc == 0)
    else:  # DC alone: a flat-free magnitude spectrum, finite and well defined
        ref = scc_fast.spectral_correlation(probs.double(), target, include_dc=True, kind="magnitude", backend="reference")
        assert rel_err(scc, ref) <= 1e-5


@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_extreme_logits_are_finite(backend):
    x = (torch.randint(0, 2, (2, 3, 10, 9)).float() * 2 - 1) * 1e4
    x.requires_grad_(True)
    target = torch.randint(0, 3, (2, 10, 9))
    loss = scc_fast.scc_loss(x, target, softmax=True, backend=backend)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()


def test_perfect_prediction_scores_one():
    target = torch.randint(0, 3, (2, 12, 10))
    probs = torch.nn.functional.one_hot(target, 3).movedim(-1, 1).double()
    for kind in ("scc", "magnitude", "phase", "complex"):
        scc = scc_fast.spectral_correlation(probs, target, kind=kind, backend="torch")
        assert torch.allclose(scc, torch.ones_like(scc)), kind
    assert scc_fast.scc_loss(probs, target, backend="torch").abs() < 1e-12


# ---------------------------------------------------------------- dtypes


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 3, 12, 10), (1, 2, 6, 5, 7)])
def test_half_precision_input(dtype, shape):
    logits, target = make_inputs(shape, labels=True, seed=10, logits=True)
    x = logits.to(dtype)
    loss, grad = _loss_and_grad("torch", x, target, softmax=True)
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    ref, ref_grad = _loss_and_grad("reference", x.double(), target, softmax=True)
    assert rel_err(loss, ref) <= 1e-5
    assert rel_err(grad, ref_grad) <= 1e-2  # the gradient is rounded to the input's 8-11 bit mantissa


@pytest.mark.parametrize("kind", ["scc", "magnitude", "phase", "complex"])
@pytest.mark.parametrize("labels", [True, False])
def test_spectral_correlation_kinds(kind, labels):
    logits, target = make_inputs((2, 3, 11, 12), labels=labels, seed=11, logits=True)
    probs = torch.softmax(logits, 1)
    ref = scc_fast.spectral_correlation(probs, target, kind=kind, backend="reference")
    out = scc_fast.spectral_correlation(probs.float(), target if labels else target.float(), kind=kind, backend="torch")
    assert out.shape == (2, 3) and out.dtype == torch.float32
    assert rel_err(out, ref) <= 1e-5
    assert (ref.abs() <= 1 + 1e-12).all()


def test_scc_kind_is_weighted_sum_of_magnitude_and_phase():
    logits, target = make_inputs((2, 3, 10, 10), labels=True, seed=12, logits=True)
    probs = torch.softmax(logits, 1)
    m = scc_fast.spectral_correlation(probs, target, kind="magnitude", backend="torch")
    p = scc_fast.spectral_correlation(probs, target, kind="phase", backend="torch")
    s = scc_fast.spectral_correlation(probs, target, magnitude_weight=0.25, phase_weight=0.75, backend="torch")
    assert torch.allclose(s, 0.25 * m + 0.75 * p)


def test_no_grad_input_skips_gradient():
    logits, target = make_inputs((1, 2, 8, 8), labels=True, logits=True)
    loss = scc_fast.scc_loss(logits, target, softmax=True, backend="torch")
    assert not loss.requires_grad


def test_reduction_semantics():
    logits, target = make_inputs((3, 4, 8, 9), labels=True, seed=13, logits=True)
    w = [0.5, 1.0, 2.0, 0.0]
    none = scc_fast.scc_loss(logits, target, softmax=True, weight=w, reduction="none", backend="torch")
    unweighted = scc_fast.scc_loss(logits, target, softmax=True, reduction="none", backend="torch")
    assert torch.allclose(none, unweighted * torch.tensor(w, dtype=none.dtype))
    total = scc_fast.scc_loss(logits, target, softmax=True, weight=w, reduction="sum", backend="torch")
    assert torch.allclose(total, none.sum())
    mean = scc_fast.scc_loss(logits, target, softmax=True, weight=w, reduction="mean", backend="torch")
    valid = unweighted != 0
    denom = (valid.double() * torch.tensor(w, dtype=torch.float64)).sum()
    assert torch.allclose(mean, none.sum() / denom)


def test_combinations_smoke():
    """Every combination of the boolean options runs and agrees with the reference."""
    logits, target = make_inputs((1, 3, 9, 8), labels=True, seed=14, logits=True)
    for include_background, include_dc, softmax in itertools.product([True, False], repeat=3):
        kw = dict(include_background=include_background, include_dc=include_dc, softmax=softmax, sigmoid=not softmax)
        ref, ref_grad = _loss_and_grad("reference", logits, target, **kw)
        out, grad = _loss_and_grad("torch", logits, target, **kw)
        assert rel_err(out, ref) <= 1e-10 and rel_err(grad, ref_grad) <= 1e-10, kw
