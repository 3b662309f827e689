"""Public API surface: modules, dispatch, and the errors of issue 2's "Bad input" list."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import scc_fast
from scc_fast import DiceCESCCLoss, SCCLoss, SpatialSpectralLoss, scc_loss, spectral_correlation


def inputs(shape=(2, 3, 8, 8)):
    g = torch.Generator().manual_seed(0)
    return torch.randn(shape, generator=g), torch.randint(0, shape[1], (shape[0],) + shape[2:], generator=g)


# ---------------------------------------------------------------- errors

ERROR_CASES = [
    # (description, call, exception, message pattern)
    ("non-floating input", lambda x, t: scc_loss(x.long(), t), TypeError, r"input must be a floating-point tensor.*int64"),
    ("input not a tensor", lambda x, t: scc_loss(x.tolist(), t), TypeError, r"input must be a torch.Tensor, got list"),
    ("rank 3", lambda x, t: scc_loss(x[0], t), ValueError, r"input must be B x C x H x W.*got 3 dims"),
    ("rank 6", lambda x, t: scc_loss(x[..., None, None], t), ValueError, r"input must be .*got 6 dims"),
    ("size-1 spatial", lambda x, t: scc_loss(x[..., :1], t[..., :1]), ValueError, r"spatial size >= 2.*\(8, 1\)"),
    ("empty batch", lambda x, t: scc_loss(x[:0], t[:0]), ValueError, r"at least one image"),
    ("batch mismatch", lambda x, t: scc_loss(x, t[:1]), ValueError, r"target batch size must equal input's \(2\), got 1"),
    ("spatial mismatch", lambda x, t: scc_loss(x, t[:, :7]), ValueError, r"target spatial shape must equal input's \(8, 8\), got \(7, 8\)"),
    ("label rank", lambda x, t: scc_loss(x, t[0]), ValueError, r"integer labels must be B x spatial"),
    ("label too large", lambda x, t: scc_loss(x, t + 1), ValueError, r"labels must be in \[0, 2\].*got values from 3 to 3"),
    ("negative label", lambda x, t: scc_loss(x, t - 1), ValueError, r"labels must be in \[0, 2\].*got values from -1 to -1"),
    ("label vs ignore_index", lambda x, t: scc_loss(x, torch.where(t == 0, 9, t), ignore_index=7), ValueError, r"or equal ignore_index=7.*9"),
    ("float target channels", lambda x, t: scc_loss(x, torch.rand(2, 2, 8, 8)), ValueError, r"floating-point target must have the shape of input.*\(2, 3, 8, 8\).*\(2, 2, 8, 8\)"),
    ("float labels hint", lambda x, t: scc_loss(x, t[:, None].float()), ValueError, r"pass an integer tensor"),
    ("ignore_index with float target", lambda x, t: scc_loss(x, torch.rand(2, 3, 8, 8), ignore_index=0), ValueError, r"ignore_index applies to integer"),
    ("reduction typo", lambda x, t: scc_loss(x, t, reduction="avg"), ValueError, r"reduction must be one of 'mean', 'sum', 'none', got 'avg'"),
    ("backend typo", lambda x, t: scc_loss(x, t, backend="cuda"), ValueError, r"backend must be one of 'auto', .*got 'cuda'"),
    ("softmax and sigmoid", lambda x, t: scc_loss(x, t, softmax=True, sigmoid=True), ValueError, r"softmax and sigmoid are mutually exclusive"),
    ("softmax one channel", lambda x, t: scc_loss(x[:, :1], t.clamp_max(1), softmax=True), ValueError, r"softmax=True needs at least 2 channels, got C = 1"),
    ("weight length", lambda x, t: scc_loss(x, t, weight=[1.0, 2.0]), ValueError, r"weight must have one entry per class.*= 3, got 2"),
    ("weight length no bg", lambda x, t: scc_loss(x, t, weight=[1.0, 2.0, 3.0], include_background=False), ValueError, r"C - 1 \(background excluded\) = 2, got 3"),
    ("negative weight", lambda x, t: scc_loss(x, t, weight=[1.0, -2.0, 3.0]), ValueError, r"weight must be finite and >= 0"),
    ("negative magnitude_weight", lambda x, t: scc_loss(x, t, magnitude_weight=-1.0), ValueError, r"magnitude_weight must be a finite number >= 0, got -1.0"),
    ("both weights zero", lambda x, t: scc_loss(x, t, magnitude_weight=0, phase_weight=0), ValueError, r"must not both be 0"),
    ("nan input", lambda x, t: scc_loss(x.index_put((torch.tensor([0]),), torch.tensor(float("nan"))), t), ValueError, r"input contains NaN or Inf"),
    ("ignore_index type", lambda x, t: scc_loss(x, t, ignore_index=1.5), ValueError, r"ignore_index must be an int or None, got 1.5"),
    ("kind typo", lambda x, t: spectral_correlation(x, t, kind="mag"), ValueError, r"kind must be one of 'scc', 'magnitude', 'phase', 'complex', got 'mag'"),
    ("complex target", lambda x, t: scc_loss(x, t.to(torch.complex64)), TypeError, r"target must be integer labels or a real"),
]


@pytest.mark.parametrize("call,exc,pattern", [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES])
def test_bad_input_raises(call, exc, pattern):
    x, t = inputs()
    with pytest.raises(exc, match=pattern):
        call(x, t)


def test_validate_false_skips_label_check_but_stays_finite_for_nan_free_input():
    x, t = inputs()
    loss = scc_loss(x, t, softmax=True, validate=False, backend="torch")
    assert torch.isfinite(loss)


@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_checks_are_skipped_while_a_cuda_graph_captures(monkeypatch, backend):
    # A value check waits for the device, which a CUDA graph capture does not allow: scc_loss and
    # spectral_correlation skip them then, as under torch.compile (the capture is stubbed here; a
    # CPU tensor is never being captured).
    x = torch.randn(2, 3, 8, 8)
    labels = torch.randint(0, 3, (2, 8, 8))
    labels[0, 0, 0] = 7
    assert not scc_fast.functional._capturing(x)
    with pytest.raises(ValueError, match="target labels must be in"):
        scc_fast.scc_loss(x, labels, softmax=True, backend=backend)
    with pytest.raises(ValueError, match="target labels must be in"):
        scc_fast.spectral_correlation(torch.softmax(x, 1), labels, backend=backend)
    monkeypatch.setattr(scc_fast.functional, "_capturing", lambda t: True)
    loss = scc_fast.scc_loss(x, labels, softmax=True, backend=backend)
    assert torch.equal(loss, scc_fast.scc_loss(x, labels, softmax=True, backend=backend, validate=False))
    scc_fast.spectral_correlation(torch.softmax(x, 1), labels, backend=backend)


def test_env_var_overrides_auto(monkeypatch):
    x, t = inputs()
    monkeypatch.setenv("SCC_FAST_BACKEND", "reference")
    assert scc_fast.explain_backend(x, t).startswith("backend: reference")
    monkeypatch.setenv("SCC_FAST_BACKEND", "fastest")
    with pytest.raises(ValueError, match=r"SCC_FAST_BACKEND must be one of .*got 'fastest'"):
        scc_loss(x, t)


def test_unavailable_backend_is_an_error_not_a_fallback(monkeypatch):
    from scc_fast import backends

    x, t = inputs()
    monkeypatch.setitem(backends.BACKENDS, "native", "scc_fast._no_such_module_")
    with pytest.raises(RuntimeError, match=r"backend 'native' was asked for but cannot run: cannot import"):
        scc_loss(x, t, backend="native")
    assert backends.available_backends()["native"].available is False
    assert scc_fast.explain_backend(x, t).startswith("backend: ")  # auto still finds one


def test_available_backends_reports_reasons():
    status = scc_fast.available_backends()
    assert status["torch"].available and status["reference"].available
    for name, s in status.items():
        assert isinstance(s.reason, str) and s.reason
        if not s.available:
            assert s.reason != "available"


# ---------------------------------------------------------------- modules


def test_scc_loss_module_matches_function():
    x, t = inputs()
    module = SCCLoss(softmax=True, include_background=False, reduction="none", backend="torch")
    assert torch.equal(module(x, t), scc_loss(x, t, softmax=True, include_background=False, reduction="none", backend="torch"))
    assert "softmax=True" in repr(module)


def test_scc_loss_module_rejects_unknown_arguments():
    with pytest.raises(TypeError, match="unexpected keyword argument.*softmx"):
        SCCLoss(softmx=True)
    with pytest.raises(ValueError, match="reduction must be one of"):
        SCCLoss(reduction="mena")


class _MSE(nn.Module):
    def forward(self, x, t):
        return ((torch.softmax(x, 1) - nn.functional.one_hot(t, x.shape[1]).movedim(-1, 1)) ** 2).mean()


def test_spatial_spectral_loss_combines_terms():
    x, t = inputs()
    combo = SpatialSpectralLoss(_MSE(), lambda_spectral=0.3)
    expected = _MSE()(x, t) + 0.3 * scc_loss(x, t, softmax=True)
    assert torch.allclose(combo(x, t), expected)
    with pytest.raises(ValueError, match="lambda_spectral must be >= 0"):
        SpatialSpectralLoss(_MSE(), lambda_spectral=-1)


def test_dice_ce_scc_loss_terms():
    x, t = inputs()
    x.requires_grad_(True)
    full = DiceCESCCLoss(lambda_spectral=0.5, backend="torch")
    spatial_only = DiceCESCCLoss(lambda_spectral=0.0, backend="torch")
    spectral = scc_loss(x, t, softmax=True, backend="torch")
    assert torch.allclose(full(x, t), spatial_only(x, t) + 0.5 * spectral)
    ce = nn.functional.cross_entropy(x, t)
    only_ce = DiceCESCCLoss(lambda_dice=0.0, lambda_spectral=0.0)
    assert torch.allclose(only_ce(x, t), ce)
    full(x, t).backward()
    assert torch.isfinite(x.grad).all()


def test_dice_ce_scc_loss_ignore_index_and_float_target():
    x, t = inputs()
    t[:, 0] = 255
    loss = DiceCESCCLoss(ignore_index=255)(x, t)
    assert torch.isfinite(loss)
    soft = torch.softmax(torch.randn(2, 3, 8, 8), 1)
    assert torch.isfinite(DiceCESCCLoss()(x, soft))
    with pytest.raises(TypeError, match="sets softmax itself"):
        DiceCESCCLoss(softmax=False)


def test_labels_b1_layout_equals_b_layout():
    x, t = inputs()
    assert torch.equal(scc_loss(x, t[:, None], softmax=True, backend="torch"), scc_loss(x, t, softmax=True, backend="torch"))


def test_bool_target_is_a_mask():
    x, t = inputs()
    onehot = nn.functional.one_hot(t, 3).movedim(-1, 1)
    a = scc_loss(x, onehot.bool(), softmax=True, backend="torch")
    b = scc_loss(x, t, softmax=True, backend="torch")
    assert torch.allclose(a, b, atol=1e-6)
