"""The correctness matrix: every available backend (and each build or mode it has) against the
float64 reference, on 2D and 3D cases and the loss's options, with the tolerances of
``_helpers.TOL`` (docs/loss.md section 6).

Two layers:

* the per-pair correlation (each backend's ``correlation``: SCC per (image, class), the valid mask
  and the gradient of a random weighting of it): cases x include_dc x labels or a soft target x
  dtype;
* the public ``scc_loss``: the activation (softmax, sigmoid, probabilities) x include_background x
  ignore_index; targets as labels, one-hot or soft; class weights, metric weights, include_dc and
  every reduction; degenerate pairs and mask-like targets.

What is specific to one backend (its limits, launch configurations, settings, errors) is tested in
that backend's own file; this one only says "the same numbers as the reference".
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import scc_fast
from scc_fast import _settings, backends

from _fused import fused_case
from _helpers import TOL, check_against_reference, make_inputs, rel_err

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
F64, F32 = torch.float64, torch.float32


@dataclasses.dataclass(frozen=True)
class Variant:
    """A backend in one of its builds or modes: the settings that select it, the dtypes it computes in."""

    name: str
    backend: str
    settings: dict = dataclasses.field(default_factory=dict)
    dtypes: tuple = (F64, F32)


VARIANTS = [
    Variant("torch", "torch"),
    # Each build of the native operator's inner loops and its own FFT (the setting caps the build).
    Variant("native-avx512", "native", {"native_isa": "avx512"}),
    Variant("native-avx2", "native", {"native_isa": "avx2"}),
    Variant("native-baseline", "native", {"native_isa": "baseline"}),
    # Backend triton computes float32, here its 2D maps in one fused launch per pair (its split
    # mode has tests of its own in test_triton.py). IEEE dots: TF32 would not meet 1e-5.
    Variant("triton", "triton", {"triton_precision": "ieee", "triton_2d": "fused"}, (F32,)),
    Variant("triton_fft", "triton_fft"),
]


def _skip_mark(v: Variant):
    status = scc_fast.available_backends()[v.backend]
    return () if status.available else pytest.mark.skip(reason=f"backend {v.backend!r} unavailable: {status.reason}")


_DTYPE_IDS = {F64: "fp64", F32: "fp32"}
#: (variant, dtype) for every dtype each variant computes in.
VARIANT_DTYPES = [pytest.param(v, dt, id=f"{v.name}-{_DTYPE_IDS[dt]}", marks=_skip_mark(v)) for v in VARIANTS
                  for dt in v.dtypes]


def _variant_shapes(shape_2d, shape_3d) -> list:
    """(variant, shape, dtype): the 2D shape in the variant's float64 (where it has it), the 3D one
    in float32, so that each variant meets both ranks and both dtypes in two runs."""
    params = []
    for v in VARIANTS:
        for rank, shape, dt in ((2, shape_2d, v.dtypes[0]), (3, shape_3d, F32)):
            params.append(pytest.param(v, shape, dt, id=f"{v.name}-{rank}d-{_DTYPE_IDS[dt]}", marks=_skip_mark(v)))
    return params


def _use(v: Variant) -> None:
    """Puts the variant's settings in force (conftest restores them); skips where this machine
    cannot run it, saying why."""
    _settings.update(**v.settings)
    if v.backend == "native" and backends.load("native").isa() != v.settings["native_isa"]:
        pytest.skip(f"the native operator's {v.settings['native_isa']} build needs a CPU with it; "
                    f"the widest here is {backends.load('native').isa()!r}")


def _require(v: Variant, shape, probs: torch.Tensor, target: torch.Tensor, dtype) -> None:
    _use(v)
    t = target.to(DEVICE) if not target.is_floating_point() else target.to(DEVICE, dtype)
    reason = backends.load(v.backend).unsupported_reason(probs.to(DEVICE, dtype), t)
    if reason is not None:
        pytest.skip(f"backend {v.backend!r} does not support this input: {reason}")


# ================================================================ the per-pair correlation

# 2D and 3D; odd and even last axes (the Nyquist weight), non-powers of two, one channel (sigmoid),
# depth 2, odd pair counts (the native operator's unpaired last inverse transform), sizes under
# 8 (native, torch, triton_fft) and sizes the native operator's own FFT takes (last axis a
# multiple of 8: 16, 64, 40).
CORR_SHAPES = [
    (2, 3, 16, 16), (2, 3, 15, 9), (2, 3, 8, 12), (1, 3, 9, 7), (1, 4, 8, 13), (3, 1, 7, 6), (2, 3, 9, 13),
    (1, 2, 16, 12), (2, 2, 24, 17), (1, 3, 31, 8), (3, 1, 10, 11), (1, 3, 12, 64),
    (2, 2, 6, 5, 7), (1, 3, 5, 4, 2), (1, 2, 8, 12, 10), (2, 3, 5, 9, 8), (1, 1, 2, 8, 9),
    (1, 2, 3, 16, 11), (2, 3, 7, 9, 6), (1, 2, 4, 6, 40),
]


# The correlation's options in a pairwise design: each shape runs two complementary settings of
# (target, include_dc, dtype), the shapes cycling through four such pairs, so that every pair of
# values of any two of (shape, target, include_dc, dtype) appears, in 2 runs per shape instead of 8.
# A variant with one dtype runs them in it.
_PAIRWISE = [
    ((True, True, F64), (False, False, F32)),
    ((True, False, F32), (False, True, F64)),
    ((True, False, F64), (False, True, F32)),
    ((True, True, F32), (False, False, F64)),
]


def _correlation_params() -> list:
    params = []
    for v in VARIANTS:
        for i, shape in enumerate(CORR_SHAPES):
            for labels, dc, dt in _PAIRWISE[i % 4]:
                dt = dt if dt in v.dtypes else v.dtypes[0]
                name = "-".join([v.name, "x".join(map(str, shape)), "labels" if labels else "soft",
                                 "dc" if dc else "no_dc", _DTYPE_IDS[dt]])
                params.append(pytest.param(v, shape, labels, dc, dt, id=name, marks=_skip_mark(v)))
    return params


@pytest.mark.parametrize("variant,shape,labels,include_dc,dtype", _correlation_params())
def test_correlation_matches_reference(variant, shape, labels, include_dc, dtype):
    """Labels with 10% ignored voxels (-1, as scc_loss passes them) or a soft target; magnitude and
    phase weighted 0.3 / 0.7."""
    probs, target = make_inputs(shape, labels, ignore=0.1 if labels else 0.0, follow=True)
    _require(variant, shape, probs, target, dtype)
    check_against_reference(backends.load(variant.backend).correlation, probs, target, dtype, DEVICE, first_class=0,
                            include_dc=include_dc, magnitude_weight=0.3, phase_weight=0.7)


@pytest.mark.parametrize("shape", [(2, 3, 10, 11), (1, 3, 4, 6, 9)], ids=["2d", "3d"])
@pytest.mark.parametrize("variant,dtype", VARIANT_DTYPES)
def test_correlation_first_class_and_metric_weights(variant, shape, dtype):
    """Channels from class 1 on (include_background=False's call), and each metric alone or mixed."""
    probs, target = make_inputs(shape, labels=True, ignore=0.1, follow=True, seed=4)
    _require(variant, shape, probs, target, dtype)
    fn = backends.load(variant.backend).correlation
    check_against_reference(fn, probs[:, 1:], target, dtype, DEVICE, first_class=1, include_dc=False,
                            magnitude_weight=0.5, phase_weight=0.5)
    for mw, pw in ((1.0, 0.0), (0.0, 1.0), (2.0, 0.25)):
        check_against_reference(fn, probs, target, dtype, DEVICE, first_class=0, include_dc=True,
                                magnitude_weight=mw, phase_weight=pw)


# ================================================================ the public loss


def _loss_and_grad(backend: str, inputs: torch.Tensor, target: torch.Tensor, dtype, seed: int = 7, **kw):
    """``scc_loss`` and the input gradient under random upstream weights (per pair for "none")."""
    x = inputs.detach().to(DEVICE, dtype).requires_grad_(True)
    t = target.to(DEVICE) if not target.is_floating_point() else target.to(DEVICE, dtype)
    loss = scc_fast.scc_loss(x, t, backend=backend, **kw)
    upstream = torch.rand(loss.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 0.5
    (grad,) = torch.autograd.grad((loss * upstream.to(DEVICE, dtype)).sum(), x)
    return loss.detach(), grad


def _check_loss(v: Variant, shape, inputs, target, dtype, **kw) -> None:
    probs = torch.softmax(inputs, 1) if kw.get("softmax") else (torch.sigmoid(inputs) if kw.get("sigmoid") else inputs)
    t = target if target.is_floating_point() else target.clamp_min(0)
    _require(v, shape, probs, t, dtype)
    ref, ref_grad = _loss_and_grad("reference", inputs, target, F64, **kw)
    out, grad = _loss_and_grad(v.backend, inputs, target, dtype, **kw)
    assert out.shape == ref.shape and out.dtype == dtype and grad.dtype == dtype
    assert rel_err(out, ref) <= TOL[dtype], rel_err(out, ref)
    assert rel_err(grad, ref_grad) <= TOL[dtype], rel_err(grad, ref_grad)


@pytest.mark.parametrize("ignore_index", [None, 255, 1], ids=["no_ignore", "ignore255", "ignore1"])
@pytest.mark.parametrize("include_background", [True, False], ids=["bg", "no_bg"])
@pytest.mark.parametrize("activation", ["softmax", "sigmoid", None], ids=["softmax", "sigmoid", "probs"])
@pytest.mark.parametrize("variant,shape,dtype", _variant_shapes((2, 3, 9, 12), (1, 3, 4, 8, 9)))
def test_loss_activation_background_ignore(variant, shape, dtype, activation, include_background, ignore_index):
    """Per pair (reduction "none"): the activation, the background drop and the ignore mask, which
    the fused backends apply inside their kernels and the reference with torch ops. ignore_index=1
    is also a class label: that class's target is empty where ignored."""
    logits, labels = fused_case(shape, ignore_index, seed=0)
    inputs = logits if activation else torch.softmax(logits, 1)
    _check_loss(variant, shape, inputs, labels, dtype, softmax=activation == "softmax", sigmoid=activation == "sigmoid",
                include_background=include_background, ignore_index=ignore_index, reduction="none")


LOSS_CASES = {
    "softmax": dict(softmax=True),
    "dc": dict(softmax=True, include_dc=True),
    "no_bg": dict(softmax=True, include_background=False),
    "weights": dict(softmax=True, weight=[0.2, 1.0, 3.0]),
    "no_bg_weights_ignore255": dict(softmax=True, include_background=False, weight=[1.0, 2.0], ignore_index=255),
    "ignore1": dict(softmax=True, ignore_index=1),
    "sigmoid_magnitude": dict(sigmoid=True, magnitude_weight=1.0, phase_weight=0.0),
    "phase_x2": dict(softmax=True, magnitude_weight=0.0, phase_weight=2.0),
}


def _labels_with_a_degenerate_pair(shape, ignore_255: bool):
    logits, labels = fused_case(shape, None, seed=2)
    labels[0][labels[0] == 2] = 0  # class 2 absent from image 0: a pair the reductions leave out
    if ignore_255:
        labels[-1, :3] = 255
    return logits, labels


@pytest.mark.parametrize("case", LOSS_CASES)
@pytest.mark.parametrize("variant,shape,dtype", _variant_shapes((2, 3, 14, 11), (1, 3, 6, 7, 8)))
def test_loss_options(variant, shape, dtype, case):
    """Class weights, metric weights, include_dc, the background drop and ignore_index, per pair
    (reduction "none"), with a degenerate pair."""
    kw = LOSS_CASES[case]
    logits, labels = _labels_with_a_degenerate_pair(shape, kw.get("ignore_index") == 255)
    _check_loss(variant, shape, logits, labels, dtype, reduction="none", **kw)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("variant,shape,dtype", _variant_shapes((2, 3, 14, 11), (1, 3, 6, 7, 8)))
def test_loss_reductions(variant, shape, dtype, reduction):
    """Every reduction, over class weights, the background drop, ignored voxels and a degenerate
    pair (left out of the mean; weights of the pairs kept)."""
    for case in ("weights", "no_bg_weights_ignore255"):
        kw = LOSS_CASES[case]
        logits, labels = _labels_with_a_degenerate_pair(shape, kw.get("ignore_index") == 255)
        _check_loss(variant, shape, logits, labels, dtype, reduction=reduction, **kw)


def _blobs(shape, seed: int) -> torch.Tensor:
    """Mask-like labels: class c in ellipsoids of random centre and radii over a background 0, as
    organ masks look (and spectra concentrated at low frequencies, unlike random labels)."""
    g = torch.Generator().manual_seed(seed)
    b, c, *spatial = shape
    grids = torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in spatial], indexing="ij")
    labels = torch.zeros((b, *spatial), dtype=torch.int64)
    for i in range(b):
        for cls in range(1, c):
            centre = [torch.rand((), generator=g).item() * n for n in spatial]
            radius = [(0.15 + 0.25 * torch.rand((), generator=g).item()) * n for n in spatial]
            inside = sum(((x - m) / r) ** 2 for x, m, r in zip(grids, centre, radius)) <= 1
            labels[i][inside] = cls
    return labels


@pytest.mark.parametrize("shape", [(2, 3, 24, 20), (1, 3, 8, 12, 10)], ids=["2d", "3d"])
@pytest.mark.parametrize("target_kind", ["labels", "one_hot", "soft"])
@pytest.mark.parametrize("variant,dtype", VARIANT_DTYPES)
def test_loss_mask_like_targets(variant, shape, target_kind, dtype):
    """Ellipsoid masks as labels, as their one-hot float target, or smoothed into a soft target;
    logits that follow the mask, as a trained network's do (SCC near 1)."""
    labels = _blobs(shape, seed=9)
    one_hot = torch.nn.functional.one_hot(labels, shape[1]).movedim(-1, 1).double()
    g = torch.Generator().manual_seed(10)
    logits = 4 * one_hot + torch.randn(shape, generator=g, dtype=torch.float64)
    target = {"labels": labels, "one_hot": one_hot, "soft": torch.softmax(3 * one_hot + torch.randn(shape, generator=g,
                                                                                                     dtype=F64), 1)}
    _check_loss(variant, shape, logits, target[target_kind], dtype, softmax=True, include_background=False)


@pytest.mark.parametrize("shape", [(2, 4, 12, 12), (2, 4, 12, 64), (2, 4, 4, 6, 5)], ids=["2d", "2d_radix", "3d"])
@pytest.mark.parametrize("include_dc", [False, True], ids=["no_dc", "dc"])
@pytest.mark.parametrize("variant,dtype", VARIANT_DTYPES)
def test_loss_degenerate_pairs(variant, shape, include_dc, dtype):
    """A class covering image 0 (degenerate without DC; its other classes absent), a class absent
    from image 1, and a float target with one non-empty pair: no NaN, the same loss and gradient as
    the reference (which leaves degenerate pairs out of the mean)."""
    logits, labels = fused_case(shape, None, seed=3)
    labels[0] = 1
    labels[1][labels[1] == 3] = 0
    _check_loss(variant, shape, logits, labels, dtype, softmax=True, include_dc=include_dc, reduction="none")
    _check_loss(variant, shape, logits, labels, dtype, softmax=True, include_dc=include_dc)
    float_target = torch.zeros(shape, dtype=torch.float64)
    float_target[0, 0, ..., 1:4, 2:9] = 1.0
    _check_loss(variant, shape, logits, float_target, dtype, softmax=True, include_dc=include_dc)
