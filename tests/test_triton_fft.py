"""Backend "triton_fft" against the float64 reference, and the measured dispatch table of "auto".

On a machine without CUDA the kernels run under the Triton interpreter (tests/conftest.py sets
TRITON_INTERPRET=1 before anything imports triton), so shapes are small.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import scc_fast
from scc_fast import _settings
from scc_fast import backends
from scc_fast.backends import dispatch
from scc_fast.backends._protocol import FieldRequest
from scc_fast.benchmark.live_bytes import LiveBytes
from scc_fast.reference import reference_correlation

import _helpers
from _helpers import check_against_reference, per_pair_grad, rel_err
from _aot import assert_compiles

triton_fft = pytest.importorskip("scc_fast.backends.triton_fft")
if triton_fft.unavailable_reason() is not None:
    pytest.skip(triton_fft.unavailable_reason(), allow_module_level=True)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ROOT = Path(__file__).resolve().parents[1]

# Several chunks of classes, several splits per pair and several tiles per split.
SMALL_LAUNCH = dict(chunk_elements=1, splits=3, block=64)


def make_inputs(shape, labels: bool, seed: int = 0, ignore: bool = False, n_labels: int | None = None):
    """``_helpers.make_inputs`` as these tests use it: 15% of the labels ignored where ``ignore``."""
    return _helpers.make_inputs(shape, labels, seed, ignore=0.15 if ignore else 0.0, n_labels=n_labels)


def check(probs, target, dtype, tol=None, launch=None, **kw):
    """triton_fft's correlation (with an explicit launch configuration where given) against the
    float64 reference (``_helpers.check_against_reference``)."""
    fn = triton_fft.correlation
    if launch:
        fn = lambda p, t, **k: triton_fft_forward(p, t, launch, **k)  # noqa: E731
    return check_against_reference(fn, probs, target, dtype, DEVICE, tol, **kw)


class _Forced(torch.autograd.Function):
    """triton_fft with an explicit launch configuration (chunks, splits, tile size)."""

    @staticmethod
    def forward(ctx, probs, target, launch, first_class, include_dc, mw, pw):
        scc, valid, grad = triton_fft._forward(probs, target, first_class, include_dc, mw, pw, True, **launch)
        ctx.save_for_backward(grad)
        ctx.mark_non_differentiable(valid)
        return scc, valid

    @staticmethod
    def backward(ctx, grad_scc, _):
        (grad,) = ctx.saved_tensors
        return grad * grad_scc.view(grad_scc.shape + (1,) * (grad.dim() - 2)), None, None, None, None, None, None


def triton_fft_forward(p, t, launch, *, first_class=0, include_dc=False, magnitude_weight=0.5, phase_weight=0.5):
    return _Forced.apply(p, t, launch, first_class, include_dc, magnitude_weight, phase_weight)


# ---------------------------------------------------------------- correlation vs reference


@pytest.mark.parametrize("shape", [(2, 3, 8, 12), (2, 3, 7, 9, 6)], ids=["2d", "3d"])
@pytest.mark.parametrize("labels", [True, False], ids=["labels", "float"])
@pytest.mark.parametrize("include_dc", [False, True], ids=["no_dc", "dc"])
def test_many_chunks_splits_and_tiles(shape, labels, include_dc):
    # One class per chunk, 3 splits of each map with tiles of 64: exercises the chunk loop, the
    # merge of partial moments across splits and the Chan update across tiles.
    probs, target = make_inputs(shape, labels, seed=5, ignore=labels)
    check(probs, target, torch.float32, 1e-5, launch=SMALL_LAUNCH, include_dc=include_dc)
    check(probs, target, torch.float64, 1e-10, launch=SMALL_LAUNCH, include_dc=include_dc)


@pytest.mark.parametrize("labels", [True, False], ids=["labels", "float"])
@pytest.mark.slow
def test_more_splits_than_the_pair_kernel_reads_at_once(labels, monkeypatch):
    # 48 splits of each map's moments and 63 of its spectrum: the pair kernel combines them
    # 16 at a time (its blocks capped at 16 splits here) and merges the blocks.
    monkeypatch.setattr(triton_fft, "PAIR_MAX_SPLIT_BLOCK", 16)
    launch = dict(splits=80, block=4)
    probs, target = make_inputs((2, 3, 7, 9, 6), labels, seed=8, ignore=labels)
    assert triton_fft._splits(7 * 9 * 6, 6, 4, 1, 80)[0] > 2 * 16
    assert triton_fft._splits(7 * 9 * 4, 6, 4, 1, 80)[0] > 2 * 16
    assert triton_fft._pair_blocks(63) == (64, 16)
    check(probs, target, torch.float32, 1e-5, launch=launch)
    check(probs, target, torch.float64, 1e-10, launch=launch)
    check_activated((2, 3, 7, 9, 6), 1, labels=labels, launch=launch)


@pytest.mark.parametrize("shape", [(2, 2, 10, 9), (1, 2, 6, 5, 8)], ids=["2d", "3d"])
def test_first_class_and_ignored_labels(shape):
    # Channel j is label first_class + j; label 0 (background dropped) and -1 are in no channel.
    probs, target = make_inputs(shape, labels=True, seed=2, ignore=True, n_labels=shape[1] + 1)
    for dtype, tol in ((torch.float32, 1e-5), (torch.float64, 1e-10)):
        check(probs, target, dtype, tol, first_class=1)


# ---------------------------------------------------------------- the activation in stage 1


def check_activated(shape, activation, *, labels=True, first_channel=0, ignore_index=None, x_dtype=torch.float32,
                    launch=None, include_dc=False, seed=21):
    """Stage 1 computing p from the logits (``_forward(..., activation=...)``) against the
    float64 reference of the probabilities made by torch; the field dSCC/dp, weighted per pair."""
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(shape, generator=g, dtype=torch.float64) * 2).to(x_dtype).double()
    spatial = (shape[0],) + tuple(shape[2:])
    n_loss = shape[1] - first_channel
    if labels:
        # Labels past the classes (in no channel) and the ignored label among them.
        target = torch.randint(-1, shape[1] + 1, spatial, generator=g)
    else:
        target = torch.softmax(torch.randn((shape[0], n_loss) + tuple(shape[2:]), generator=g, dtype=torch.float64) * 3, 1)
    name = {1: "softmax", 2: "sigmoid"}[activation]
    first_class = first_channel if labels else 0
    p, t = scc_fast.backends.activation.probabilities(logits, target, name, first_channel, ignore_index)
    ref, ref_valid, ref_grad = per_pair_grad(
        reference_correlation, p.contiguous(), t, first_class=first_class, include_dc=include_dc
    )
    w = torch.rand(ref.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = target.to(DEVICE) if labels else target.to(DEVICE, torch.float32)
    scc, valid, field = triton_fft._forward(
        logits.to(DEVICE, x_dtype), y, first_class, include_dc, 0.5, 0.5, True,
        activation=activation, first_channel=first_channel, ignore_index=ignore_index, **(launch or {}),
    )
    grad = field.double().cpu() * w.view(w.shape + (1,) * (field.dim() - 2))
    assert scc.dtype == torch.float32 and field.shape == (shape[0], n_loss) + tuple(shape[2:])
    assert torch.equal(valid.cpu(), ref_valid)
    # The correlation is O(1): its error is measured against max(||ref||, 1), docs/loss.md section 6.
    assert rel_err(scc, ref, 1.0) <= 1e-5, rel_err(scc, ref, 1.0)
    assert rel_err(grad, ref_grad) <= 1e-5, rel_err(grad, ref_grad)


ACTIVATED_CASES = [
    dict(activation=1),
    dict(activation=2),
    dict(activation=1, first_channel=1),
    dict(activation=1, ignore_index=2),  # a loss class ignored: its target is 0 there
    dict(activation=1, first_channel=1, ignore_index=-1),
    dict(activation=2, ignore_index=0, include_dc=True),
    dict(activation=1, labels=False),
    dict(activation=2, labels=False, first_channel=1),
    dict(activation=1, x_dtype=torch.float16),
    dict(activation=1, x_dtype=torch.bfloat16, first_channel=1),
]


@pytest.mark.parametrize("case", ACTIVATED_CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("shape", [(2, 3, 9, 10), (1, 5, 6, 7, 8)], ids=["2d", "3d"])
def test_activation_in_stage_one_matches_reference(shape, case):
    check_activated(shape, **case)


@pytest.mark.parametrize("case", [dict(activation=1, ignore_index=1), dict(activation=1, labels=False),
                                  dict(activation=2, first_channel=1)], ids=["softmax-ignore", "float", "sigmoid-bg"])
@pytest.mark.parametrize("shape", [(2, 3, 8, 12), (2, 4, 7, 9, 6)], ids=["2d", "3d"])
def test_activation_in_stage_one_many_chunks_splits_and_tiles(shape, case):
    # One class per chunk (stage 1 of every chunk reads all C logits, the first writes the int8
    # labels), 3 splits per image, tiles of 64 voxels.
    check_activated(shape, **case, launch=SMALL_LAUNCH)


def _count_launches(monkeypatch, name):
    """Count the launches of triton_fft kernel ``name`` (the kernel still runs)."""
    kernel, calls = getattr(triton_fft, name), []

    class Counting:
        def __getitem__(self, grid):
            calls.append(grid)
            return kernel[grid]

    monkeypatch.setattr(triton_fft, name, Counting())
    return calls


def test_scc_loss_computes_the_softmax_in_stage_one(monkeypatch):
    calls = _count_launches(monkeypatch, "_activated_moments_kernel")
    stats = _count_launches(monkeypatch, "_spatial_stats_kernel")
    logits = torch.randn(2, 3, 8, 9, dtype=torch.float64)
    labels = torch.randint(0, 3, (2, 8, 9))
    ref, ref_grad = loss_and_grad("reference", logits, labels, torch.float64, softmax=True, ignore_index=1)
    out, grad = loss_and_grad("triton_fft", logits, labels, torch.float32, softmax=True, ignore_index=1)
    assert len(calls) == 1 and not stats
    assert rel_err(out, ref) <= 1e-5 and rel_err(grad, ref_grad) <= 1e-5
    # Turned off, the probabilities come from torch and stage 1 is the statistics pass.
    _settings.update(fft_activation_in_kernel=False)
    out, grad = loss_and_grad("triton_fft", logits, labels, torch.float32, softmax=True, ignore_index=1)
    assert len(calls) == 1 and len(stats) == 1
    assert rel_err(out, ref) <= 1e-5 and rel_err(grad, ref_grad) <= 1e-5


def test_wide_inputs_take_torch_probabilities(monkeypatch):
    # More channels than one tile holds: the probabilities come from torch, the result is the same.
    calls = _count_launches(monkeypatch, "_activated_moments_kernel")
    monkeypatch.setattr(triton_fft, "MAX_ACTIVATION_CHANNELS", 2)
    logits = torch.randn(1, 3, 6, 5, 7, dtype=torch.float64)
    labels = torch.randint(0, 3, (1, 6, 5, 7))
    ref, ref_grad = loss_and_grad("reference", logits, labels, torch.float64, softmax=True, include_background=False)
    out, grad = loss_and_grad("triton_fft", logits, labels, torch.float32, softmax=True, include_background=False)
    assert not calls
    assert rel_err(out, ref) <= 1e-5 and rel_err(grad, ref_grad) <= 1e-5


@pytest.mark.parametrize("activation", [1, 0], ids=["logits", "probabilities"])
def test_forward_peak_holds_two_spectra_and_a_map(activation):
    # Each map is freed once transformed (y first) and the spatial terms of the gradient are
    # added in the spectrum, so p is not kept for a pass after the inverse transform: the
    # forward's own tensors peak at one map M and two half spectra S (p, Y, P) with the
    # activation, at two spectra (Y, P) plus the int8 labels without. (Until this layout: a
    # gradient buffer from the start and p, y, P, Y at once, 3M + 2S.)
    b, c, d, h, w = 2, 3, 16, 16, 16
    g = torch.Generator().manual_seed(40)
    x = torch.randn(b, c, d, h, w, generator=g).to(DEVICE)
    labels = torch.randint(0, c, (b, d, h, w), generator=g).to(DEVICE)
    source = x if activation else torch.softmax(x, 1)
    map_bytes, spectrum_bytes = b * c * d * h * w * 4, b * c * d * h * (w // 2 + 1) * 8
    with torch.no_grad(), LiveBytes(source, labels) as live:
        out = triton_fft._forward(source, labels, 0, False, 0.5, 0.5, True, activation=activation)
    bound = map_bytes + 2 * spectrum_bytes if activation else max(map_bytes, spectrum_bytes) + spectrum_bytes + b * d * h * w
    assert live.peak <= 1.01 * bound, (live.peak / map_bytes, bound / map_bytes)
    assert live.now == sum(t.untyped_storage().nbytes() for t in out)  # nothing else is left alive


class _InverseTransforms(TorchDispatchMode):
    """The normalization argument of every complex-to-real transform made under this mode."""

    def __init__(self):
        super().__init__()
        self.normalizations: list[int] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._fft_c2r.default:
            self.normalizations.append(int(args[2]))
        return func(*args, **(kwargs or {}))


# ------------------------------------------------------- class 0 derived from the other classes


def derived_inputs(shape, labels=True, seed=31, shift0=0.0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=g, dtype=torch.float64) * 2
    logits[:, 0] += shift0  # class 0's share of the probability mass
    spatial = (shape[0],) + tuple(shape[2:])
    if labels:
        target = torch.randint(0, shape[1], spatial, generator=g)
    else:
        target = torch.softmax(torch.randn(shape, generator=g, dtype=torch.float64) * 3, 1)
    return logits, target


def check_derived(logits, target, *, include_dc=False, launch=None, tol=1e-5):
    """``_forward(..., derive_first=True)`` against the float64 reference: per-pair SCC, valid, and
    dL/dx for L = the sum of SCC over the valid pairs (one upstream value for every pair, as the
    mean and sum give), through the activation's backward kernel and its torch fallback."""
    x = logits.clone().requires_grad_(True)
    ref, ref_valid = reference_correlation(torch.softmax(x, 1), target, include_dc=include_dc)
    (ref_dx,) = torch.autograd.grad((ref * ref_valid).sum(), x)
    t = target.to(DEVICE) if not target.is_floating_point() else target.to(DEVICE, torch.float32)
    x32 = logits.to(DEVICE, torch.float32)
    scc, valid, field = triton_fft._forward(
        x32, t, 0, include_dc, 0.5, 0.5, True, activation=1, derive_first=True, **(launch or {})
    )
    b, c = logits.shape[:2]
    assert field.shape == (b, c - 1) + tuple(logits.shape[2:])  # no field of class 0
    assert torch.equal(valid.cpu(), ref_valid)
    assert rel_err(scc, ref.detach()) <= tol, rel_err(scc, ref.detach())
    upstream = torch.full((b, c), 1.3, device=DEVICE)
    for use_kernel in (True, False):
        dx = scc_fast.backends.activation._activation_backward(x32, field, upstream, t, 1, 0, None, use_kernel)
        assert rel_err(dx, 1.3 * ref_dx) <= tol, (use_kernel, rel_err(dx, 1.3 * ref_dx))


@pytest.mark.parametrize("include_dc", [False, True], ids=["no_dc", "dc"])
@pytest.mark.parametrize("labels", [True, False], ids=["labels", "float"])
@pytest.mark.parametrize("shape", [(2, 3, 9, 10), (1, 2, 8, 12), (2, 4, 6, 7, 5), (1, 5, 7, 9, 6)],
                         ids=lambda s: "x".join(map(str, s)))
def test_derived_first_class_matches_reference(shape, labels, include_dc):
    # 2D and 3D, odd and even last axes (the Nyquist weight), 2 classes (one transformed), DC in
    # K (class 0's DC bin is N minus the others').
    check_derived(*derived_inputs(shape, labels), include_dc=include_dc)


@pytest.mark.parametrize("shape", [(2, 3, 8, 12), (1, 5, 6, 7, 5)], ids=["2d", "3d"])
def test_derived_first_class_splits_and_tiles(shape):
    # Several splits per image and tiles of 16 bins in the derived kernels (and stage 1).
    check_derived(*derived_inputs(shape), launch=dict(splits=3, block=16))


def test_derived_first_class_with_degenerate_pairs():
    # Image 0: class 0 absent (its derived field must still be 0, and every other class's
    # gradient exact); image 1: class 0 everywhere (all degenerate without DC); image 2: class 2 absent.
    logits, target = derived_inputs((3, 3, 8, 10), seed=33)
    target[0][target[0] == 0] = 1
    target[1] = 0
    target[2][target[2] == 2] = 1
    check_derived(logits, target)


def test_derived_first_class_with_labels_outside_the_classes():
    # Only p's class 0 is derived (the softmax sums to one whatever the labels); y is transformed
    # for every class, so labels outside the classes (validate=False) still count as 0 in every
    # channel, as the reference has them.
    logits, target = derived_inputs((2, 3, 8, 10), seed=39)
    target[0, :3] = -1
    target[1, 2:5] = 7
    check_derived(logits, target)


@pytest.mark.parametrize("shift0", [-6.0, 4.0], ids=["class0-0.5%", "class0-75%"])
def test_derived_first_class_conditioning(shift0):
    # Class 0's spectrum is the others' summed: float32 rounding of theirs lands on it. With 0.5%
    # of the probability mass (a network that predicts almost no background) and with most of it,
    # loss and gradient stay within the tolerance (at 0.03% the gradient's error is about 4e-5:
    # the setting fft_derive says so).
    check_derived(*derived_inputs((2, 4, 12, 10, 8), shift0=shift0, seed=35))


def test_derived_field_is_the_difference_of_the_fields():
    logits, target = derived_inputs((2, 4, 6, 7, 8), seed=37)
    x = logits.to(DEVICE, torch.float32)
    _, _, full = triton_fft._forward(x, target.to(DEVICE), 0, False, 0.5, 0.5, True, activation=1)
    _, _, derived = triton_fft._forward(x, target.to(DEVICE), 0, False, 0.5, 0.5, True, activation=1, derive_first=True)
    assert rel_err(derived, full[:, 1:] - full[:, :1]) <= 1e-5


@pytest.mark.parametrize("bad", [dict(activation=2), dict(activation=1, first_channel=1),
                                 dict(activation=1, ignore_index=1), dict(activation=1, chunk_elements=1),
                                 dict(activation=0)],
                         ids=["sigmoid", "no-background", "ignore", "chunks", "probabilities"])
def test_derive_first_refuses_maps_that_do_not_sum_to_one(bad):
    logits, target = derived_inputs((2, 3, 6, 8))
    x = logits.float() if bad.get("activation") else torch.softmax(logits, 1).float()
    with pytest.raises(ValueError, match="derive_first needs softmax over every channel"):
        triton_fft._forward(x.to(DEVICE), target.to(DEVICE), 0, False, 0.5, 0.5, True, derive_first=True, **bad)


@pytest.mark.parametrize("kw,derives", [
    (dict(softmax=True), True),
    (dict(softmax=True, reduction="sum"), True),
    (dict(softmax=True, reduction="none"), False),  # any upstream gradient per pair
    (dict(softmax=True, weight=[1.0, 2.0, 0.5]), True),  # the field carries the class weights
    (dict(softmax=True, weight=[0.0, 2.0, 0.5], reduction="sum"), True),  # class 0 weighted out
    (dict(softmax=True, ignore_index=2), False),  # ignored voxels: the maps sum to 0 there
    (dict(softmax=True, include_background=False), False),  # class 0 not in the loss: nothing to derive
    (dict(sigmoid=True), False),
], ids=["mean", "sum", "none", "weights", "weights-sum", "ignore", "no-background", "sigmoid"])
def test_scc_loss_derives_class_0_where_the_gradient_allows(monkeypatch, kw, derives):
    calls = _count_launches(monkeypatch, "_derived_field_kernel")
    g = torch.Generator().manual_seed(43)
    logits = torch.randn(2, 3, 6, 7, 5, generator=g, dtype=torch.float64) * 2
    labels = torch.randint(0, 3, (2, 6, 7, 5), generator=g)
    labels[0][labels[0] == 1] = 2  # a degenerate pair: its uniform upstream gradient meets a 0 field
    ref, ref_grad = loss_and_grad("reference", logits, labels, torch.float64, **kw)
    out, grad = loss_and_grad("triton_fft", logits, labels, torch.float32, **kw)
    assert len(calls) == int(derives)
    assert rel_err(out, ref) <= 1e-5 and rel_err(grad, ref_grad) <= 1e-5
    # Switched off, every class is transformed; the same loss and gradient.
    _settings.update(fft_derive=False)
    out2, grad2 = loss_and_grad("triton_fft", logits, labels, torch.float32, **kw)
    assert len(calls) == int(derives)
    assert rel_err(out2, ref) <= 1e-5 and rel_err(grad2, ref_grad) <= 1e-5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_derived_first_class_with_half_logits(monkeypatch, dtype):
    # Stage 1 reads the half logits as they are; the gradient comes back in their dtype.
    calls = _count_launches(monkeypatch, "_derived_stats_kernel")
    logits, labels = derived_inputs((2, 3, 6, 7, 5), seed=47)
    rounded = logits.to(dtype).double()  # the reference sees the logits the kernels read
    ref, ref_grad = loss_and_grad("reference", rounded, labels, torch.float64, softmax=True)
    out, grad = loss_and_grad("triton_fft", rounded, labels, dtype, softmax=True)
    assert len(calls) == 1 and grad.dtype == dtype
    assert rel_err(out, ref) <= 1e-5
    # The gradient rounded to the half dtype: within its unit roundoff (fp16 2.2e-4 of 4.9e-4, bf16
    # 3.2e-3 of 3.9e-3 here; transforming every class gives the same).
    assert rel_err(grad, ref_grad) <= torch.finfo(dtype).eps / 2


def test_derived_first_class_recompute_and_registered_op(monkeypatch):
    # Recomputing the field in backward derives it the same way (bitwise the same result); the
    # registered op's fake implementation gives the derived field's shape (opcheck: schema, fake
    # tensors, autograd registration, AOT dispatch).
    logits, labels = derived_inputs((2, 3, 6, 8), seed=49)
    x32, t = logits.to(DEVICE, torch.float32), labels.to(DEVICE)
    results = {}
    for recompute in (False, True):
        _settings.update(recompute_field=recompute)
        x = x32.clone().requires_grad_(True)
        loss = scc_fast.scc_loss(x, t, softmax=True, backend="triton_fft", validate=False)
        loss.backward()
        results[recompute] = (loss.detach(), x.grad)
    assert torch.equal(results[True][0], results[False][0]) and torch.equal(results[True][1], results[False][1])
    op = torch.ops.scc_fast.activated_correlation.default
    args = (x32.clone().requires_grad_(True), t, "triton_fft", 1, 0, 0, None, False, 0.5, 0.5, True, False, True)
    scc, valid, field, _ = op(*args)
    assert field.shape == (2, 2, 6, 8)
    torch.library.opcheck(op, args)


class _Passing(TorchDispatchMode):
    """A dispatch mode that changes nothing: under it scc_loss takes the registered op."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def loss_three_ways(monkeypatch, x32, target, upstream=1.0, **kw):
    """scc_loss(x32, target, backend="triton_fft", **kw) forward and backward (``upstream`` the
    loss's gradient) three ways: eager, the field recomputed in backward, the registered op under a
    dispatch mode. Returns [(loss, dL/dx)] in that order."""
    results = []
    for recompute, mode in ((False, None), (True, None), (False, _Passing())):
        _settings.update(recompute_field=recompute)
        x = x32.clone().requires_grad_(True)
        with mode if mode is not None else contextlib.nullcontext():
            loss = scc_fast.scc_loss(x, target, backend="triton_fft", **kw)
        loss.backward(torch.tensor(upstream, device=x32.device))
        results.append((loss.detach(), x.grad))
    _settings.update(recompute_field=False)
    return results


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_derived_first_class_with_class_weights(monkeypatch, reduction):
    # The class weights multiplied into the derived field (w_c G_c - w_0 G_0) and left out of the
    # reduction's derivative: the reference's loss and gradient, with class 0 and a degenerate
    # pair weighted in; the eager node, the registered op (under a dispatch mode) and recomputing
    # the field all give the same result, bit for bit.
    g = torch.Generator().manual_seed(67)
    logits = torch.randn(2, 3, 6, 7, 5, generator=g, dtype=torch.float64) * 2
    labels = torch.randint(0, 3, (2, 6, 7, 5), generator=g)
    labels[0][labels[0] == 2] = 1  # a degenerate pair
    weight = [2.0, 0.5, 1.5]
    x64 = logits.clone().requires_grad_(True)
    ref = scc_fast.scc_loss(x64, labels, softmax=True, weight=weight, reduction=reduction, backend="reference")
    (ref_grad,) = torch.autograd.grad(ref, x64)
    fields = _launch_options(monkeypatch, "_derived_field_kernel")
    results = loss_three_ways(monkeypatch, logits.to(DEVICE, torch.float32), labels.to(DEVICE), upstream=1.7,
                              softmax=True, weight=weight, reduction=reduction)
    assert [k["HAS_WEIGHT"] for k in fields] == [True] * 3
    assert rel_err(results[0][0], ref) <= 1e-5 and rel_err(results[0][1], 1.7 * ref_grad) <= 1e-5
    for other in results[1:]:
        assert torch.equal(other[0], results[0][0]) and torch.equal(other[1], results[0][1])
    op = torch.ops.scc_fast.activated_correlation.default
    w = torch.tensor(weight, dtype=torch.float64, device=DEVICE)
    args = (logits.to(DEVICE, torch.float32).requires_grad_(True), labels.to(DEVICE), "triton_fft", 1, 0, 0, None,
            False, 0.5, 0.5, True, False, True, False, w)
    torch.library.opcheck(op, args)


def test_field_weights_need_a_derived_field():
    logits, labels = derived_inputs((2, 3, 6, 8))
    x, t = logits.float().to(DEVICE), labels.to(DEVICE)
    w = torch.ones(3, dtype=torch.float64, device=DEVICE)
    with pytest.raises(ValueError, match="field_weights needs derive_first and one weight per class"):
        triton_fft._forward(x, t, 0, False, 0.5, 0.5, True, activation=1, field_weights=w)
    with pytest.raises(ValueError, match=r"one weight per class \(3\); got derive_first=True, 2 weights"):
        triton_fft._forward(x, t, 0, False, 0.5, 0.5, True, activation=1, derive_first=True, field_weights=w[:2])
    with pytest.raises(ValueError, match="field_weights are multiplied into a derived field"):
        triton_fft.field(x, t, FieldRequest(1, 0, 0, None, False, 0.5, 0.5, True), w)


def test_settings_are_listed_by_the_cli(monkeypatch, capsys):
    from scc_fast import cli

    assert cli.main(["backends"]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("triton_fft "))
    listed = triton_fft.settings()
    assert listed["derive_first_class"] is True and listed["chunk_elements"] == _settings.current().fft_chunk_elements
    assert "(settings: " + ", ".join(f"{k}={v}" for k, v in listed.items()) + ")" in line
    _settings.update(fft_derive=False)
    _settings.update(fft_stage1_channel_threads=True)
    assert triton_fft.settings()["derive_first_class"] is False
    assert triton_fft.settings()["stage1_channel_threads"] is True


def forward_peaks(seed, *settings, shape=(2, 4, 16, 16, 16)):
    """The peak bytes of the softmax forward's own tensors (inputs excepted) under each of the
    ``settings`` (keyword arguments of ``_forward``), and the bytes of a B x C map and half spectrum."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g).to(DEVICE)
    labels = torch.randint(0, shape[1], (shape[0],) + shape[2:], generator=g).to(DEVICE)
    map_bytes = math.prod(shape) * 4
    spectrum_bytes = math.prod(shape[:-1]) * (shape[-1] // 2 + 1) * 8
    peaks = []
    for kw in settings:
        with torch.no_grad(), LiveBytes(x, labels) as live:
            out = triton_fft._forward(x, labels, 0, False, 0.5, 0.5, True, activation=1, **kw)
        peaks.append(live.peak)
        assert live.now == sum(t.untyped_storage().nbytes() for t in out)  # nothing else left alive
    return peaks, map_bytes, spectrum_bytes


def test_derived_forward_peak_is_lower():
    # Without p of class 0 (and its spectrum and inverse transform): the forward's own tensors
    # peak at p of C - 1 classes, y and Y (y is transformed first), not p, Y and P.
    c = 4
    (full, derived), map_bytes, spectrum_bytes = forward_peaks(45, dict(), dict(derive_first=True))
    peaks = {False: full, True: derived}
    bound = (c - 1) / c * map_bytes + map_bytes + spectrum_bytes
    assert peaks[True] <= 1.01 * bound, (peaks[True] / map_bytes, bound / map_bytes)
    assert peaks[True] <= 0.92 * peaks[False], (peaks[True], peaks[False])


# ------------------------------------------------ validate=True's checks made by stage 1


def _launch_options(monkeypatch, name):
    """The keyword arguments (constexprs) of every launch of triton_fft kernel ``name``."""
    kernel, seen = getattr(triton_fft, name), []

    class Recording:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                seen.append(kwargs)
                return kernel[grid](*args, **kwargs)

            return launch

    monkeypatch.setattr(triton_fft, name, Recording())
    return seen


def _forbid_separate_checks(monkeypatch):
    """scc_loss's own value checks (passes over the labels and logits, two syncs) fail the test."""

    def separate(*args, **kwargs):
        raise AssertionError("scc_loss checked the values in passes of its own")

    monkeypatch.setattr(scc_fast._checks, "check_values", separate)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", [(2, 3, 9, 10), (1, 2, 8, 12), (2, 4, 6, 7, 5), (1, 5, 7, 9, 6)],
                         ids=lambda s: "x".join(map(str, s)))
def test_validate_in_stage_one_matches_reference(monkeypatch, shape, reduction):
    # scc_loss's default validate=True with softmax and labels: stage 1 makes the checks, and where
    # class 0 is derived (mean, sum) its target spectrum is derived too (y of C - 1 classes).
    # 2D / 3D, odd and even last axes, 2 to 5 classes.
    logits, labels = derived_inputs(shape, seed=51)
    ref, ref_grad = loss_and_grad("reference", logits, labels, torch.float64, softmax=True, reduction=reduction)
    _forbid_separate_checks(monkeypatch)
    stage1 = _launch_options(monkeypatch, "_activated_moments_kernel")
    derived = _launch_options(monkeypatch, "_derived_stats_kernel")
    out, grad = loss_and_grad("triton_fft", logits, labels, torch.float32, softmax=True, reduction=reduction)
    assert rel_err(out, ref) <= 1e-5 and rel_err(grad, ref_grad) <= 1e-5
    assert [k["VALIDATE"] for k in stage1] == [True]
    assert [k["Y_SKIP"] for k in derived] == ([True] if reduction != "none" else [])


def test_validate_in_stage_one_derives_the_target_spectrum():
    # The derived Y against the transformed one: the same SCC and field within float32 rounding,
    # with degenerate pairs (a class absent, a class everywhere) and DC in K.
    logits, labels = derived_inputs((3, 3, 8, 10), seed=53)
    labels[0][labels[0] == 0] = 1
    labels[1] = 0
    x, t = logits.to(DEVICE, torch.float32), labels.to(DEVICE)
    for include_dc in (False, True):
        out = {v: triton_fft._forward(x, t, 0, include_dc, 0.5, 0.5, True, activation=1, derive_first=True, validate=v)
               for v in (False, True)}
        assert torch.equal(out[True][1], out[False][1])
        assert rel_err(out[True][0], out[False][0]) <= 1e-5
        assert rel_err(out[True][2], out[False][2]) <= 1e-5
    check_derived(logits, labels)  # (the float64 reference, without validate)


@pytest.mark.slow
def test_validate_in_stage_one_splits_tiles_and_chunks():
    # Several splits and tiles: every program flags what it saw; several chunks: the first
    # chunk's stage 1 checks every label and logit (class 0 is then transformed, not derived).
    logits, labels = derived_inputs((2, 4, 7, 9, 6), seed=55)
    x, t = logits.to(DEVICE, torch.float32), labels.to(DEVICE)
    for launch in (dict(splits=3, block=16), SMALL_LAUNCH):
        derive = "chunk_elements" not in launch
        scc, valid, field = triton_fft._forward(x, t, 0, False, 0.5, 0.5, True, activation=1, derive_first=derive,
                                                validate=True, **launch)
        ref, ref_valid = reference_correlation(torch.softmax(logits, 1), labels)
        assert torch.equal(valid.cpu(), ref_valid) and rel_err(scc, ref) <= 1e-5
        for where in ((0, 0, 0, 0), (1, 6, 8, 5)):  # the first and the last voxel: first and last split
            bad = t.clone()
            bad[where] = 4
            with pytest.raises(ValueError, match=r"target labels must be in \[0, 3\] for 4 channel\(s\), got values from 4 to 4"):
                triton_fft._forward(x, bad, 0, False, 0.5, 0.5, True, activation=1, derive_first=derive, validate=True,
                                    **launch)
            nan = x.clone()
            nan[where[0], 3, where[1], where[2], where[3]] = float("nan")
            with pytest.raises(ValueError, match="input contains NaN or Inf"):
                triton_fft._forward(nan, t, 0, False, 0.5, 0.5, True, activation=1, derive_first=derive,
                                    validate=True, **launch)


VALIDATED_OPTIONS = [
    dict(softmax=True),
    dict(softmax=True, ignore_index=255),  # 255 is no class but allowed; other labels outside are not
    dict(softmax=True, include_background=False),  # channel 0's logits and label 0 are checked too
    dict(sigmoid=True, ignore_index=1),
]


@pytest.mark.parametrize("options", VALIDATED_OPTIONS, ids=["softmax", "ignore", "no-background", "sigmoid-ignore"])
@pytest.mark.parametrize("bad", ["label-high", "label-negative", "nan", "inf", "-inf", "label-and-nan"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_validate_in_stage_one_raises_scc_loss_errors(monkeypatch, bad, dtype, options):
    # The errors scc_loss's own checks raise (backend torch makes them there), word for word; the
    # target's first where both are wrong.
    g = torch.Generator().manual_seed(57)
    x = torch.randn(2, 3, 6, 7, 5, generator=g).to(dtype)
    labels = torch.randint(0, 3, (2, 6, 7, 5), generator=g)
    if "ignore_index" in options:
        labels[0, 0] = options["ignore_index"]
    if bad in ("label-high", "label-and-nan"):
        labels[1, 5, 6, 4] = 3
    if bad == "label-negative":
        labels[0, 2, 3, 1] = -4
    if bad in ("nan", "label-and-nan"):
        x[1, 2, 0, 0, 0] = float("nan")
    if bad in ("inf", "-inf"):
        x[0, 0, 3, 3, 3] = float(bad)
    with pytest.raises(ValueError) as expected:
        scc_fast.scc_loss(x.float(), labels, **options, backend="torch")
    _forbid_separate_checks(monkeypatch)
    for need_grad in (True, False):
        with pytest.raises(ValueError) as raised:
            scc_fast.scc_loss(x.to(DEVICE).requires_grad_(need_grad), labels.to(DEVICE), **options,
                              backend="triton_fft")
        assert str(raised.value) == str(expected.value)
    # validate=False: no check, the loss computed (labels outside count as 0; a NaN propagates).
    if options.get("softmax") and "include_background" not in options:
        loss = scc_fast.scc_loss(x.to(DEVICE), labels.to(DEVICE), **options, backend="triton_fft", validate=False)
        assert torch.isfinite(loss).item() == (bad in ("label-high", "label-negative", "-inf"))


@pytest.mark.parametrize("options", VALIDATED_OPTIONS, ids=["softmax", "ignore", "no-background", "sigmoid-ignore"])
def test_validate_in_stage_one_passes_valid_inputs(monkeypatch, options):
    # ignore_index itself, and every label of the classes, pass; the result is the reference's.
    g = torch.Generator().manual_seed(63)
    logits = torch.randn(2, 3, 7, 6, 5, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 3, (2, 7, 6, 5), generator=g)
    if "ignore_index" in options:
        labels[1, :2] = options["ignore_index"]
    ref, ref_grad = loss_and_grad("reference", logits, labels, torch.float64, **options)
    _forbid_separate_checks(monkeypatch)
    stage1 = _launch_options(monkeypatch, "_activated_moments_kernel")
    out, grad = loss_and_grad("triton_fft", logits, labels, torch.float32, **options)
    assert [k["VALIDATE"] for k in stage1] == [True]
    assert rel_err(out, ref) <= 1e-5 and rel_err(grad, ref_grad) <= 1e-5


def test_validate_in_stage_one_through_the_registered_op_and_recompute(monkeypatch):
    # Under a dispatch mode the registered op runs with validate (its fake implementation takes
    # it); recomputing the field in backward runs as the forward did: bitwise the same results.
    _forbid_separate_checks(monkeypatch)
    logits, labels = derived_inputs((2, 3, 6, 8), seed=59)
    x32, t = logits.to(DEVICE, torch.float32), labels.to(DEVICE)
    results = loss_three_ways(monkeypatch, x32, t, softmax=True)
    for other in results[1:]:
        assert torch.equal(other[0], results[0][0]) and torch.equal(other[1], results[0][1])
    bad = t.clone()
    bad[0, 0, 0] = 3
    with _Passing(), pytest.raises(ValueError, match="target labels must be in"):
        scc_fast.scc_loss(x32, bad, softmax=True, backend="triton_fft")
    op = torch.ops.scc_fast.activated_correlation.default
    args = (x32.clone().requires_grad_(True), t, "triton_fft", 1, 0, 0, None, False, 0.5, 0.5, True, False, True, True)
    assert op(*args)[2].shape == (2, 2, 6, 8)
    torch.library.opcheck(op, args)


def test_validate_in_stage_one_single_channel_binary_labels(monkeypatch):
    # C = 1 with a sigmoid: labels 0 / 1 (the channel's mask) pass, 2 does not, as scc_loss's checks.
    g = torch.Generator().manual_seed(65)
    logits = torch.randn(2, 1, 8, 9, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 2, (2, 8, 9), generator=g)
    ref, ref_grad = loss_and_grad("reference", logits, labels, torch.float64, sigmoid=True)
    _forbid_separate_checks(monkeypatch)
    stage1 = _launch_options(monkeypatch, "_activated_moments_kernel")
    out, grad = loss_and_grad("triton_fft", logits, labels, torch.float32, sigmoid=True)
    assert [k["VALIDATE"] for k in stage1] == [True]
    assert rel_err(out, ref) <= 1e-5 and rel_err(grad, ref_grad) <= 1e-5
    labels[1, 7, 8] = 2
    with pytest.raises(ValueError, match=r"must be in \[0, 1\] for 1 channel\(s\), got values from 2 to 2"):
        scc_fast.scc_loss(logits.float().to(DEVICE), labels.to(DEVICE), sigmoid=True, backend="triton_fft")


@pytest.mark.parametrize("kw,in_op", [
    (dict(activation="softmax", labels=True, first_channel=0, ignore_index=None), True),
    (dict(activation="sigmoid", labels=True, first_channel=0, ignore_index=None), True),
    (dict(activation="softmax", labels=True, first_channel=1, ignore_index=None), True),
    (dict(activation="softmax", labels=True, first_channel=0, ignore_index=255), True),
    (dict(activation=None, labels=True, first_channel=0, ignore_index=None), False),
    (dict(activation="softmax", labels=False, first_channel=0, ignore_index=None), False),
], ids=["softmax-labels", "sigmoid", "no-background", "ignore", "probabilities", "float-target"])
def test_validates_in_op_contract(kw, in_op):
    x = torch.zeros(2, 3, 4, 4, device=DEVICE)
    assert triton_fft.validates_in_op(**kw, x=x) is in_op
    # Where stage 1 does not compute p (too many channels, float64) or without the input: never.
    wide = torch.zeros(1, triton_fft.MAX_ACTIVATION_CHANNELS + 1, 4, 4, device=DEVICE)
    assert not triton_fft.validates_in_op(**kw, x=wide)
    assert not triton_fft.validates_in_op(**kw, x=x.double())
    assert not triton_fft.validates_in_op(**kw)


def test_validate_in_stage_one_refuses_what_it_cannot_check():
    logits, labels = derived_inputs((2, 3, 6, 8))
    with pytest.raises(ValueError, match="validate needs logits .* and integer labels .*got activation 0"):
        triton_fft._forward(torch.softmax(logits, 1).float().to(DEVICE), labels.to(DEVICE), 0, False, 0.5, 0.5, True,
                            validate=True)
    with pytest.raises(ValueError, match="validate needs logits .* and integer labels .*a float target"):
        triton_fft._forward(logits.float().to(DEVICE), torch.rand(2, 3, 6, 8, device=DEVICE), 0, False, 0.5, 0.5,
                            True, activation=1, validate=True)
    with pytest.raises(ValueError, match="validate=True needs stage 1 to compute p"):
        triton_fft.field(logits.to(DEVICE), labels.to(DEVICE),
                         FieldRequest(1, 0, 0, None, False, 0.5, 0.5, True, validate=True))


def test_validated_forward_peak_is_lower():
    # With the labels checked in range, y of class 0 is not written either: every map and
    # spectrum holds C - 1 classes, and the forward's own tensors peak at p, y and Y or at p, Y
    # and P (2.88 -> 2.44 maps here, where a half spectrum is 1.125 maps).
    c = 4
    (unchecked, checked), map_bytes, spectrum_bytes = forward_peaks(
        61, dict(derive_first=True), dict(derive_first=True, validate=True)
    )
    peaks = {False: unchecked, True: checked}
    bound = (c - 1) / c * (max(2 * map_bytes, map_bytes + spectrum_bytes) + spectrum_bytes)
    assert peaks[True] <= 1.01 * bound, (peaks[True] / map_bytes, bound / map_bytes)
    assert peaks[True] <= 0.87 * peaks[False], (peaks[True] / map_bytes, peaks[False] / map_bytes)


def test_pair_kernel_blocks():
    # Powers of two (tl.arange), PAIR_VALUES values a block, as many splits as there are up to the cap.
    assert triton_fft._pair_blocks(528) == (4, 256)  # brats-3d / btcv-3d: 3 steps, not 17 of 32
    assert triton_fft._pair_blocks(44) == (16, 64)
    assert triton_fft._pair_blocks(1) == (64, 16)
    assert triton_fft._pair_blocks(5000) == (4, 256)


def test_inverse_transform_is_unscaled():
    # The field's coefficients carry no factor N, so irfftn runs with norm="forward" (normalization
    # 0, none): on a GPU the default's 1 / N is one more pass over the gradient (33 us at brats-3d).
    g = torch.Generator().manual_seed(41)
    x = torch.randn(2, 3, 6, 8, 10, generator=g).to(DEVICE)
    labels = torch.randint(0, 3, (2, 6, 8, 10), generator=g).to(DEVICE)
    with torch.no_grad(), _InverseTransforms() as seen:
        triton_fft._forward(x, labels, 0, False, 0.5, 0.5, True, activation=1)
    assert seen.normalizations == [0]
@pytest.mark.parametrize("include_dc", [False, True], ids=["no_dc", "dc"])
def test_degenerate_pairs(include_dc):
    shape = (3, 3, 8, 10)
    probs, target = make_inputs(shape, labels=True, seed=3)
    target[0] = 0  # image 0: class 0 covers everything (degenerate without DC), 1 and 2 absent
    target[1][target[1] == 2] = 1  # image 1: class 2 absent
    probs[2, 1] = 0.25  # image 2: a constant prediction (zero spectral variance outside DC)
    ref, ref_valid, _ = per_pair_grad(reference_correlation, probs, target, include_dc=include_dc)
    check(probs, target, torch.float64, 1e-10, include_dc=include_dc)
    check(probs, target, torch.float32, 1e-5, include_dc=include_dc)
    assert not ref_valid[0, 1] and not ref_valid[0, 2] and not ref_valid[1, 2]
    assert bool(ref_valid[0, 0]) == include_dc


def test_degenerate_float_target_and_constant_prediction():
    probs, target = make_inputs((2, 2, 6, 7, 5), labels=False, seed=4)
    target[0, 0] = 0.0  # no energy at all
    target[1, 1] = 0.6  # constant: no energy outside DC
    probs[1, 0] = 0.5  # constant prediction: no energy outside DC
    # With DC in K the values are well defined for every pair. The gradient of the constant
    # prediction (1, 0) is not: |P_k| = 0 off DC, where docs/loss.md section 4 sets P_k / |P_k| := 0 but the float64
    # reference's FFT of a 6x7x5 constant leaves rounding noise with a random phase. Its gradient
    # is checked where the reference's FFT is exact (test_degenerate_pairs); here the others are.
    ref, ref_valid, ref_grad = per_pair_grad(reference_correlation, probs, target, include_dc=True)
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
        t = target.to(DEVICE, dtype)
        out, valid, grad = per_pair_grad(triton_fft.correlation, probs.to(DEVICE, dtype), t, include_dc=True)
        assert torch.equal(valid.cpu(), ref_valid) and rel_err(out, ref) <= tol
        assert rel_err(grad[0], ref_grad[0]) <= tol and rel_err(grad[1, 1], ref_grad[1, 1]) <= tol
    # With DC out, pairs (1, 0) and (1, 1) have a map with no spectrum over K: docs/loss.md section 2 defines their
    # correlation as 0 (zero denominators), with a zero gradient.
    check(probs, target, torch.float64, 1e-10)
    check(probs, target, torch.float32, 1e-5)
    for dtype in (torch.float64, torch.float32):
        out, valid, grad = per_pair_grad(triton_fft.correlation, probs.to(DEVICE, dtype), target.to(DEVICE, dtype))
        assert valid.tolist() == [[False, True], [True, False]]
        assert out[1, 0] == 0 and out[1, 1] == 0 and torch.all(grad[1] == 0)


def test_no_grad_forward_and_low_precision_input():
    probs, target = make_inputs((2, 3, 9, 8), labels=True, seed=6)
    ref, ref_valid = reference_correlation(probs, target)
    with torch.no_grad():
        out, valid = triton_fft.correlation(probs.to(DEVICE, torch.float32), target.to(DEVICE))
    assert rel_err(out, ref) <= 1e-5 and torch.equal(valid.cpu(), ref_valid)
    # float16 input is computed in float32 and its gradient comes back as float16.
    x = probs.to(DEVICE, torch.float16).requires_grad_(True)
    out, _ = triton_fft.correlation(x, target.to(DEVICE))
    out.sum().backward()
    assert out.dtype == torch.float32 and x.grad.dtype == torch.float16 and torch.isfinite(x.grad).all()


def test_unsupported_device_is_reported():
    p = torch.empty(1, 2, 8, 8, device="meta")
    t = torch.empty(1, 8, 8, dtype=torch.long, device="meta")
    reason = triton_fft.unsupported_reason(p, t)
    assert reason is not None and "device meta" in reason
    lab = torch.zeros(1, 8, 8, dtype=torch.long, device=DEVICE)
    assert triton_fft.unsupported_reason(torch.rand(1, 2, 8, 8, device=DEVICE), lab) is None
    with pytest.raises(RuntimeError, match=r"backend 'triton_fft' was asked for but cannot run: .*device meta"):
        backends.select_backend("triton_fft", p, t)


def test_torch_compile_fullgraph_opcheck_and_double_backward():
    probs, target = make_inputs((1, 3, 6, 5, 7), labels=True, seed=37)
    p, t = probs.to(DEVICE, torch.float32), target.to(DEVICE)

    def loss_fn(x, t):
        return scc_fast.scc_loss(x, t, softmax=True, backend="triton_fft", validate=False)

    x = p.clone().requires_grad_(True)
    eager = loss_fn(x, t)
    (g_eager,) = torch.autograd.grad(eager, x)
    # fullgraph=True fails on any graph break; aot_eager runs AOTAutograd (fake implementation,
    # autograd registration) without a C++ compiler for the rest of the graph.
    compiled = torch.compile(loss_fn, backend="aot_eager", fullgraph=True)
    out = compiled(x, t)
    (g_compiled,) = torch.autograd.grad(out, x)
    assert torch.allclose(out, eager) and torch.allclose(g_compiled, g_eager)

    op = torch.ops.scc_fast.activated_correlation.default
    torch.library.opcheck(op, (p.clone().requires_grad_(True), t, "triton_fft", 0, 0, 0, None, False, 0.5, 0.5,
                               True, False))
    torch.library.opcheck(op, (p, t, "triton_fft", 0, 0, 0, None, True, 0.3, 0.7, False, False))

    y = scc_fast.scc_loss(x, t, softmax=True, backend="triton_fft")
    with pytest.raises(RuntimeError, match="does not support double backward"):
        torch.autograd.grad(y, x, create_graph=True)


_AOT_SCRIPT = r"""
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from scc_fast.backends import triton_fft as m

target = GPUTarget("cuda", 90, 32)  # H100 / H200


def compile_(fn, sig, consts):
    triton.compile(ASTSource(fn=fn, signature={**sig, **{k: "constexpr" for k in consts}}, constexprs=consts), target=target)


for dt in ("fp32", "fp64"):
    f = "*" + dt
    for labels, lab in ((True, "*i8"), (True, "*i64"), (False, f)):
        compile_(m._spatial_stats_kernel, dict(p_ptr=f, p_stride_b="i32", p_stride_c="i32", y_ptr=lab, y_stride_b="i32",
                 y_stride_c="i32", yout_ptr=f, part_ptr=f, count_ptr="*i32" if labels else f, n_vox="i32", n_chunk="i32",
                 class0="i32", span="i32", n_splits="i32"), dict(LABELS=labels, WRITE_Y=labels, BLOCK=1024))
    for even in (True, False):
        for dc in (True, False):
            compile_(m._spectral_stats_kernel, dict(P_ptr=f, Y_ptr=f, part_ptr=f, n_half="i32", w_half="i32", span="i32",
                     n_splits="i32"), dict(LAST_EVEN=even, INCLUDE_DC=dc, BLOCK=1024))
            compile_(m._field_kernel, dict(P_ptr=f, Y_ptr=f, coef_ptr=f, n_pairs="i32", n_half="i32"),
                     dict(INCLUDE_DC=dc, BLOCK=1024))
compile_(m._narrow_labels_kernel, dict(src_ptr="*i64", dst_ptr="*i8", n="i32", lo="i32", n_chan="i32"), dict(BLOCK=1024))
print("compiled")
"""


def test_kernels_compile_for_the_gpu():
    # The interpreter accepts code the compiler rejects (loop-carried type changes, scalar
    # types): compile every kernel variant to an sm_90 cubin ahead of time, no GPU needed.
    pytest.importorskip("triton.backends.nvidia")
    assert_compiles(_AOT_SCRIPT, timeout=300)


def test_stage1_settings_pick_the_gpu_tile(monkeypatch):
    """The settings fft_stage1_values / fft_stage1_warps (scc-fast bench stage1-tune varies them) set the GPU tile: values
    split between the channel rows (at least 16 voxels); the interpreter keeps its large tiles."""
    cuda = torch.device("cuda")
    assert triton_fft._stage1_config(cuda, 4) == (4, 256, 8, False)
    assert triton_fft._stage1_config(cuda, 14) == (16, 64, 8, False)
    _settings.update(fft_stage1_values=512)
    _settings.update(fft_stage1_warps=4)
    _settings.update(fft_stage1_channel_threads=True)
    assert triton_fft._stage1_config(cuda, 9) == (16, 32, 4, True)
    assert triton_fft._stage1_config(cuda, 32) == (32, 16, 4, True)
    assert triton_fft._stage1_config(torch.device("cpu"), 9) == (16, 256, 4, True)


@pytest.mark.parametrize("labels", [True, False], ids=["labels", "float"])
def test_stage1_with_threads_down_the_channels(monkeypatch, labels):
    # STAGE1_CHANNEL_THREADS only changes a compile hint (the voxels' contiguity): the same
    # results, here through the kernel's other constexpr branch (the interpreter ignores hints).
    _settings.update(fft_stage1_channel_threads=True)
    check_activated((2, 3, 7, 9, 6), 1, labels=labels)


# ---------------------------------------------------------------- public API


def loss_and_grad(backend, logits, target, dtype, **kw):
    x = logits.detach().to(DEVICE, dtype).requires_grad_(True)
    loss = scc_fast.scc_loss(x, target.to(DEVICE), backend=backend, **kw)
    upstream = torch.rand(loss.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    (grad,) = torch.autograd.grad((loss * upstream.to(DEVICE, loss.dtype)).sum(), x)
    return loss.detach(), grad


def test_scc_loss_float_target_3d():
    g = torch.Generator().manual_seed(12)
    logits = torch.randn(1, 2, 8, 12, 10, generator=g, dtype=torch.float64)
    target = torch.softmax(torch.randn(1, 2, 8, 12, 10, generator=g, dtype=torch.float64) * 3, 1)
    ref, ref_grad = loss_and_grad("reference", logits, target, torch.float64, softmax=True)
    out, grad = loss_and_grad("triton_fft", logits, target, torch.float32, softmax=True)
    assert rel_err(out, ref) <= 1e-5 and rel_err(grad, ref_grad) <= 1e-5


# ---------------------------------------------------------------- dispatch table


@pytest.fixture
def table_file(tmp_path, monkeypatch):
    """Write a dispatch table, point SCC_FAST_DISPATCH_TABLE at it; caches cleared around the test."""

    def write(table) -> Path:
        path = tmp_path / "table.json"
        path.write_text(table if isinstance(table, str) else json.dumps(table))
        monkeypatch.setenv(dispatch.TABLE_ENV_VAR, str(path))
        dispatch.clear_cache()
        return path

    yield write
    dispatch.clear_cache()


PROVENANCE = {"card": "Fake GPU", "date": "2026-11-27", "command": "scc-fast bench gpu-3d"}


def measured(*rows) -> dict:
    return {"format": dispatch.FORMAT, "measured": True, "provenance": PROVENANCE, "rows": list(rows)}


def row(case, ndim, n_min, n_max, ranking, device_kind="cpu", card=None):
    return dict(case=case, device_kind=device_kind, card=card, ndim=ndim, n_min=n_min, n_max=n_max, ranking=ranking)


def _pick(shape) -> tuple[str, str]:
    probs = torch.rand(shape, device=DEVICE)
    target = torch.zeros((shape[0],) + shape[2:], dtype=torch.long, device=DEVICE)
    text = scc_fast.explain_backend(probs, target)
    return backends._choose("auto", probs, target)[0], text


def test_table_row_decides_per_shape(table_file):
    kind = torch.device(DEVICE).type
    table_file(
        measured(
            row("small-2d", 2, 1, 100, ["reference", "torch", "triton_fft"], kind),  # reference is never picked
            row("big-2d", 2, 100, None, ["triton_fft", "torch"], kind),
            row("3d", 3, 1, None, ["no_such_backend", "triton_fft"], kind),  # unknown names are skipped
        )
    )
    name, text = _pick((1, 2, 8, 8))
    assert name == "torch"
    assert "row 'small-2d'" in text and "N in [1, 100)" in text and "Fake GPU" in text and "2026-11-27" in text
    assert text.splitlines()[0] == "backend: torch"
    name, text = _pick((1, 2, 10, 10))  # N = 100: the upper bound is exclusive
    assert name == "triton_fft" and "row 'big-2d'" in text
    name, text = _pick((1, 2, 4, 4, 4))
    assert name == "triton_fft" and "row '3d'" in text


def test_table_ranking_backend_that_cannot_run_is_skipped(table_file, monkeypatch):
    kind = torch.device(DEVICE).type
    table_file(measured(row("2d", 2, 1, None, ["native", "torch"], kind)))
    monkeypatch.setitem(backends.BACKENDS, "native", "scc_fast._no_such_module_")
    name, text = _pick((1, 2, 8, 8))
    assert name == "torch" and "skipped 'native'" in text and "row '2d'" in text


def test_table_prefers_rows_of_the_same_card(table_file):
    table_file(
        measured(
            row("h100", 3, 1, None, ["torch"], "cuda", card="NVIDIA H100 80GB HBM3"),
            row("h200", 3, 1, None, ["triton_fft", "torch"], "cuda", card="NVIDIA H200"),
        )
    )
    dev = torch.device("cuda")
    assert dispatch.lookup(dev, (8, 8, 8), card="NVIDIA H200").ranking == ("triton_fft", "torch")
    decision = dispatch.lookup(dev, (8, 8, 8), card="NVIDIA A100")
    assert decision.ranking == ("torch",) and "this device is NVIDIA A100" in decision.note
    assert dispatch.lookup(dev, (8, 8), card="NVIDIA H200").ranking is None  # no 2D row
    assert dispatch.lookup(torch.device("cpu"), (8, 8, 8)).ranking is None  # no cpu row


def test_unmeasured_table_uses_static_order():
    dispatch.clear_cache()
    table = dispatch.load_table(dispatch.DEFAULT_TABLE)  # the packaged table
    if table["measured"]:
        pytest.skip("the packaged table holds measurements")
    name, text = _pick((1, 2, 8, 8))
    static = backends.AUTO_ORDER.get(torch.device(DEVICE).type, backends._AUTO_FALLBACK)
    assert "has no measurements" in text and "static order used" in text
    assert f"the first that runs of {list(static)}" in text


@pytest.mark.parametrize(
    "content,message",
    [
        (None, "cannot read dispatch table"),
        ("{not json", "cannot read dispatch table"),
        ({"format": "other", "measured": True, "rows": []}, "must have \"format\""),
        ({"format": dispatch.FORMAT, "measured": True, "provenance": PROVENANCE, "rows": []}, "has no rows"),
        (measured({"device_kind": "cpu", "ndim": 2, "n_min": 1, "ranking": "torch"}), "'ranking' of type list"),
        (measured(row("x", 2, 10, 5, ["torch"])), "'n_max' null or an int > n_min=10"),
    ],
)
def test_bad_table_falls_back_to_static_order(table_file, tmp_path, monkeypatch, content, message):
    if content is None:  # a missing file
        monkeypatch.setenv(dispatch.TABLE_ENV_VAR, str(tmp_path / "missing.json"))
        dispatch.clear_cache()
    else:
        path = table_file(content)
        with pytest.raises(ValueError, match=message):
            dispatch.load_table(path)
    name, text = _pick((1, 2, 8, 8))
    assert "dispatch table unusable" in text and re.search(message, text), text
    assert "static order used" in text and name in backends.AUTO_ORDER.get(torch.device(DEVICE).type, ("torch",))


def test_ranges_for_cover_every_size():
    cases = [
        dict(device_kind="cuda", ndim=2, n=50176),
        dict(device_kind="cuda", ndim=2, n=262144),
        dict(device_kind="cuda", ndim=3, n=2097152),
        dict(device_kind="cuda", ndim=3, n=884736),
    ]
    r = dispatch.ranges_for(cases)
    assert r[0] == (1, 114688) and r[1] == (114688, None)
    assert r[3] == (1, 1362140) and r[2] == (1362140, None)


def test_explain_shape_and_cli(table_file, capsys):
    kind = torch.device(DEVICE).type
    table_file(measured(row("vol", 3, 1, None, ["triton_fft", "torch"], kind)))
    text = backends.explain_shape((1, 2, 4, 6, 5), DEVICE)
    assert text.startswith("backend: triton_fft") and "row 'vol'" in text
    if not torch.cuda.is_available():
        text = backends.explain_shape((2, 4, 128, 128, 128), "cuda")
        assert "device cuda is not available" in text and "static order" in text
        assert f"auto would try, in order: {list(backends.AUTO_ORDER['cuda'])}" in text
    with pytest.raises(ValueError, match="4 or 5 sizes"):
        backends.explain_shape((2, 3, 8), DEVICE)
    from scc_fast import cli

    try:
        code = cli.main(["backends", "--explain", "--shape", "1,2,4,6,5", "--device", DEVICE])
    except ImportError as exc:  # another subcommand's module missing from this checkout
        pytest.skip(f"scc-fast CLI cannot be built here: {exc}")
    assert code == 0
    assert "backend: triton_fft" in capsys.readouterr().out


# ---------------------------------------------------------------- the GPU check (scc-fast bench gpu-3d), smoke mode


@pytest.mark.slow
def test_gpu_3d_check_smoke_emits_a_loadable_table(tmp_path):
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    env.pop(dispatch.TABLE_ENV_VAR, None)
    proc = subprocess.run(
        [sys.executable, "-m", "scc_fast.cli", "bench", "gpu-3d", "--smoke", "--out", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["cases"] and all(c.get("error") is None for c in results["cases"]), results
    for case in results["cases"]:
        assert case["backends"]["triton_fft"]["correct"], case
        assert case["backends"]["triton_fft:all-classes"]["correct"], case  # the same-run comparison rows
        assert case["backends"]["triton_fft:validate"]["correct"], case
    assert (tmp_path / "results.md").read_text().count("|") > 10
    table = dispatch.load_table(tmp_path / "dispatch_table.json")
    assert table["measured"] and table["smoke"] and len(table["rows"]) == len(results["cases"])
    assert all("triton_fft" in r["ranking"] for r in table["rows"])
    # A smoke table is valid but never decides (its timings come from the interpreter).
    decision = dispatch.lookup(torch.device("cpu"), (16, 12), path=tmp_path / "dispatch_table.json")
    assert decision.ranking is None and "--smoke run" in decision.note
