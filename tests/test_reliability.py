"""Reliability (issue 6): bad input, NaN/Inf, memory layouts, double backward, mixed precision,
determinism and out-of-memory, for every backend that is available here.

Each backend test is parametrised over ``scc_fast.available_backends()``: an unavailable backend
is skipped with its reason, an input a backend declares unsupported is skipped with that reason
(and :func:`test_unsupported_input_is_an_error_not_a_fallback` checks that asking for it anyway
raises). Shapes are small: Triton runs under its interpreter on CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import pytest
from torch import nn

import scc_fast
from scc_fast import DiceCESCCLoss, SCCLoss, SpatialSpectralLoss, backends, scc_loss, spectral_correlation
from _helpers import rel_err
from _models import backend_input, backend_params, require_supported

BACKENDS = backend_params()
FAST_BACKENDS = backend_params(exclude=("reference",))


def make(shape=(2, 3, 8, 8), dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=dtype)
    t = torch.randint(0, shape[1], (shape[0],) + tuple(shape[2:]), generator=g)
    return x, t


def loss_and_grad(x, t, backend, **kw):
    """Loss and d loss / d x for a leaf copy of ``x`` (or ``x`` itself if it is a non-leaf view)."""
    x = x.detach().clone().requires_grad_(True)
    loss = scc_loss(x, t, backend=backend, **kw)
    (grad,) = torch.autograd.grad(loss, x)
    return loss.detach(), grad


# ================================================================ bad input

X_SHAPE = (2, 3, 8, 8)
MSG_DEVICE_META = r"target must be on the device of input \(cpu\), got meta"

# (id, call(x, t, backend), exception, pattern): every pattern names the argument, what was
# expected and what came.
ERROR_CASES = [
    # input: type, dtype, rank, empty and size-1 dims
    ("input-list", lambda x, t, b: scc_loss(x.tolist(), t, backend=b), TypeError, r"input must be a torch\.Tensor, got list"),
    ("input-int", lambda x, t, b: scc_loss(x.long(), t, backend=b), TypeError, r"input must be a floating-point tensor .*got dtype torch\.int64"),
    ("input-bool", lambda x, t, b: scc_loss(x > 0, t, backend=b), TypeError, r"input must be a floating-point tensor .*got dtype torch\.bool"),
    ("input-complex", lambda x, t, b: scc_loss(x.to(torch.complex64), t, backend=b), TypeError, r"input must be a floating-point tensor .*got dtype torch\.complex64"),
    ("input-rank3", lambda x, t, b: scc_loss(x[0], t, backend=b), ValueError, r"input must be B x C x H x W or B x C x D x H x W \(4 or 5 dims\), got 3 dims with shape \(3, 8, 8\)"),
    ("input-rank6", lambda x, t, b: scc_loss(x[..., None, None], t, backend=b), ValueError, r"input must be .*\(4 or 5 dims\), got 6 dims"),
    ("input-no-channels", lambda x, t, b: scc_loss(x[:, :0], t, backend=b), ValueError, r"input must have at least one image and one channel, got shape \(2, 0, 8, 8\)"),
    ("input-no-images", lambda x, t, b: scc_loss(x[:0], t[:0], backend=b), ValueError, r"input must have at least one image .*got shape \(0, 3, 8, 8\)"),
    ("input-size1-W", lambda x, t, b: scc_loss(x[..., :1], t[..., :1], backend=b), ValueError, r"input must have every spatial size >= 2, got spatial shape \(8, 1\)"),
    ("input-size0-H", lambda x, t, b: scc_loss(x[:, :, :0], t[:, :0], backend=b), ValueError, r"input must have every spatial size >= 2, got spatial shape \(0, 8\)"),
    ("input-3d-size1-D", lambda x, t, b: scc_loss(x[:, :, None], t[:, None], backend=b), ValueError, r"spatial size >= 2, got spatial shape \(1, 8, 8\)"),
    # target: type, batch, spatial, rank
    ("target-list", lambda x, t, b: scc_loss(x, t.tolist(), backend=b), TypeError, r"target must be a torch\.Tensor, got list"),
    ("target-complex", lambda x, t, b: scc_loss(x, t.to(torch.complex64), backend=b), TypeError, r"target must be integer labels or a real floating-point tensor, got dtype torch\.complex64"),
    ("target-device", lambda x, t, b: scc_loss(x, t.to("meta"), backend=b), ValueError, MSG_DEVICE_META),
    ("labels-batch", lambda x, t, b: scc_loss(x, t[:1], backend=b), ValueError, r"target batch size must equal input's \(2\), got 1"),
    ("labels-spatial", lambda x, t, b: scc_loss(x, t[:, :, :7], backend=b), ValueError, r"target spatial shape must equal input's \(8, 8\), got \(8, 7\)"),
    ("labels-rank", lambda x, t, b: scc_loss(x, t[0], backend=b), ValueError, r"integer labels must be B x spatial or B x 1 x spatial for input \(2, 3, 8, 8\), got shape \(8, 8\)"),
    ("labels-int-onehot", lambda x, t, b: scc_loss(x, F.one_hot(t, 3).movedim(-1, 1), backend=b), ValueError, r"integer labels must be B x spatial or B x 1 x spatial .*got shape \(2, 3, 8, 8\)"),
    ("labels-3d-spatial", lambda x, t, b: scc_loss(x[:, :, None].expand(2, 3, 4, 8, 8), t[:, None].expand(2, 3, 8, 8), backend=b), ValueError, r"target spatial shape must equal input's \(4, 8, 8\), got \(3, 8, 8\)"),
    # labels: range, negative, ignore_index
    ("labels-too-large", lambda x, t, b: scc_loss(x, t + 1, backend=b), ValueError, r"target labels must be in \[0, 2\] for 3 channel\(s\), got values from 3 to 3"),
    ("labels-negative", lambda x, t, b: scc_loss(x, t - 1, backend=b), ValueError, r"target labels must be in \[0, 2\] for 3 channel\(s\), got values from -1 to -1"),
    ("labels-negative-not-ignore", lambda x, t, b: scc_loss(x, t - 1, ignore_index=255, backend=b), ValueError, r"in \[0, 2\] for 3 channel\(s\) or equal ignore_index=255, got values from -1 to -1"),
    ("labels-binary-range", lambda x, t, b: scc_loss(x[:, :1], t, backend=b), ValueError, r"target labels must be in \[0, 1\] for 1 channel\(s\), got values from 2 to 2"),
    ("labels-uint8-255", lambda x, t, b: scc_loss(x, torch.where(t == 0, 255, t).to(torch.uint8), backend=b), ValueError, r"in \[0, 2\] .*got values from 255 to 255"),
    # float target: channels, batch, spatial, values
    ("float-target-channels", lambda x, t, b: scc_loss(x, torch.rand(2, 2, 8, 8), backend=b), ValueError, r"a floating-point target must have the shape of input, B x C x spatial = \(2, 3, 8, 8\), got \(2, 2, 8, 8\)"),
    ("float-target-batch", lambda x, t, b: scc_loss(x, torch.rand(1, 3, 8, 8), backend=b), ValueError, r"floating-point target must have the shape of input.*got \(1, 3, 8, 8\)"),
    ("float-target-spatial", lambda x, t, b: scc_loss(x, torch.rand(2, 3, 8, 9), backend=b), ValueError, r"floating-point target must have the shape of input.*got \(2, 3, 8, 9\)"),
    ("float-target-labels-hint", lambda x, t, b: scc_loss(x, t[:, None].float(), backend=b), ValueError, r"got \(2, 1, 8, 8\) \(for class labels pass an integer tensor"),
    ("float-target-nan", lambda x, t, b: scc_loss(x, torch.full((2, 3, 8, 8), float("nan")), backend=b), ValueError, r"target contains NaN or Inf \(pass validate=False"),
    ("float-target-ignore-index", lambda x, t, b: scc_loss(x, torch.rand(2, 3, 8, 8), ignore_index=0, backend=b), ValueError, r"ignore_index applies to integer label targets only, got a floating-point target"),
    # input values
    ("input-nan", lambda x, t, b: scc_loss(torch.where(t[:, None] == 1, float("nan"), x), t, backend=b), ValueError, r"input contains NaN or Inf \(pass validate=False"),
    ("input-inf", lambda x, t, b: scc_loss(torch.where(t[:, None] == 1, float("inf"), x), t, backend=b), ValueError, r"input contains NaN or Inf"),
    # choices and flags
    ("reduction-typo", lambda x, t, b: scc_loss(x, t, reduction="avg", backend=b), ValueError, r"reduction must be one of 'mean', 'sum', 'none', got 'avg'"),
    ("reduction-none-object", lambda x, t, b: scc_loss(x, t, reduction=None, backend=b), ValueError, r"reduction must be one of .*got None"),
    ("softmax-and-sigmoid", lambda x, t, b: scc_loss(x, t, softmax=True, sigmoid=True, backend=b), ValueError, r"softmax and sigmoid are mutually exclusive, got both True"),
    ("softmax-one-channel", lambda x, t, b: scc_loss(x[:, :1], t.clamp_max(1), softmax=True, backend=b), ValueError, r"softmax=True needs at least 2 channels, got C = 1"),
    ("ignore-index-float", lambda x, t, b: scc_loss(x, t, ignore_index=1.5, backend=b), ValueError, r"ignore_index must be an int or None, got 1\.5"),
    ("ignore-index-bool", lambda x, t, b: scc_loss(x, t, ignore_index=True, backend=b), ValueError, r"ignore_index must be an int or None, got True"),
    # class weights and term weights
    ("weight-length", lambda x, t, b: scc_loss(x, t, weight=[1.0, 2.0], backend=b), ValueError, r"weight must have one entry per class in the loss, C = 3, got 2"),
    ("weight-length-no-background", lambda x, t, b: scc_loss(x, t, weight=[1.0, 2.0, 3.0], include_background=False, backend=b), ValueError, r"weight must have one entry per class .*C - 1 \(background excluded\) = 2, got 3"),
    ("weight-tensor-length", lambda x, t, b: scc_loss(x, t, weight=torch.ones(4), backend=b), ValueError, r"weight must have one entry per class .*= 3, got 4"),
    ("weight-negative", lambda x, t, b: scc_loss(x, t, weight=[1.0, -2.0, 3.0], backend=b), ValueError, r"weight must be finite and >= 0, got \[1\.0, -2\.0, 3\.0\]"),
    ("weight-nan", lambda x, t, b: scc_loss(x, t, weight=[1.0, float("nan"), 3.0], backend=b), ValueError, r"weight must be finite and >= 0, got \[1\.0, nan, 3\.0\]"),
    ("magnitude-weight-negative", lambda x, t, b: scc_loss(x, t, magnitude_weight=-1.0, backend=b), ValueError, r"magnitude_weight must be a finite number >= 0, got -1\.0"),
    ("phase-weight-nan", lambda x, t, b: scc_loss(x, t, phase_weight=float("nan"), backend=b), ValueError, r"phase_weight must be a finite number >= 0, got nan"),
    ("phase-weight-str", lambda x, t, b: scc_loss(x, t, phase_weight="0.5", backend=b), ValueError, r"phase_weight must be a finite number >= 0, got '0\.5'"),
    ("term-weights-both-zero", lambda x, t, b: scc_loss(x, t, magnitude_weight=0, phase_weight=0, backend=b), ValueError, r"magnitude_weight and phase_weight must not both be 0"),
    # spectral_correlation
    ("kind-typo", lambda x, t, b: spectral_correlation(x, t, kind="mag", backend=b), ValueError, r"kind must be one of 'scc', 'magnitude', 'phase', 'complex', got 'mag'"),
    ("metric-probs-int", lambda x, t, b: spectral_correlation(x.long(), t, backend=b), TypeError, r"probs must be a floating-point tensor .*got dtype torch\.int64"),
    ("metric-probs-rank", lambda x, t, b: spectral_correlation(x[0], t, backend=b), ValueError, r"probs must be B x C x H x W .*got 3 dims"),
    ("metric-target-spatial", lambda x, t, b: spectral_correlation(x, t[:, :4], backend=b), ValueError, r"target spatial shape must equal input's \(8, 8\), got \(4, 8\)"),
    ("metric-labels-range", lambda x, t, b: spectral_correlation(x, t + 3, backend=b), ValueError, r"target labels must be in \[0, 2\] .*got values from 3 to 5"),
    ("metric-term-weight", lambda x, t, b: spectral_correlation(x, t, magnitude_weight=-0.5, backend=b), ValueError, r"magnitude_weight must be a finite number >= 0, got -0\.5"),
    # modules
    ("SCCLoss-unknown-kwarg", lambda x, t, b: SCCLoss(softmx=True, backend=b), TypeError, r"SCCLoss got unexpected keyword argument\(s\): softmx"),
    ("SCCLoss-reduction", lambda x, t, b: SCCLoss(reduction="mena", backend=b), ValueError, r"reduction must be one of .*got 'mena'"),
    ("SCCLoss-forward-labels", lambda x, t, b: SCCLoss(backend=b)(x, t + 5), ValueError, r"target labels must be in \[0, 2\]"),
    ("DiceCE-lambda", lambda x, t, b: DiceCESCCLoss(lambda_ce=-1.0, backend=b), ValueError, r"lambda_ce must be >= 0, got -1\.0"),
    ("DiceCE-forbidden", lambda x, t, b: DiceCESCCLoss(reduction="sum", backend=b), TypeError, r"DiceCESCCLoss sets reduction itself"),
    ("DiceCE-forward-shape", lambda x, t, b: DiceCESCCLoss(backend=b)(x, t[:1]), ValueError, r"target batch size must equal input's \(2\), got 1"),
    ("DiceCE-forward-labels", lambda x, t, b: DiceCESCCLoss(backend=b)(x, t - 1), ValueError, r"target labels must be in \[0, 2\]"),
    ("SpatialSpectral-spatial", lambda x, t, b: SpatialSpectralLoss("dice"), TypeError, r"spatial must be a loss module or callable, got str"),
    ("SpatialSpectral-lambda", lambda x, t, b: SpatialSpectralLoss(nn.MSELoss(), lambda_spectral=float("nan")), ValueError, r"lambda_spectral must be >= 0, got nan"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("call,exc,pattern", [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES])
def test_bad_input_raises_clear_error(backend, call, exc, pattern):
    x, t = make(X_SHAPE)
    with pytest.raises(exc, match=pattern):
        call(x, t, backend)


@pytest.mark.parametrize(
    "call,pattern",
    [
        (lambda x, t: scc_loss(x, t, backend="cuda"), r"backend must be one of 'auto', 'reference', 'torch'.*got 'cuda'"),
        (lambda x, t: scc_loss(x, t, backend="Torch"), r"backend must be one of .*got 'Torch'"),
        (lambda x, t: scc_loss(x, t, backend=None), r"backend must be one of .*got None"),
        (lambda x, t: spectral_correlation(x, t, backend="fast"), r"backend must be one of .*got 'fast'"),
        (lambda x, t: SCCLoss(backend="trition")(x, t), r"backend must be one of .*got 'trition'"),
    ],
    ids=["device-name", "capitalised", "None", "metric", "module"],
)
def test_backend_typo(call, pattern):
    x, t = make()
    with pytest.raises(ValueError, match=pattern):
        call(x, t)


def test_backend_env_var_typo(monkeypatch):
    x, t = make()
    monkeypatch.setenv("SCC_FAST_BACKEND", "tritn")
    with pytest.raises(ValueError, match=r"the environment variable SCC_FAST_BACKEND must be one of 'auto', .*got 'tritn'"):
        scc_loss(x, t)
    with pytest.raises(ValueError, match=r"SCC_FAST_BACKEND must be one of .*got 'tritn'"):
        spectral_correlation(x, t)
    # The variable overrides only "auto": an explicit backend is used as asked.
    assert torch.isfinite(scc_loss(x, t, backend="torch"))


@pytest.mark.parametrize("name", list(scc_fast.available_backends()))
def test_backend_that_cannot_run_raises_naming_it_and_why(name, monkeypatch):
    """Asked for and unavailable: RuntimeError with the name and the reason, never a fallback."""
    x, t = make()
    status = scc_fast.available_backends()[name]
    if status.available:  # simulate the backend's dependency being missing
        monkeypatch.setattr(backends.load(name), "unavailable_reason", lambda: "simulated: the library is missing")
        reason = "simulated: the library is missing"
    else:
        reason = status.reason
    pattern = rf"backend '{name}' was asked for but cannot run: {_re_escape(reason)}"
    with pytest.raises(RuntimeError, match=pattern):
        scc_loss(x, t, softmax=True, backend=name)
    monkeypatch.setenv("SCC_FAST_BACKEND", name)
    with pytest.raises(RuntimeError, match=pattern):
        scc_loss(x, t, softmax=True)
    assert scc_fast.available_backends()[name] == (False, reason)


def _re_escape(s: str) -> str:
    import re

    return re.escape(s)


UNSUPPORTED_PROBES = [
    ("3d", (1, 2, 4, 8, 8), torch.float32),
    ("fp64", (1, 2, 8, 8), torch.float64),
    ("tiny-2d", (1, 2, 2, 3), torch.float32),
    ("odd-2d", (1, 2, 9, 11), torch.float32),
]


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("shape,dtype", [p[1:] for p in UNSUPPORTED_PROBES], ids=[p[0] for p in UNSUPPORTED_PROBES])
def test_unsupported_input_is_an_error_not_a_fallback(backend, shape, dtype):
    """Where a backend declares an input unsupported, asking for it raises with its reason;
    where it declares it supported, it matches the float64 reference."""
    x, t = make(shape, dtype)
    reason = backends.load(backend).unsupported_reason(*backend_input(x, t))
    if reason is not None:
        with pytest.raises(RuntimeError, match=rf"backend '{backend}' was asked for but cannot run: {_re_escape(reason)}"):
            scc_loss(x, t, softmax=True, backend=backend)
        return
    loss, grad = loss_and_grad(x, t, backend, softmax=True)
    ref_loss, ref_grad = loss_and_grad(x.double(), t, "reference", softmax=True)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    assert rel_err(loss, ref_loss) < tol and rel_err(grad, ref_grad) < tol


# ================================================================ NaN / Inf


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
def test_nonfinite_input(backend, bad):
    """validate=True: ValueError. validate=False: propagates to a NaN loss and gradient (as
    torch's losses do) for probabilities; NaN logits propagate through softmax as well."""
    x, t = make()
    probs = torch.softmax(x, 1)
    probs[0, 1, 2, 3] = bad
    require_supported(backend, *backend_input(probs, t))
    with pytest.raises(ValueError, match=r"input contains NaN or Inf \(pass validate=False to skip this check\)"):
        scc_loss(probs, t, backend=backend)
    leaf = probs.clone().requires_grad_(True)
    loss = scc_loss(leaf, t, validate=False, backend=backend)
    loss.backward()
    assert torch.isnan(loss), f"{bad} in the input gave a finite loss {loss.item()}"
    assert not torch.isfinite(leaf.grad).all()
    # Per pair: the image that holds the bad value is NaN; the other image is untouched.
    per_pair = scc_loss(probs, t, validate=False, reduction="none", backend=backend)
    assert torch.isnan(per_pair[0]).any() and torch.isfinite(per_pair[1]).all()
    assert torch.allclose(per_pair[1], scc_loss(probs[1:], t[1:], reduction="none", backend=backend), rtol=1e-5, atol=1e-6)
    if bad != bad:  # NaN logits: softmax propagates them too
        logits = x.clone()
        logits[0, 1, 2, 3] = bad
        assert torch.isnan(scc_loss(logits, t, softmax=True, validate=False, backend=backend))


@pytest.mark.parametrize("backend", BACKENDS)
def test_nonfinite_float_target(backend):
    x, t = make()
    y = F.one_hot(t, 3).movedim(-1, 1).float()
    y[1, 2, 0, 0] = float("nan")
    require_supported(backend, *backend_input(x, y))
    with pytest.raises(ValueError, match=r"target contains NaN or Inf"):
        scc_loss(x, y, softmax=True, backend=backend)
    assert torch.isnan(scc_loss(x, y, softmax=True, validate=False, backend=backend))


def test_nonfinite_behaviour_is_documented():
    doc = scc_loss.__doc__
    assert "validate=False" in doc and "NaN" in doc and "propagates" in doc
    assert "costs a device sync" in doc


# ================================================================ layouts


def _layout_cases(x_base: torch.Tensor, t_base: torch.Tensor):
    """(name, leaf, input built from leaf, target, how to map leaf.grad to the contiguous grad)."""
    b, c, h, w = x_base.shape
    cases = []
    leaf = x_base.clone().requires_grad_(True)
    cases.append(("transposed", leaf, lambda l: l.transpose(2, 3).contiguous().transpose(2, 3), t_base))
    leaf = x_base.transpose(2, 3).clone().requires_grad_(True)  # physically W x H, logically H x W below
    cases.append(("non-contiguous", leaf, lambda l: l.transpose(2, 3), t_base.transpose(1, 2).contiguous().transpose(1, 2)))
    leaf = x_base.clone().to(memory_format=torch.channels_last).requires_grad_(True)
    cases.append(("channels_last", leaf, lambda l: l, t_base))
    big = torch.zeros(b, c + 1, 2 * h, 2 * w + 1)
    big[:, 1:, ::2, 1::2] = x_base
    leaf = big.requires_grad_(True)
    big_t = torch.zeros(b, 2 * h, 2 * w + 1, dtype=t_base.dtype)
    big_t[:, ::2, 1::2] = t_base
    cases.append(("sliced", leaf, lambda l: l[:, 1:, ::2, 1::2], big_t[:, ::2, 1::2]))
    return cases


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_channels_last_sliced(backend):
    x, t = make((2, 3, 8, 10))
    require_supported(backend, *backend_input(x, t))
    ref_loss, ref_grad = loss_and_grad(x, t, backend, softmax=True)
    for name, leaf, build, target in _layout_cases(x, t):
        inp = build(leaf)
        assert torch.equal(inp.detach(), x) and torch.equal(target, t)
        assert not (inp.is_contiguous() and target.is_contiguous()) or name == "channels_last"
        loss = scc_loss(inp, target, softmax=True, backend=backend)
        (g,) = torch.autograd.grad(loss, leaf)
        g_logical = build(g) if name != "non-contiguous" else g.transpose(2, 3)
        assert rel_err(loss, ref_loss) < 1e-6, name
        assert rel_err(g_logical, ref_grad) < 1e-6, name
        if name == "sliced":  # the gaps of the slice get no gradient
            mask = torch.ones_like(g, dtype=torch.bool)
            mask[:, 1:, ::2, 1::2] = False
            assert torch.count_nonzero(g[mask]) == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_channels_last_3d(backend):
    x, t = make((1, 2, 4, 6, 8))
    require_supported(backend, *backend_input(x, t))
    ref_loss, ref_grad = loss_and_grad(x, t, backend, softmax=True)
    leaf = x.clone().to(memory_format=torch.channels_last_3d).requires_grad_(True)
    loss = scc_loss(leaf, t, softmax=True, backend=backend)
    loss.backward()
    assert rel_err(loss, ref_loss) < 1e-6 and rel_err(leaf.grad, ref_grad) < 1e-6


@pytest.mark.parametrize("backend", BACKENDS)
def test_expanded_input_and_target(backend):
    """A batch made by expand (stride 0): gradients of the copies add up in the shared leaf."""
    x, t = make((1, 3, 8, 8))
    require_supported(backend, *backend_input(x, t))
    leaf = x.clone().requires_grad_(True)
    loss = scc_loss(leaf.expand(3, 3, 8, 8), t.expand(3, 8, 8), softmax=True, reduction="sum", backend=backend)
    loss.backward()
    ref = x.repeat(3, 1, 1, 1).requires_grad_(True)
    ref_loss = scc_loss(ref, t.repeat(3, 1, 1), softmax=True, reduction="sum", backend=backend)
    ref_loss.backward()
    assert rel_err(loss, ref_loss) < 1e-6
    assert rel_err(leaf.grad, ref.grad.sum(0, keepdim=True)) < 1e-6
    # An expanded float target, and expanded probabilities without activation.
    y = F.one_hot(t, 3).movedim(-1, 1).float()
    p = torch.softmax(x, 1)
    got = scc_loss(p.expand(2, 3, 8, 8), y.expand(2, 3, 8, 8), reduction="none", backend=backend)
    assert rel_err(got, scc_loss(p, y, reduction="none", backend=backend).repeat(2, 1)) < 1e-6


@pytest.mark.parametrize("backend", BACKENDS)
def test_input_not_requiring_grad(backend):
    x, t = make()
    require_supported(backend, *backend_input(x, t))
    expected, _ = loss_and_grad(x, t, backend, softmax=True)
    loss = scc_loss(x, t, softmax=True, backend=backend)
    assert not loss.requires_grad and loss.grad_fn is None
    assert torch.equal(loss, expected)
    with torch.no_grad():
        assert torch.equal(scc_loss(x.requires_grad_(True), t, softmax=True, backend=backend), expected)
    with torch.inference_mode():
        assert torch.equal(scc_loss(x.detach(), t, softmax=True, backend=backend), expected)
    # The module in eval under no_grad, as in a validation loop.
    with torch.no_grad():
        assert torch.equal(SCCLoss(softmax=True, backend=backend).eval()(x, t), expected)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("softmax", [True, False], ids=["logits", "probs"])
def test_double_backward_is_exact_or_a_clear_error(backend, softmax):
    """create_graph=True: either the Hessian-vector product equals the reference's, or a
    RuntimeError says double backward is unsupported. Never a silently wrong second derivative
    (an analytic gradient saved in forward is a constant to autograd)."""
    x, t = make(dtype=torch.float64)
    x = x if softmax else torch.softmax(x, 1)
    if not softmax:
        x[:, :, 0, 0] = 0.5  # not a simplex: probabilities need not sum to 1 per voxel
    probs, target = backend_input(x, t)
    require_supported(backend, probs.float(), target)
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    def hvp(name, inp):
        leaf = inp.detach().clone().requires_grad_(True)
        loss = scc_loss(leaf, t, softmax=softmax, backend=name)
        (g,) = torch.autograd.grad(loss, leaf, create_graph=True)
        (h,) = torch.autograd.grad((g * v).sum(), leaf)
        return h

    ref = hvp("reference", x)
    assert torch.linalg.vector_norm(ref) > 1e-3
    supports_fp64 = backends.load(backend).unsupported_reason(probs.double(), target) is None
    inp = x if supports_fp64 else x.float()
    try:
        got = hvp(backend, inp)
    except RuntimeError as exc:
        assert f"backend '{backend}'" in str(exc) and "double backward" in str(exc) and "create_graph=True" in str(exc), str(exc)
        assert "backend='reference'" in str(exc)
        return
    assert rel_err(got, ref) < (1e-8 if supports_fp64 else 1e-4)


# ================================================================ mixed precision


class _TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(2, 3, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


@pytest.mark.parametrize("backend", BACKENDS)
def test_autocast_cpu_bf16(backend):
    """Under autocast the logits come in bfloat16; the loss is float32, computed in float32 from
    those logits, and gradients reach the float32 input and parameters in float32."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 2, 8, 8, generator=g, requires_grad=True)
    t = torch.randint(0, 3, (2, 8, 8), generator=g)
    net = _TinyNet()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = net(x)
        assert logits.dtype == torch.bfloat16
        require_supported(backend, *backend_input(logits, t))
        logits.retain_grad()
        loss = scc_loss(logits, t, softmax=True, backend=backend)
    assert loss.dtype == torch.float32
    loss.backward()
    assert x.grad.dtype == torch.float32 and net.conv.weight.grad.dtype == torch.float32
    assert logits.grad.dtype == torch.bfloat16
    assert torch.isfinite(x.grad).all() and x.grad.abs().max() > 0
    # Computed in float32 (or better) from the bf16 logits: equal to the float64 reference on them.
    ref_loss, ref_grad = loss_and_grad(logits.detach().double(), t, "reference", softmax=True)
    assert rel_err(loss, ref_loss) < 1e-5
    assert rel_err(logits.grad, ref_grad) < 1e-2  # the gradient is rounded to bfloat16
    # The same call outside autocast gives the same loss.
    assert rel_err(scc_loss(logits.detach(), t, softmax=True, backend=backend), loss) < 1e-6


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("amp_dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_autocast_cuda(backend, amp_dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 2, 16, 16, generator=g).cuda().requires_grad_(True)
    t = torch.randint(0, 3, (2, 16, 16), generator=g).cuda()
    net = _TinyNet().cuda()
    with torch.autocast("cuda", dtype=amp_dtype):
        logits = net(x)
        assert logits.dtype == amp_dtype
        require_supported(backend, *backend_input(logits, t))
        logits.retain_grad()
        loss = scc_loss(logits, t, softmax=True, backend=backend)
    assert loss.dtype == torch.float32
    loss.backward()
    assert x.grad.dtype == torch.float32 and logits.grad.dtype == amp_dtype
    ref_loss, ref_grad = loss_and_grad(logits.detach().double().cpu(), t.cpu(), "reference", softmax=True)
    tol = 5e-3 if backend == "triton" else 1e-5  # TF32 dots by default in the triton kernel (docs/loss.md section 6)
    assert rel_err(loss.cpu(), ref_loss) < tol
    assert rel_err(logits.grad.cpu(), ref_grad) < 1e-2


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype,grad_tol", [(torch.float16, 2e-3), (torch.bfloat16, 1e-2)], ids=["fp16", "bf16"])
@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (2, 3, 9, 11), (1, 2, 4, 5, 6)], ids=["2d", "2d-odd", "3d-odd"])
def test_half_precision_input(backend, dtype, grad_tol, shape):
    """fp16/bf16 input (torch.fft rejects bf16 and odd-size fp16): float32 loss equal to the
    reference on the upcast input, gradient in the input dtype."""
    x, t = make(shape)
    x = x.to(dtype)
    require_supported(backend, *backend_input(x, t))
    leaf = x.clone().requires_grad_(True)
    loss = scc_loss(leaf, t, softmax=True, backend=backend)
    loss.backward()
    assert loss.dtype == torch.float32 and leaf.grad.dtype == dtype
    ref_loss, ref_grad = loss_and_grad(x.double(), t, "reference", softmax=True)
    assert rel_err(loss, ref_loss) < 1e-5
    assert rel_err(leaf.grad, ref_grad) < grad_tol


# ================================================================ determinism


DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(2, 3, 8, 10), (1, 2, 4, 6, 5)], ids=["2d", "3d"])
def test_bitwise_deterministic(backend, shape, device):
    """Same input, same loss and gradient bit for bit (on CUDA too: no atomics in any backend)."""
    x, t = make(shape)
    x, t = x.to(device), t.to(device)
    require_supported(backend, *backend_input(x, t))
    first = loss_and_grad(x, t, backend, softmax=True, include_background=False)
    other = make((1, 2) + tuple(shape[2:]), seed=5)
    loss_and_grad(*other, backend, softmax=True)  # something else in between
    for _ in range(2):
        again = loss_and_grad(x, t, backend, softmax=True, include_background=False)
        assert torch.equal(first[0], again[0]), "loss differs between identical runs"
        assert torch.equal(first[1], again[1]), "gradient differs between identical runs"


# ================================================================ out of memory


@pytest.mark.parametrize("backend", BACKENDS)
def test_oom_propagates_and_module_still_works(backend, monkeypatch):
    """An allocation failure inside the backend reaches the caller as torch's OutOfMemoryError,
    unchanged, and the module computes the same result on the next call."""
    x, t = make()
    require_supported(backend, *backend_input(x, t))
    module = SCCLoss(softmax=True, backend=backend)
    before = loss_and_grad(x, t, backend, softmax=True)
    impl = backends.load(backend)
    # scc_loss enters a backend through its loss; the backends' own ops enter through these.
    entries = [name for name in ("correlation", "activated_correlation", "field")
               if hasattr(impl, name)]
    real = {name: getattr(impl, name) for name in entries}

    def fails(*args, **kwargs):
        raise torch.OutOfMemoryError("simulated: CUDA out of memory. Tried to allocate 64.00 GiB")

    for name in entries:
        monkeypatch.setattr(impl, name, fails)
    leaf = x.clone().requires_grad_(True)
    with pytest.raises(torch.OutOfMemoryError, match="simulated"):
        module(leaf, t)
    for name in entries:
        monkeypatch.setattr(impl, name, real[name])
    loss = module(leaf, t)
    loss.backward()
    assert torch.equal(loss.detach(), before[0]) and torch.equal(leaf.grad, before[1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_real_allocation_failure_then_recovers(backend):
    """A real request far beyond memory: a stride-0 input of 2 x 2^40 voxels costs nothing to
    build, and the first buffer the backend allocates for it fails at once. The next call works."""
    if not torch.cuda.is_available():
        try:
            with open("/proc/sys/vm/overcommit_memory") as f:
                if f.read().strip() == "1":
                    pytest.skip("vm.overcommit_memory=1: a huge CPU allocation would not fail at once")
        except OSError:
            pytest.skip("cannot read the overcommit policy; not risking a huge allocation")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    allocated_before = torch.cuda.memory_allocated() if device == "cuda" else 0
    side = 2**20
    leaf = torch.full((1, 1, 1, 1), 0.5, device=device, requires_grad=True)
    huge = leaf.expand(1, 2, side, side)
    labels = torch.zeros(1, 1, 1, dtype=torch.long, device=device).expand(1, side, side)
    reason = backends.load(backend).unsupported_reason(huge.detach(), labels)
    if reason is not None:
        with pytest.raises(RuntimeError, match=f"backend '{backend}' was asked for but cannot run"):
            scc_loss(huge, labels, validate=False, backend=backend)
    else:
        with pytest.raises(RuntimeError) as info:
            scc_loss(huge, labels, validate=False, backend=backend)
        if device == "cuda":
            assert isinstance(info.value, torch.OutOfMemoryError)
        else:
            assert isinstance(info.value, torch.OutOfMemoryError) or "can't allocate memory" in str(
                info.value
            ) or "not enough memory" in str(info.value), str(info.value)[:300]
    if device == "cuda":  # nothing of the failed call stays allocated
        torch.cuda.synchronize()
        assert torch.cuda.memory_allocated() <= allocated_before + 1024
    x, t = make()
    x = x.to(device)
    require_supported(backend, *backend_input(x, t.to(device)))
    got = loss_and_grad(x, t.to(device), backend, softmax=True)
    ref = loss_and_grad(x.double(), t.to(device), "reference", softmax=True)
    assert rel_err(got[0], ref[0]) < 1e-5 and rel_err(got[1], ref[1]) < 1e-5
