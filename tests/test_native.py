"""Backend "native" (the compiled CPU operator in csrc/) against the float64 reference.

Tolerances are docs/loss.md section 6's, ||out - ref|| / ||ref|| for the correlation and the input
gradient: float64 1e-10, float32 1e-5. Every test but the "not built" one needs scc_fast._C and
skips, saying why, only when it was genuinely not built (CI builds it).
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import scc_fast
from scc_fast import _settings, backends
from scc_fast.backends import native
from scc_fast.reference import reference_correlation

from _helpers import TOL, check_against_reference, make_inputs, per_pair_grad, rel_err

NOT_BUILT = native.unavailable_reason()
needs_op = pytest.mark.skipif(NOT_BUILT is not None, reason=f"native operator not built: {NOT_BUILT}")


def check(probs, target, dtype, **kw):
    """The operator's correlation against the float64 reference (``_helpers.check_against_reference``)."""
    return check_against_reference(native.correlation, probs, target, dtype, **kw)


@pytest.fixture(params=["avx512", "avx2", "baseline"])
def isa(request, monkeypatch):
    """Every build of the inner loops (each capped at what the CPU runs: native.isa() says which)."""
    _settings.update(native_isa=request.param)
    return request.param


@needs_op
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("chunk_bytes", ["1", "40000"])
def test_several_chunks(dtype, chunk_bytes, monkeypatch):
    """Pairs split over chunks (the minimum of 2 per thread, or a few), with an odd number of pairs in all."""
    _settings.update(native_chunk_bytes=int(chunk_bytes))
    probs, target = make_inputs((3, 3, 20, 18), labels=True, ignore=0.1)
    check(probs, target, dtype, include_dc=False)
    probs, target = make_inputs((1, 5, 6, 7, 9), labels=False)
    check(probs, target, dtype, include_dc=True)


@needs_op
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_first_class_and_ignored_labels(dtype):
    probs, target = make_inputs((2, 3, 10, 11), labels=True, ignore=0.1)  # labels 0..2 and -1
    check(probs[:, 1:], target, dtype, first_class=1)


@needs_op
@pytest.mark.parametrize("label_dtype", [torch.int64, torch.int32, torch.int16, torch.uint8])
def test_label_dtypes(label_dtype):
    probs, target = make_inputs((2, 3, 9, 10), labels=True)
    check(probs, target.to(label_dtype), torch.float64)


@needs_op
def test_non_contiguous_probs():
    probs, target = make_inputs((2, 3, 12, 10), labels=True, ignore=0.1)
    wide = torch.cat([probs, probs], dim=-1)[..., ::2]  # a strided view
    assert not wide.is_contiguous()
    ref = reference_correlation(wide, target)[0]
    assert rel_err(native.correlation(wide, target)[0], ref) <= 1e-10


@needs_op
@pytest.mark.parametrize("include_dc", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("size", [(12, 12), (12, 64)])  # (12, 64) float32: the radix transform where it runs
def test_degenerate_pairs(include_dc, dtype, size):
    """Absent class, class covering the image, constant prediction, zero float target: no NaN, same as reference."""
    # Seed 2: the float target's pair has an SCC away from 0, where a relative error measures something.
    probs, target = make_inputs((2, 4, *size), labels=True, seed=2)
    target[0] = 1  # image 0: class 1 everywhere (degenerate without DC), classes 0, 2, 3 absent
    target[1][target[1] == 3] = 0  # image 1: class 3 absent
    probs = probs.clone()
    # A constant prediction: zero spectrum outside DC. (Not at 12 x 64 with DC in K: there the FFT
    # leaves rounding residues off DC and the gradient follows their phases, P/|P|: the reference's
    # own gradient of that pair changes by 88% when p moves by 1e-15. Small sizes transform a
    # constant exactly. With 1e-9 of noise on the map native and reference agree to 1e-8.)
    if not (include_dc and size != (12, 12)):
        probs[1, 2] = 0.25
    ref, ref_valid, ref_grad = per_pair_grad(reference_correlation, probs, target, include_dc=include_dc)
    out, valid, grad = per_pair_grad(native.correlation, probs.to(dtype), target, include_dc=include_dc)
    assert torch.equal(valid, ref_valid) and not valid.all()
    assert torch.isfinite(out).all() and torch.isfinite(grad).all()
    assert rel_err(out, ref) <= TOL[dtype]
    assert rel_err(grad, ref_grad) <= TOL[dtype]

    float_target = torch.zeros_like(probs)
    float_target[0, 0, 3:7, 2:9] = 1.0
    ref, ref_valid, ref_grad = per_pair_grad(reference_correlation, probs, float_target, include_dc=include_dc)
    out, valid, grad = per_pair_grad(native.correlation, probs.to(dtype), float_target.to(dtype), include_dc=include_dc)
    assert torch.equal(valid, ref_valid) and valid.sum() == 1
    assert rel_err(out, ref) <= TOL[dtype]
    assert rel_err(grad, ref_grad) <= TOL[dtype]


@needs_op
def test_no_grad_call_returns_no_gradient():
    probs, target = make_inputs((2, 3, 9, 8), labels=True, ignore=0.1)
    scc, valid, grad, stats, _ = torch.ops.scc_fast.scc_forward(probs, target, 0, 0, 0, None, False, 0.5, 0.5, False)
    assert grad.shape == (0,) and stats.shape == (0,)
    assert rel_err(scc, reference_correlation(probs, target)[0]) <= 1e-10
    with torch.no_grad():
        assert rel_err(native.correlation(probs, target)[0], reference_correlation(probs, target)[0]) <= 1e-10


@needs_op
def test_fused_softmax_extreme_logits_and_no_grad():
    # Logits of +-1e4 (exp underflows to exactly 0) and a call without gradient (no field is made).
    g = torch.Generator().manual_seed(8)
    logits = torch.randn(2, 4, 12, 10, generator=g).sign() * 1e4
    labels = torch.randint(0, 4, (2, 12, 10), generator=g)
    x_ref = logits.double().requires_grad_(True)
    ref = scc_fast.scc_loss(x_ref, labels, softmax=True, backend="reference")
    ref.backward()
    x = logits.clone().requires_grad_(True)
    out = scc_fast.scc_loss(x, labels, softmax=True, backend="native")
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(x.grad).all()
    assert abs(out.item() - ref.item()) <= 1e-5 * max(1.0, abs(ref.item()))
    assert rel_err(x.grad.double(), x_ref.grad) <= 1e-5
    with torch.no_grad():
        assert scc_fast.scc_loss(logits, labels, softmax=True, backend="native").item() == pytest.approx(out.item(), rel=1e-6)


@needs_op
def test_public_float_target_and_spectral_correlation():
    probs, target = make_inputs((2, 3, 10, 12), labels=False)
    ref = scc_fast.scc_loss(probs, target, backend="reference", include_dc=True)
    out = scc_fast.scc_loss(probs, target, backend="native", include_dc=True)
    assert rel_err(out, ref) <= 1e-10
    ref = scc_fast.spectral_correlation(probs, target, kind="magnitude", backend="reference")
    out = scc_fast.spectral_correlation(probs, target, kind="magnitude", backend="native")
    assert rel_err(out, ref) <= 1e-10


@needs_op
def test_auto_picks_native_on_cpu():
    probs, target = make_inputs((1, 2, 8, 8), labels=True, ignore=0.1)
    assert "backend: native" in backends.explain_backend(probs.float(), target)
    assert backends.available_backends()["native"].available


@needs_op
def test_unsupported_inputs_are_named():
    probs, target = make_inputs((1, 2, 8, 8), labels=True, ignore=0.1)
    assert "float16" in native.unsupported_reason(probs.half(), target)
    with pytest.raises(RuntimeError, match="float32 or float64"):
        native.correlation(probs.half(), target)
    with pytest.raises(RuntimeError, match="B x spatial"):
        torch.ops.scc_fast.scc_forward(probs, target[:, :4], 0, 0, 0, None, False, 0.5, 0.5, True)
    with pytest.raises(RuntimeError, match="activation must be 0"):
        torch.ops.scc_fast.scc_forward(probs, target, 3, 0, 0, None, False, 0.5, 0.5, True)
    with pytest.raises(RuntimeError, match=r"first_channel must be in \[0, 1\]"):
        torch.ops.scc_fast.scc_forward(probs, target, 1, 2, 0, None, False, 0.5, 0.5, True)
    with pytest.raises(ValueError, match="activation must be None, 'softmax' or 'sigmoid', got 'relu'"):
        native.activated_correlation(probs, target, activation="relu")
    # backward's own checks: a field of the wrong shape (a forward without gradient), softmax
    # without its statistics, and an upstream gradient of the wrong size.
    field = torch.zeros_like(probs)
    up = torch.ones(1, 2, dtype=probs.dtype)
    with pytest.raises(RuntimeError, match="need_grad=False"):
        torch.ops.scc_fast.scc_backward(torch.zeros(0, dtype=probs.dtype), up, probs, torch.zeros(0), 0, 0)
    with pytest.raises(RuntimeError, match="softmax needs the statistics"):
        torch.ops.scc_fast.scc_backward(field, up, probs, torch.zeros(0, dtype=probs.dtype), 1, 0)
    with pytest.raises(RuntimeError, match="grad_scc must hold"):
        torch.ops.scc_fast.scc_backward(field, up[:, :1], probs, torch.zeros(0, dtype=probs.dtype), 0, 0)


@needs_op
def test_opcheck():
    probs, target = make_inputs((2, 3, 6, 5), labels=True, ignore=0.1)
    probs = probs.float()
    # The C++ operators (no autograd of their own: they run inside the registered op below).
    fwd = torch.ops.scc_fast.scc_forward.default
    torch.library.opcheck(fwd, (probs, target, 0, 0, 0, None, False, 0.5, 0.5, True))
    torch.library.opcheck(fwd, (probs, target, 1, 1, 1, 2, False, 0.5, 0.5, True))  # softmax, no background, ignore 2
    probs2, ftarget = make_inputs((1, 2, 4, 3, 5), labels=False)
    torch.library.opcheck(fwd, (probs2, ftarget, 0, 0, 0, None, True, 0.3, 0.7, False))
    torch.library.opcheck(fwd, (probs2, ftarget, 2, 0, 0, None, True, 0.3, 0.7, True))
    # The registered op with backend "native": its fake, autograd and backward.
    op = torch.ops.scc_fast.activated_correlation.default
    grad_probs = probs.clone().requires_grad_(True)
    torch.library.opcheck(op, (grad_probs, target, "native", 0, 0, 0, None, False, 0.5, 0.5, True, False))
    torch.library.opcheck(op, (grad_probs, target, "native", 1, 1, 1, 2, False, 0.5, 0.5, True, False))
    torch.library.opcheck(op, (probs2.clone().requires_grad_(True), ftarget, "native", 2, 0, 0, None, True, 0.3, 0.7,
                               True, False))
    _, _, field, stats, _ = fwd(probs, target, 1, 0, 0, None, False, 0.5, 0.5, True)
    up = torch.randn(2, 3)
    torch.library.opcheck(torch.ops.scc_fast.scc_backward.default, (field, up, probs.detach(), stats, 1, 0))


@needs_op
def test_traced_by_torch_compile():
    probs, target = make_inputs((2, 3, 8, 9), labels=True, ignore=0.1)

    def loss(x):
        scc, valid = native.correlation(x, target)
        return torch.where(valid, 1 - scc, torch.zeros_like(scc)).sum()

    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
    x = probs.clone().requires_grad_(True)
    out = compiled(x)
    out.backward()
    x_ref = probs.clone().requires_grad_(True)
    ref = loss(x_ref)
    ref.backward()
    assert rel_err(out.detach(), ref.detach()) <= 1e-12
    assert rel_err(x.grad, x_ref.grad) <= 1e-12


def test_not_built_says_why(monkeypatch):
    """Without scc_fast._C the backend explains itself, "auto" skips it and asking for it raises."""
    # `from .. import _C` then raises ImportError, as when the extension was never built.
    monkeypatch.setitem(sys.modules, "scc_fast._C", None)
    monkeypatch.delattr(scc_fast, "_C", raising=False)
    monkeypatch.setattr(native, "_LOAD_ERROR", None)
    monkeypatch.setattr(native, "_REGISTERED", False)
    reason = native.unavailable_reason()
    assert reason is not None
    assert "installed without its native operator" in reason
    assert "pip install --no-build-isolation" in reason
    status = backends.available_backends()["native"]
    assert not status.available and "native operator" in status.reason
    probs, target = make_inputs((1, 2, 8, 8), labels=True)
    explanation = backends.explain_backend(probs.float(), target)
    assert "backend: torch" in explanation and "skipped 'native'" in explanation
    with pytest.raises(RuntimeError, match="installed without its native operator"):
        scc_fast.scc_loss(probs, target, backend="native")


@needs_op
def test_double_backward_is_refused():
    probs, target = make_inputs((1, 2, 8, 8), labels=True, ignore=0.1)
    x = probs.clone().requires_grad_(True)
    scc, _ = native.correlation(x, target)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(scc.sum(), x, create_graph=True)


@needs_op
def test_public_loss_compiles_fullgraph():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 3, 10, 9, generator=g)
    labels = torch.randint(0, 3, (2, 10, 9), generator=g)

    def step(x):
        return scc_fast.scc_loss(x, labels, softmax=True, backend="native")

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    x = logits.clone().requires_grad_(True)
    compiled(x).backward()
    x_ref = logits.clone().requires_grad_(True)
    step(x_ref).backward()
    assert rel_err(x.grad, x_ref.grad) <= 1e-6


@needs_op
@pytest.mark.parametrize("threads", [1, 2])
def test_thread_modes_agree(threads):
    """1 or 2 threads (the passes split over pairs and row blocks, the transforms over maps) agree."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for shape in [(4, 3, 12, 10), (1, 2, 6, 6, 5)]:  # 12 pairs (2 maps per transform call), 2 pairs
            probs, target = make_inputs(shape, labels=True, ignore=0.1)
            check(probs, target, torch.float64)
            check(probs, target, torch.float32)
    finally:
        torch.set_num_threads(before)


@needs_op
@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
@pytest.mark.parametrize("include_background", [True, False])
def test_fused_activation_float_target(activation, include_background):
    """A soft float target with the activation fused: the target keeps only the loss channels."""
    g = torch.Generator().manual_seed(9)
    logits = torch.randn(2, 3, 7, 10, generator=g, dtype=torch.float64) * 2
    soft = torch.softmax(torch.randn(2, 3, 7, 10, generator=g, dtype=torch.float64) * 3, dim=1)
    kw = dict(softmax=activation == "softmax", sigmoid=activation == "sigmoid",
              include_background=include_background, reduction="none")
    x_ref = logits.clone().requires_grad_(True)
    ref = scc_fast.scc_loss(x_ref, soft, backend="reference", **kw)
    ref.sum().backward()
    x = logits.clone().requires_grad_(True)
    out = scc_fast.scc_loss(x, soft, backend="native", **kw)
    out.sum().backward()
    assert rel_err(out.detach(), ref.detach()) <= 1e-10
    assert rel_err(x.grad, x_ref.grad) <= 1e-10


def _softmax_step(logits, labels, backend, **kw):
    x = logits.detach().clone().requires_grad_(True)
    out = scc_fast.scc_loss(x, labels, softmax=True, backend=backend, reduction="none", **kw)
    (grad,) = torch.autograd.grad((out * torch.linspace(0.5, 1.5, out.numel()).reshape(out.shape).to(out.dtype)).sum(), x)
    return out.detach(), grad


@needs_op
@pytest.mark.parametrize("shape", [(2, 4, 16, 12), (1, 3, 9, 7), (2, 2, 6, 5, 7), (2, 4, 8, 8, 8), (1, 5, 7, 6, 5)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("chunk_bytes", [None, "1"])
@pytest.mark.parametrize("include_dc", [False, True])
def test_complement_spectrum(shape, dtype, chunk_bytes, include_dc, monkeypatch):
    """Softmax over every channel with in-range labels: one class's spectrum per image is N(1+i) at DC
    minus the others' (the setting native_complement, on by default). Against the reference with it on
    and off; the two differ in rounding only, which shows the complement really ran."""
    if chunk_bytes is not None:
        _settings.update(native_chunk_bytes=int(chunk_bytes))  # one image per chunk where C is even
    g = torch.Generator().manual_seed(11)
    logits = torch.randn(shape, generator=g, dtype=torch.float64) * 3
    labels = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=g)
    labels[0][labels[0] == 1] = 0  # an empty class in the first image
    ref, ref_grad = _softmax_step(logits, labels, "reference", include_dc=include_dc)
    results = {}
    for flag in ("1", "0"):
        _settings.update(native_complement=flag != "0")
        out, grad = _softmax_step(logits.to(dtype), labels, "native", include_dc=include_dc)
        assert rel_err(out, ref) <= TOL[dtype] and rel_err(grad, ref_grad) <= TOL[dtype]
        results[flag] = grad
    # Chunks hold whole images, an even number of pairs: the smallest chunk (2 pairs per thread) holds
    # C or 2C pairs only when that is at most 2 x threads.
    unit = shape[1] if shape[1] % 2 == 0 else 2 * shape[1]
    applies = chunk_bytes is None or unit <= 2 * torch.get_num_threads()
    assert torch.equal(results["1"], results["0"]) != applies


@needs_op
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_complement_falls_back_for_labels_out_of_range(dtype):
    """validate=False with labels outside [0, C): those voxels are in no class (as in the reference), the
    maps no longer sum to one, and the image's spectra are all transformed."""
    g = torch.Generator().manual_seed(12)
    logits = torch.randn(2, 3, 10, 9, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 3, (2, 10, 9), generator=g)
    labels[1, :2] = 3
    ref, ref_grad = _softmax_step(logits, labels, "reference", validate=False)
    out, grad = _softmax_step(logits.to(dtype), labels, "native", validate=False)
    assert rel_err(out, ref) <= TOL[dtype] and rel_err(grad, ref_grad) <= TOL[dtype]


@needs_op
@pytest.mark.parametrize("threads", [1, 2])
def test_complement_thread_modes(threads):
    """With 1 thread every transform is one call; with 2, the map left over by the even split (3 of an
    image's 4 classes) runs on MKL's own threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(13)
        logits = torch.randn(3, 4, 6, 7, 8, generator=g, dtype=torch.float64)
        labels = torch.randint(0, 4, (3, 6, 7, 8), generator=g)
        ref, ref_grad = _softmax_step(logits, labels, "reference")
        for dtype in (torch.float64, torch.float32):
            out, grad = _softmax_step(logits.to(dtype), labels, "native")
            assert rel_err(out, ref) <= TOL[dtype] and rel_err(grad, ref_grad) <= TOL[dtype]
    finally:
        torch.set_num_threads(before)


@needs_op
def test_complement_bitwise_deterministic():
    """The complement path with MKL's threads on the left-over map gives the same bits every run."""
    g = torch.Generator().manual_seed(14)
    logits = torch.randn(2, 4, 24, 20, 16, generator=g)
    labels = torch.randint(0, 4, (2, 24, 20, 16), generator=g)
    first = _softmax_step(logits, labels, "native")
    for _ in range(3):
        _softmax_step(torch.randn(1, 2, 9, 8, 7, generator=g), torch.randint(0, 2, (1, 9, 8, 7), generator=g), "native")
        again = _softmax_step(logits, labels, "native")
        assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


@needs_op
@pytest.mark.skipif(sys.platform != "linux", reason="busy processes as CPU competitors: Linux only here")
def test_results_do_not_depend_on_which_thread_runs_an_item():
    """The passes' items go to whichever thread is free (a thread done with its own share takes the
    other's last ones): with busy processes competing for the CPUs, so that threads run at unequal
    speeds and items change hands, every step gives the bits of an undisturbed one."""
    if torch.get_num_threads() < 2:
        pytest.skip("needs 2 threads")
    g = torch.Generator().manual_seed(15)
    logits = torch.randn(2, 4, 48, 40, 32, generator=g)  # 8 row blocks per image and pass
    labels = torch.randint(0, 4, (2, 48, 40, 32), generator=g)
    first = _softmax_step(logits, labels, "native")
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        for _ in range(6):
            again = _softmax_step(logits, labels, "native")
            assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    finally:
        for proc in busy:
            proc.kill()
            proc.wait()


@needs_op
@pytest.mark.parametrize("shape", [(2, 3, 10, 12), (2, 4, 6, 6, 6)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_complement_with_one_class_covering_an_image(shape, dtype):
    """An image labelled with one class only: that class (all N voxels) is the derived one, every other
    target of the image is empty (degenerate pairs, SCC 0 and no gradient from them)."""
    g = torch.Generator().manual_seed(15)
    logits = torch.randn(shape, generator=g, dtype=torch.float64) * 2
    labels = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=g)
    labels[0] = 1
    ref, ref_grad = _softmax_step(logits, labels, "reference")
    out, grad = _softmax_step(logits.to(dtype), labels, "native")
    assert torch.isfinite(out).all() and torch.isfinite(grad).all()
    assert rel_err(out, ref) <= TOL[dtype] and rel_err(grad, ref_grad) <= TOL[dtype]


def _check_labels_and_float_target(shape, dtype, seed):
    """Softmax of logits with integer labels (the complement spectrum where it applies) and
    probabilities with a float target (no complement), both against the float64 reference."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=g, dtype=torch.float64) * 2
    labels = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=g)
    ref, ref_grad = _softmax_step(logits, labels, "reference")
    out, grad = _softmax_step(logits.to(dtype), labels, "native")
    assert rel_err(out, ref) <= TOL[dtype] and rel_err(grad, ref_grad) <= TOL[dtype]
    probs, target = make_inputs(shape, labels=False, seed=seed + 1)
    check(probs, target, dtype)


@needs_op
def test_isa_switch(monkeypatch):
    # The setting native_isa caps the build; native.isa() reports the one that runs.
    _settings.update(native_isa="auto")
    widest = native.isa()
    assert widest in ("avx512", "avx2", "baseline")
    order = ["baseline", "avx2", "avx512"]
    for cap in order:
        _settings.update(native_isa=cap)
        assert native.isa() == order[min(order.index(cap), order.index(widest))]


@needs_op
def test_isa_switch_rejects_unknown_values(monkeypatch):
    with pytest.raises(ValueError, match="setting native_isa must be one of 'auto', 'baseline', 'avx2', 'avx512'.*'sse4'"):
        _settings.update(native_isa="sse4")
    assert _settings.current().native_isa == "auto"  # a refused value changes nothing
    # The operator checks what it is handed too (a call from torch.ops directly).
    with pytest.raises(RuntimeError, match="isa must be .*'sse4'"):
        torch.ops.scc_fast.native_configure("auto", "sse4", -1, 0, -1, True)
    assert native.isa() in ("avx512", "avx2", "baseline")


@needs_op
def test_fft_engine_switch(monkeypatch):
    """In place through MKL where libtorch exports it (x86-64 torch builds), the operator's own radix
    transform for float32 maps it fits where the AVX-512 build runs, ATen or MKL when asked."""
    _settings.update(native_fft="auto")
    _settings.update(native_isa="auto")
    engine = native.fft_engine()
    assert engine in ("mkl_inplace", "aten")
    if sys.platform.startswith("linux") and torch.backends.mkl.is_available():
        assert engine == "mkl_inplace"
    widest = native.isa()
    radix = f"radix_{widest}" if widest != "baseline" else engine
    for shape in [(64, 64, 64), (224, 224), (96, 96, 96), (7, 5, 16), (1, 2048)]:
        assert native.fft_engine(shape) == radix, shape
    # A prime factor of 11, 13; a last axis not a multiple of 8, under 16 or over 2048.
    for shape in [(44, 64), (64, 13, 64), (64, 60), (9, 7), (64, 8), (2, 4096)]:
        assert native.fft_engine(shape) == engine, shape
    assert native.fft_engine((64, 64, 64), torch.float64) == engine
    # The transform's build follows the inner loops' (the setting native_isa caps both).
    _settings.update(native_isa="avx2")
    assert native.fft_engine((64, 64, 64)) == ("radix_avx2" if widest != "baseline" else engine)
    _settings.update(native_isa="baseline")
    assert native.fft_engine((64, 64, 64)) == engine
    _settings.update(native_isa="auto")
    _settings.update(native_fft="mkl")
    assert native.fft_engine((64, 64, 64)) == engine
    _settings.update(native_fft="aten")
    assert native.fft_engine() == "aten" and native.fft_engine((64, 64, 64)) == "aten"


@needs_op
def test_fft_engine_rejects_bad_arguments_and_settings(monkeypatch):
    _settings.update(native_fft="auto")
    with pytest.raises(ValueError, match="dtype must be torch.float32 or torch.float64, got torch.float16"):
        native.fft_engine((64, 64), torch.float16)
    with pytest.raises(ValueError, match="spatial_shape must be a non-empty sequence of sizes >= 1, got \\(64, 0\\)"):
        native.fft_engine((64, 0))
    with pytest.raises(ValueError, match="spatial_shape"):
        native.fft_engine(())
    with pytest.raises(ValueError, match="setting native_fft must be one of 'auto', 'mkl', 'aten'.*'fftw'"):
        _settings.update(native_fft="fftw")
    with pytest.raises(RuntimeError, match="fft must be .*'fftw'"):
        torch.ops.scc_fast.native_configure("fftw", "auto", -1, 0, -1, True)
    assert native.fft_engine() in ("mkl_inplace", "aten")


_RADIX_NEEDS = {"avx512": "AVX-512 F/DQ/BW/VL and FMA", "avx2": "AVX2 and FMA"}


@pytest.fixture(params=["avx512", "avx2"])
def radix_build(request, monkeypatch):
    """Each build of the operator's own radix transform (the setting native_isa picks it); skips,
    saying what is missing, where this CPU or compiler lacks it."""
    _settings.update(native_fft="auto")
    _settings.update(native_isa=request.param)
    if native.fft_engine((64, 64)) != f"radix_{request.param}":
        pytest.skip(f"the radix transform's {request.param} build needs {_RADIX_NEEDS[request.param]} "
                    f"and a GCC x86-64 build; here the inner loops' widest build is {native.isa()!r}")
    return request.param


# 2D and 3D; every radix (2, 3, 4, 5, 7) on the leading axes and inside rows: a last axis of 64
# (one 8 x 8 step per row), 16 and 40 (partial groups of 8), 224 (7 x 4: three whole groups and a
# partial one), 128 and 2048 (radix-4 and -2 stages across the row's vectors); leading axes of 1 (no
# butterflies), 2 and up.
RADIX_FFT_SHAPES = [(2, 64, 64, 64), (3, 4, 64), (1, 2, 128), (2, 8, 2, 64), (1, 4, 16, 256), (1, 1, 2048),
                    (2, 1, 64), (1, 2, 1, 64), (1, 32, 512), (2, 224, 224), (1, 3, 5, 16), (2, 6, 10, 40),
                    (1, 14, 12, 56), (1, 7, 5, 24), (1, 25, 27, 120), (1, 9, 1680), (1, 1, 4, 64)]


@needs_op
@pytest.mark.parametrize("shape", RADIX_FFT_SHAPES)
@pytest.mark.parametrize("forward", [True, False])
@pytest.mark.parametrize("reverse_items", [False, True])
def test_radix_fft_matches_torch_fft(shape, forward, reverse_items, radix_build):
    """The operator's own transform (through a padded workspace, spectra unpermuted by the test hook)
    against torch.fft in complex128: forward fftn, inverse n * ifftn; each stage's items in either
    order (threads split them); both builds (8 and 4 complex lanes)."""
    g = torch.Generator().manual_seed(31)
    x = torch.complex(torch.randn(shape, generator=g), torch.randn(shape, generator=g))
    dims = tuple(range(1, x.dim()))
    x64 = x.to(torch.complex128)
    ref = torch.fft.fftn(x64, dim=dims) if forward else torch.fft.ifftn(x64, dim=dims, norm="forward")
    out = torch.ops.scc_fast.native_radix_fft(x, forward, reverse_items)
    err = ((out.to(torch.complex128) - ref).abs().max() / ref.abs().max()).item()
    assert err <= 1e-6, err


@needs_op
def test_radix_fft_hook_rejects_what_it_cannot_transform(radix_build):
    with pytest.raises(RuntimeError, match="maps must be a complex64 CPU tensor, got ComplexDouble"):
        torch.ops.scc_fast.native_radix_fft(torch.zeros(1, 4, 64, dtype=torch.complex128), True)
    for shape in [(1, 11, 64), (1, 4, 60), (1, 4, 8)]:
        with pytest.raises(RuntimeError, match="does not fit the transform"):
            torch.ops.scc_fast.native_radix_fft(torch.zeros(shape, dtype=torch.complex64), True)
    with pytest.raises(RuntimeError, match="K x spatial \\(2 or 3 axes\\)"):
        torch.ops.scc_fast.native_radix_fft(torch.zeros(64, dtype=torch.complex64), True)


@needs_op
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(
    "shape",
    # complement: 2 images x 3 of 4 classes (even split) and 1 image x 1 of 2 (one map, split over
    # the threads by stages); 3D with 2 of 3 and 4 of 5 classes transformed; float targets: 3 maps.
    # Sizes with radices 7 (224 = 7 x 32), 3 and 5.
    [(2, 4, 8, 64), (1, 2, 4, 64), (1, 3, 2, 4, 64), (2, 5, 4, 2, 128), (1, 3, 16, 256), (1, 3, 14, 224),
     (2, 2, 6, 5, 40)],
)
def test_radix_engine_matches_reference(shape, threads, radix_build):
    """Float32 losses and gradients through the radix transform (its spectra with digit-reversed
    leading axes: the passes reach mirror rows through its own table) against the float64 reference,
    with the complement spectrum (softmax, labels) and without it (a float target); both builds."""
    assert native.fft_engine(shape[2:]) == f"radix_{radix_build}"
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _check_labels_and_float_target(shape, torch.float32, seed=33)
    finally:
        torch.set_num_threads(before)


@needs_op
def test_radix_engine_results_do_not_depend_on_the_thread_count(radix_build):
    """One thread transforms every map itself; two split the maps, and a map left over stage by stage:
    the same arithmetic per item, so the same bits (each build)."""
    g = torch.Generator().manual_seed(35)
    logits = torch.randn(1, 2, 8, 16, 64, generator=g)  # 1 map per transform: split by stages
    labels = torch.randint(0, 2, (1, 8, 16, 64), generator=g)
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 2):  # and run to run: the same bits after other work in between
            torch.set_num_threads(threads)
            results.append(_softmax_step(logits, labels, "native"))
            _softmax_step(torch.randn(2, 3, 4, 6, 40, generator=g), torch.randint(0, 3, (2, 4, 6, 40), generator=g), "native")
    finally:
        torch.set_num_threads(before)
    for other in results[1:]:
        assert torch.equal(results[0][0], other[0]) and torch.equal(results[0][1], other[1])


@needs_op
@pytest.mark.parametrize("engine", ["mkl_inplace", "aten"])
@pytest.mark.parametrize("shape", [(2, 4, 16, 12), (1, 3, 9, 7), (2, 2, 6, 5, 7), (1, 5, 7, 6, 5)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("chunk_bytes", [None, "1"])
def test_fft_engines_match_reference(engine, shape, dtype, chunk_bytes, monkeypatch):
    """Both transform engines, with the complement spectrum (softmax, labels) and without it (a float
    target), one image or several per chunk, odd pair counts (an unpaired last inverse map)."""
    if engine == "aten":
        _settings.update(native_fft="aten")
    else:
        _settings.update(native_fft="auto")
        if native.fft_engine() != engine:
            pytest.skip("libtorch does not export MKL's DFTI here")
    if chunk_bytes is not None:
        _settings.update(native_chunk_bytes=int(chunk_bytes))
    _check_labels_and_float_target(shape, dtype, seed=21)


@needs_op
def test_buffer_cache_reuses_released_buffers(monkeypatch):
    """Released buffers are kept (up to the setting native_cache_mb) and reused; live outputs are never
    shared between calls; a cap of 0 keeps nothing; empty_cache frees everything."""
    _settings.update(native_cache_mb=None)
    g = torch.Generator().manual_seed(23)
    logits = torch.randn(2, 3, 12, 10, 8, generator=g)
    labels = torch.randint(0, 3, (2, 12, 10, 8), generator=g)
    native.empty_cache()
    assert native.cached_bytes() == 0
    first = _softmax_step(logits, labels, "native")
    kept = native.cached_bytes()
    # the field and statistics saved for backward and the workspace came back after the step
    field_bytes = logits.numel() * logits.element_size()
    assert kept >= field_bytes, kept

    # Two live results: distinct memory, and writing into one leaves the other alone.
    a = _softmax_step(logits, labels, "native")
    b = _softmax_step(logits, labels, "native")
    assert a[1].data_ptr() != b[1].data_ptr()
    assert torch.equal(a[1], first[1]) and torch.equal(b[1], first[1])
    a[1].zero_()
    assert torch.equal(b[1], first[1])
    del a
    c = _softmax_step(logits, labels, "native")  # may reuse a's released gradient buffer
    assert torch.equal(c[1], first[1]) and torch.equal(c[0], first[0])

    _settings.update(native_cache_mb=0)
    native.empty_cache()
    again = _softmax_step(logits, labels, "native")
    assert native.cached_bytes() == 0
    assert torch.equal(again[1], first[1])
    _settings.update(native_cache_mb=None)
    _softmax_step(logits, labels, "native")
    assert native.cached_bytes() > 0
    native.empty_cache()
    assert native.cached_bytes() == 0


@needs_op
def test_buffer_cache_respects_its_cap(monkeypatch):
    """Blocks that would take the idle total over the cap are freed, not kept."""
    g = torch.Generator().manual_seed(24)
    logits = torch.randn(1, 2, 64, 64, 32, generator=g)  # 1 MiB field: over a 1 MiB cap with the rest
    labels = torch.randint(0, 2, (1, 64, 64, 32), generator=g)
    native.empty_cache()
    _settings.update(native_cache_mb=1)
    _softmax_step(logits, labels, "native")
    assert 0 < native.cached_bytes() <= 1 << 20
    native.empty_cache()


@needs_op
def test_concurrent_calls_from_threads():
    """Calls from several Python threads at once (shared cache and transform descriptors) give the
    results of calls made one at a time."""
    import threading

    g = torch.Generator().manual_seed(25)
    cases = []
    for shape in [(2, 4, 10, 9, 8), (1, 3, 20, 18), (2, 2, 8, 8, 8)]:
        logits = torch.randn(shape, generator=g)
        labels = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=g)
        cases.append((logits, labels, _softmax_step(logits, labels, "native")))
    errors = []

    def worker(k):
        try:
            for i in range(6):
                logits, labels, want = cases[(k + i) % len(cases)]
                out, grad = _softmax_step(logits, labels, "native")
                if not (torch.equal(out, want[0]) and torch.equal(grad, want[1])):
                    errors.append(f"thread {k}, call {i}: result differs")
        except Exception as exc:  # noqa: BLE001 (reported below)
            errors.append(f"thread {k}: {exc!r}")

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


@needs_op
def test_buffer_cache_keeps_the_newest_shape(monkeypatch):
    """When the cap is reached, the oldest released blocks go first: after a change of shape the
    cache holds the new shape's buffers, not the old ones'."""
    g = torch.Generator().manual_seed(26)

    def step(depth):
        logits = torch.randn(1, 2, 32, 32, depth, generator=g)
        _softmax_step(logits, torch.randint(0, 2, (1, 32, 32, depth), generator=g), "native")

    # Room for one shape's buffers, and none of the other's beside depth 46's (1.88 of 2 MiB).
    _settings.update(native_cache_mb=2)
    native.empty_cache()
    step(46)
    kept_new = native.cached_bytes()
    native.empty_cache()
    step(32)
    kept_old = native.cached_bytes()
    assert kept_old != kept_new and kept_old + kept_new > 2 << 20, (kept_old, kept_new)
    step(46)
    assert native.cached_bytes() == kept_new
    native.empty_cache()


@needs_op
def test_cli_backends_names_the_transforms(capsys, monkeypatch):
    from scc_fast import cli

    _settings.update(native_fft="aten")
    assert cli.main(["backends"]) == 0
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("native")][0]
    assert "yes" in line and "transforms: aten" in line and "cached buffers now:" in line


@needs_op
@pytest.mark.parametrize("row_pad", [None, "0", "1", "5"])
@pytest.mark.parametrize("shape", [(2, 4, 16, 16), (1, 3, 6, 5, 24), (2, 2, 8, 8, 8), (1, 3, 9, 7), (1, 3, 2, 4, 64)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_padded_workspace_rows_match_reference(row_pad, shape, dtype, monkeypatch):
    """The in-place transforms run on workspace maps whose rows are padded (by default 2 elements
    where the last axis is a multiple of 8; the setting native_row_pad sets it): every pass must read
    and write rows at that stride, with the complement spectrum (softmax, labels) and without it
    (float32 x 2 x 4 x 64: the radix transform where it runs)."""
    _settings.update(native_fft="auto")
    if native.fft_engine() != "mkl_inplace":
        pytest.skip("libtorch does not export MKL's DFTI here: no padded workspace")
    if row_pad is None:
        _settings.update(native_row_pad=None)
    else:
        _settings.update(native_row_pad=int(row_pad))
    _check_labels_and_float_target(shape, dtype, seed=27)


@needs_op
def test_workspace_rows_padded_by_default_where_the_last_axis_is_a_multiple_of_8(monkeypatch):
    """The default padding shows in the size of the cached workspace: larger than unpadded for a last
    axis of 16, the same for a last axis of 7."""
    _settings.update(native_fft="auto")
    _settings.update(native_cache_mb=None)
    if native.fft_engine() != "mkl_inplace":
        pytest.skip("libtorch does not export MKL's DFTI here: no padded workspace")
    g = torch.Generator().manual_seed(29)

    def kept(shape, row_pad):
        if row_pad is None:
            _settings.update(native_row_pad=None)
        else:
            _settings.update(native_row_pad=int(row_pad))
        native.empty_cache()
        logits = torch.randn(shape, generator=g)
        _softmax_step(logits, torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=g), "native")
        return native.cached_bytes()

    assert kept((1, 4, 8, 12, 16), None) > kept((1, 4, 8, 12, 16), "0")
    assert kept((1, 4, 8, 12, 7), None) == kept((1, 4, 8, 12, 7), "0")
    native.empty_cache()


@needs_op
def test_buffer_cache_default_cap_keeps_a_large_calls_buffers(monkeypatch):
    """By default the cap is 64 MiB or the latest call's buffers, whichever is more: a volume whose
    buffers pass 64 MiB keeps them all for the next step; a smaller call after it brings the cap back
    to 64 MiB. An explicit setting native_cache_mb is the cap."""
    _settings.update(native_cache_mb=None)
    g = torch.Generator().manual_seed(30)
    big = torch.randn(1, 4, 104, 104, 104, generator=g)  # field, statistics, workspace, gradient: about 82 MB
    big_labels = torch.randint(0, 4, (1, 104, 104, 104), generator=g)
    native.empty_cache()
    _softmax_step(big, big_labels, "native")
    assert native.cached_bytes() > 64 << 20, native.cached_bytes()
    small = torch.randn(1, 2, 16, 16, generator=g)
    _softmax_step(small, torch.randint(0, 2, (1, 16, 16), generator=g), "native")
    assert native.cached_bytes() <= 64 << 20, native.cached_bytes()
    _settings.update(native_cache_mb=64)
    native.empty_cache()
    _softmax_step(big, big_labels, "native")
    assert 0 < native.cached_bytes() <= 64 << 20, native.cached_bytes()
    native.empty_cache()


# ---- validate=True inside the operator: flags from its passes, the errors of scc_loss's own checks ----

FLAG_NONFINITE, FLAG_LABEL = 1, 2


def _op_flags(x, target, activation=1, first_channel=0, first_class=0, ignore=None, need_grad=True):
    out = torch.ops.scc_fast.scc_forward(x, target, activation, first_channel, first_class, ignore, False, 0.5, 0.5,
                                         need_grad)
    assert out[4].dtype == torch.uint8 and out[4].shape == (x.shape[0],)
    return out[4].tolist()


@needs_op
@pytest.mark.parametrize("shape", [(3, 4, 12, 10), (3, 3, 6, 5, 7)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("need_grad", [True, False])
@pytest.mark.parametrize("chunk_bytes", [None, "1"])
def test_op_flags_name_the_images_with_bad_values(shape, dtype, need_grad, chunk_bytes, isa, monkeypatch):
    """Bit 1: a NaN/+-Inf logit seen by the softmax (any channel, any voxel); bit 2: a label that is no
    loss channel's. Per image, with the images split over chunks ("1") or not, with and without the
    gradient (activation pass or statistics pass)."""
    if chunk_bytes is not None:
        _settings.update(native_chunk_bytes=int(chunk_bytes))
    g = torch.Generator().manual_seed(21)
    x = torch.randn(shape, generator=g, dtype=dtype)
    labels = torch.randint(0, shape[1], (shape[0],) + shape[2:], generator=g)
    assert _op_flags(x, labels, need_grad=need_grad) == [0, 0, 0]
    for value, where in ((float("nan"), (1, 0)), (float("inf"), (1, 2)), (float("-inf"), (1, shape[1] - 1))):
        bad = x.clone()
        bad[where + (-1,) * (len(shape) - 2)] = value  # the last voxel of the image
        assert _op_flags(bad, labels, need_grad=need_grad) == [0, FLAG_NONFINITE, 0], value
    for value in (shape[1], -1, 1000):
        bad_labels = labels.clone()
        bad_labels[(2,) + (0,) * (len(shape) - 2)] = value
        assert _op_flags(x, bad_labels, need_grad=need_grad) == [0, 0, FLAG_LABEL], value
    both = x.clone()
    both[0, 1] = float("nan")
    bad_labels = labels.clone()
    bad_labels[0, 0] = shape[1]
    assert _op_flags(both, bad_labels, need_grad=need_grad) == [FLAG_NONFINITE | FLAG_LABEL, 0, 0]


@needs_op
def test_op_flags_where_the_passes_do_not_see_everything():
    """The flags say what the passes saw: a dropped background channel still goes through the
    softmax (bit 1), but its label 0 is no loss channel's (bit 2); the sigmoid and probabilities are
    not tested for NaN (bit 1 stays 0); an ignored label is no loss channel's; float targets have no
    labels."""
    g = torch.Generator().manual_seed(22)
    x = torch.randn(2, 3, 8, 9, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 3, (2, 8, 9), generator=g)
    labels[:, 0, 0] = 0
    bad = x.clone()
    bad[1, 0, 2, 2] = float("nan")
    assert _op_flags(bad, labels, first_channel=1, first_class=1) == [FLAG_LABEL, FLAG_LABEL | FLAG_NONFINITE]
    assert _op_flags(bad, labels, activation=2) == [0, 0]
    assert _op_flags(bad.softmax(1).nan_to_num(), labels, activation=0) == [0, 0]
    labels[:, 1, 1] = 2
    assert _op_flags(x, labels, ignore=2) == [FLAG_LABEL, FLAG_LABEL]
    ftarget = torch.rand(2, 3, 8, 9, generator=g, dtype=torch.float64)
    assert _op_flags(bad, ftarget) == [0, FLAG_NONFINITE]


def _loss_error(backend, x, target, **kw):
    with pytest.raises(ValueError) as info:
        scc_fast.scc_loss(x, target, softmax=True, backend=backend, **kw)
    return str(info.value)


@needs_op
@pytest.mark.parametrize("shape", [(2, 4, 12, 10), (2, 3, 6, 5, 7)])
def test_validate_in_op_raises_what_scc_loss_checks_raise(shape, monkeypatch):
    """softmax + integer labels: native makes validate's checks in its operator, with the errors the
    checks in scc_fast.functional give for backend "torch" (labels first when both are bad)."""
    g = torch.Generator().manual_seed(23)
    x = torch.randn(shape, generator=g)
    labels = torch.randint(0, shape[1], (shape[0],) + shape[2:], generator=g)
    nan_x = x.clone()
    nan_x[1, 0, 0] = float("nan")
    inf_x = x.clone()
    inf_x[0, -1, -1] = float("-inf")
    out_labels = labels.clone()
    out_labels[1, 0] = shape[1]
    out_labels[0, -1] = -3
    cases = [(nan_x, labels), (inf_x, labels), (x, out_labels), (nan_x, out_labels)]
    expected = [_loss_error("torch", *case) for case in cases]
    assert "NaN or Inf" in expected[0] and f"got values from -3 to {shape[1]}" in expected[2] and expected[3] == expected[2]

    # The op makes the checks: scc_fast.functional's own must not run on this path.
    def not_here(*args, **kwargs):
        raise AssertionError("validate's checks ran outside the operator")

    monkeypatch.setattr(scc_fast._checks, "check_values", not_here)
    assert [_loss_error("native", *case) for case in cases] == expected
    ok = scc_fast.scc_loss(x.requires_grad_(True), labels, softmax=True, backend="native")
    ok.backward()
    assert torch.isfinite(ok) and torch.isfinite(x.grad).all()
    # validate=False: NaN propagates as in backend torch; labels outside count in no class.
    assert torch.isnan(scc_fast.scc_loss(nan_x, labels, softmax=True, backend="native", validate=False))
    loose = scc_fast.scc_loss(x.detach(), out_labels, softmax=True, backend="native", validate=False)
    assert torch.allclose(loose, scc_fast.scc_loss(x.detach(), out_labels, softmax=True, backend="torch", validate=False))


@needs_op
@pytest.mark.parametrize(
    "kw",
    [dict(sigmoid=True), dict(softmax=True, include_background=False), dict(softmax=True, ignore_index=9), dict()],
    ids=["sigmoid", "no-background", "ignore_index", "probabilities"],
)
def test_validate_outside_the_op_for_other_configurations(kw):
    """Where the operator cannot see everything, native's checks run before it, as for every backend."""
    assert not native.validates_in_op(
        activation="sigmoid" if kw.get("sigmoid") else "softmax" if kw.get("softmax") else None,
        labels=True,
        first_channel=0 if kw.get("include_background", True) else 1,
        ignore_index=kw.get("ignore_index"),
    )
    g = torch.Generator().manual_seed(24)
    x = torch.rand(2, 3, 8, 7, generator=g)
    labels = torch.randint(0, 3, (2, 8, 7), generator=g)
    nan_x = x.clone()
    nan_x[0, 1, 2, 3] = float("nan")
    out_labels = labels.clone()
    out_labels[1, 1, 1] = 5
    for case in ((nan_x, labels), (x, out_labels)):
        errors = []
        for backend in ("torch", "native"):
            with pytest.raises(ValueError) as info:
                scc_fast.scc_loss(*case, backend=backend, **kw)
            errors.append(str(info.value))
        assert errors[0] == errors[1]


@needs_op
def test_validates_in_op_contract():
    assert native.validates_in_op(activation="softmax", labels=True, first_channel=0, ignore_index=None)
    for kw in (
        dict(activation="sigmoid", labels=True, first_channel=0, ignore_index=None),
        dict(activation=None, labels=True, first_channel=0, ignore_index=None),
        dict(activation="softmax", labels=False, first_channel=0, ignore_index=None),
        dict(activation="softmax", labels=True, first_channel=1, ignore_index=None),
        dict(activation="softmax", labels=True, first_channel=0, ignore_index=255),
    ):
        assert not native.validates_in_op(**kw), kw
    x = torch.randn(1, 3, 6, 6)
    with pytest.raises(ValueError, match="validate=True needs softmax.*activation='sigmoid'"):
        native.activated_correlation(x, torch.zeros(1, 6, 6, dtype=torch.long), activation="sigmoid", validate=True)
    with pytest.raises(ValueError, match="validate=True needs softmax.*ignore_index=4"):
        native.activated_correlation(
            x, torch.zeros(1, 6, 6, dtype=torch.long), activation="softmax", ignore_index=4, validate=True
        )


@needs_op
@pytest.mark.parametrize("budget, whole_images", [(4000, True), (3000, False)])
def test_chunks_grow_to_whole_images_within_four_budgets(budget, whole_images, monkeypatch):
    """Where one image unit (C pairs, 2C for odd C) is more than the chunk budget but at most four
    times it, chunks hold whole images (the complement spectrum and the softmax inside the build
    pass then apply); beyond that they do not. float32 16 x 16 maps with padded rows are 2304 bytes,
    a unit of 2 x 3 pairs 13824."""
    _settings.update(native_chunk_bytes=budget)
    g = torch.Generator().manual_seed(32)
    logits = torch.randn(2, 3, 16, 16, generator=g, dtype=torch.float64) * 3
    labels = torch.randint(0, 3, (2, 16, 16), generator=g)
    ref, ref_grad = _softmax_step(logits, labels, "reference")
    results = {}
    for flag in ("1", "0"):
        _settings.update(native_complement=flag != "0")
        out, grad = _softmax_step(logits.float(), labels, "native")
        assert rel_err(out, ref) <= TOL[torch.float32] and rel_err(grad, ref_grad) <= TOL[torch.float32]
        results[flag] = grad
    assert torch.equal(results["1"], results["0"]) != whole_images
