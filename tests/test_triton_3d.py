"""Backend "triton" on 3D input (B x C x D x H x W) against the float64 reference.

The 3D path runs the 2D kernel's per-slice transforms and a depth DFT in five launches (see
scc_fast/backends/triton_scc.py). On a machine without CUDA it runs under Triton's interpreter
(tests/conftest.py sets TRITON_INTERPRET=1); shapes are kept small for that. Tolerance (docs/loss.md
section 6): ||out - ref|| / ||ref|| <= 1e-5 for SCC and dSCC/dp, with IEEE dots on GPU. The
label-layout cases (ignored labels, degenerate pairs and targets) and the public-API cases
(every reduction, sigmoid with one channel) and the no-gradient path run in 2D and 3D in
test_triton.py.
"""

from __future__ import annotations

import pytest
import torch

import scc_fast
from scc_fast import _settings
from scc_fast import backends
from scc_fast.reference import reference_correlation

triton_scc = pytest.importorskip("scc_fast.backends.triton_scc")
if triton_scc.unavailable_reason() is not None:
    pytest.skip(f"triton backend unavailable: {triton_scc.unavailable_reason()}", allow_module_level=True)

from _aot import assert_compiles  # noqa: E402
from test_triton import DEVICE, TOL, assert_forward_only_matches, compare, make_inputs, rel_err  # noqa: E402  (the 2D tests' helpers)


@pytest.fixture(autouse=True)
def _ieee_dots(monkeypatch):
    _settings.update(triton_precision="ieee")


@pytest.mark.parametrize("weights", [(1.0, 0.0), (0.0, 1.0)])
def test_magnitude_phase_weights(weights):
    probs, target = make_inputs((1, 2, 4, 9, 10), labels=True, seed=3)
    compare(probs, target, magnitude_weight=weights[0], phase_weight=weights[1])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_are_read_as_float32(dtype):
    probs, target = make_inputs((1, 2, 3, 10, 8), labels=True, seed=13)
    rounded = probs.to(dtype)
    x64 = rounded.double().requires_grad_(True)
    ref, _ = reference_correlation(x64, target)
    (ref_grad,) = torch.autograd.grad(ref.sum(), x64)
    x = rounded.to(DEVICE).requires_grad_(True)
    out, _ = triton_scc.correlation(x, target.to(DEVICE))
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert out.dtype == torch.float32 and grad.dtype == dtype
    assert rel_err(out, ref.detach()) <= TOL
    # The gradient comes back rounded to the input dtype: that rounding is the only error.
    assert rel_err(grad, ref_grad) <= 2 * torch.finfo(dtype).eps


@pytest.mark.slow
def test_tiled_loops_chunks_and_persistent_grid(monkeypatch):
    # Small blocks force several tiles along every axis, depth included (37 = 2 x 16 + 5); fewer
    # programs than slices make each program loop over slices, reusing its scratch; a workspace
    # budget of one pair makes one chunk (five launches) per pair.
    monkeypatch.setattr(triton_scc, "_blocks", lambda H, W, precision, table=None: (16, 16, 16, 4, 1))
    monkeypatch.setattr(triton_scc, "_depth_blocks", lambda D, n_bins, precision: (16, 16, 16, 4, 1))
    monkeypatch.setattr(triton_scc, "_max_programs", lambda device, n, path="sliced": 3)
    _settings.update(triton_workspace_bytes=triton_scc.workspace_bytes_per_pair(37, 17, 9))
    probs, target = make_inputs((1, 3, 37, 17, 9), labels=True, seed=19)
    compare(probs, target, magnitude_weight=0.6, phase_weight=0.4)


@pytest.mark.parametrize("labels,include_dc", [(True, False), (False, True)])
@pytest.mark.slow
def test_four_step_slices(monkeypatch, labels, include_dc):
    # The factored DFT along H (32 = 2 x 16) and along W (48 = 3 x 16) in the slice passes,
    # enabled below its default threshold so that the interpreter stays quick.
    monkeypatch.setattr(triton_scc, "FOUR_STEP_MIN_H", 32)
    assert triton_scc._four_step_factors(32) == (2, 16) and triton_scc._four_step_factors(48) == (3, 16)
    probs, target = make_inputs((1, 2, 3, 32, 48), labels, seed=47)
    compare(probs, target, include_dc=include_dc, magnitude_weight=0.3, phase_weight=0.7)


@pytest.mark.parametrize(
    "shape,labels,include_dc",
    [((1, 2, 32, 9, 10), True, False), ((2, 2, 48, 8, 9), False, True), ((1, 3, 64, 10, 9), True, True)],
)
@pytest.mark.slow
def test_four_step_depth(monkeypatch, shape, labels, include_dc):
    # The factored DFT along D (D = N1 x 16, N1 = 2, 3, 4 padded to a 16 block) in launches 2 and
    # 4, below its default threshold; with the forward-only launches too.
    monkeypatch.setattr(triton_scc, "FOUR_STEP_MIN_H", 32)
    assert triton_scc._four_step_factors(shape[2]) == (shape[2] // 16, 16)
    probs, target = make_inputs(shape, labels, seed=71)
    kw = dict(include_dc=include_dc, magnitude_weight=0.4, phase_weight=0.6)
    out, valid, _ = compare(probs, target, **kw)
    assert_forward_only_matches(probs, target, out, valid, **kw)


@pytest.mark.slow
def test_four_step_depth_tiles_and_persistent_grid(monkeypatch):
    # Several blocks of bins per pair (16 of the 9 x 5 = 45), fewer depth programs than tasks (each
    # loops, reusing its Z scratch), two chunks of pairs.
    monkeypatch.setattr(triton_scc, "FOUR_STEP_MIN_H", 32)
    monkeypatch.setattr(triton_scc, "_depth_blocks", lambda D, n_bins, precision: (16, 16, 16, 4, 1))
    monkeypatch.setattr(triton_scc, "_max_programs", lambda device, n, path="sliced": 2)
    _settings.update(triton_workspace_bytes=2 * triton_scc.workspace_bytes_per_pair(32, 9, 8))
    probs, target = make_inputs((2, 2, 32, 9, 8), labels=True, seed=73)
    compare(probs, target, magnitude_weight=0.5, phase_weight=0.5)


@pytest.mark.parametrize("shape", [(1, 2, 2, 128, 9), (1, 1, 2, 9, 128)], ids=["H128", "W128"])
def test_four_step_default_threshold(shape):
    # 128 = 8 x 16 is factored at the default threshold; a constant prediction goes through it too.
    assert triton_scc._four_step_factors(128) == (8, 16)
    probs, target = make_inputs(shape, labels=True, seed=53)
    probs[0, 0] = 0.5
    compare(probs, target, include_dc=True)


@pytest.mark.slow
def test_torch_compile_fullgraph_and_opcheck():
    probs, target = make_inputs((1, 2, 2, 9, 8), labels=True, seed=37)
    p, t = probs.to(DEVICE, torch.float32), target.to(DEVICE)

    def loss_fn(x, t):
        return scc_fast.scc_loss(x, t, softmax=True, backend="triton", validate=False, reduction="none")

    w = torch.rand(1, 2, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    x = p.clone().requires_grad_(True)
    eager = loss_fn(x, t)
    (g_eager,) = torch.autograd.grad((eager * w).sum(), x)
    compiled = torch.compile(loss_fn, backend="aot_eager", fullgraph=True)
    out = compiled(x, t)
    (g_compiled,) = torch.autograd.grad((out * w).sum(), x)
    assert torch.allclose(out, eager) and torch.allclose(g_compiled, g_eager)

    op = torch.ops.scc_fast.activated_correlation.default
    torch.library.opcheck(op, (p.clone().requires_grad_(True), t, "triton", 0, 0, 0, None, False, 0.5, 0.5, True,
                               False))
    torch.library.opcheck(op, (p, t, "triton", 0, 0, 0, None, True, 0.3, 0.7, False, False))


def test_unsupported_3d_inputs_are_reported():
    p = torch.rand(1, 2, 2, 8, 8, device=DEVICE)
    lab = torch.zeros(1, 2, 8, 8, dtype=torch.long, device=DEVICE)
    assert triton_scc.unsupported_reason(p, lab) is None
    meta = dict(device="meta")
    cases = {
        "depth D of 3D input in [2, 1024], got D x H x W = (1025, 8, 8)": (
            torch.empty(1, 2, 1025, 8, 8, **meta), torch.empty(1, 1025, 8, 8, dtype=torch.long, **meta)),
        "H and W in [8, 1024], got H x W = 8 x 7": (
            torch.rand(1, 2, 4, 8, 7, device=DEVICE), torch.zeros(1, 4, 8, 7, dtype=torch.long, device=DEVICE)),
        "B x D x H x W = (1, 2, 8, 8)": (p, torch.zeros(1, 8, 8, dtype=torch.long, device=DEVICE)),
        "shape of probs": (p, torch.rand(1, 3, 2, 8, 8, device=DEVICE)),
        "float64": (p.double(), lab),
        "got 1D spatial shape (8,)": (torch.rand(1, 2, 8, device=DEVICE), torch.zeros(1, 8, dtype=torch.long, device=DEVICE)),
    }
    for needle, (pp, tt) in cases.items():
        reason = triton_scc.unsupported_reason(pp, tt)
        assert reason is not None and needle in reason, (needle, reason)
    # Asked for by name: the error names the shape; "auto" goes to another backend.
    logits = torch.randn(1, 2, 3, 8, 6, device=DEVICE)
    labels = torch.zeros(1, 3, 8, 6, dtype=torch.long, device=DEVICE)
    with pytest.raises(RuntimeError, match=r"backend 'triton' was asked for but cannot run: .*8 x 6"):
        scc_fast.scc_loss(logits, labels, softmax=True, backend="triton")
    assert "backend: triton\n" not in backends.explain_backend(torch.softmax(logits, 1), labels) + "\n"


def test_auto_keeps_the_measured_3d_choice():
    # backend="auto" on CUDA follows the measured table; triton is not measured on 3D there, so
    # accepting 3D must not move it ahead of the backends the table ranks.
    for spatial in ((128, 128, 128), (96, 96, 96), (8, 8, 8)):
        order, note = backends._ranked_candidates(torch.device("cuda"), spatial, card="")
        table = backends.dispatch.lookup(torch.device("cuda"), spatial, card="").ranking
        if table is not None:
            assert order[: len(table)] == tuple(n for n in table if n in backends.BACKENDS)
            assert "triton" not in table or order.index("triton") == table.index("triton")


_AOT_SCRIPT = r"""
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from scc_fast.backends import triton_scc as m

target = GPUTarget("cuda", 90, 32)  # H100 / H200
f = "*fp32"
TABLES = ["cos_w_ptr", "sin_w_ptr", "cos_h_ptr", "sin_h_ptr", "c1_ptr", "s1_ptr", "c2_ptr", "s2_ptr", "tw_c_ptr",
          "tw_s_ptr", "d1_ptr", "e1_ptr", "d2_ptr", "e2_ptr", "tv_c_ptr", "tv_s_ptr"]
DEPTH_TABLES = ["cos_d_ptr", "sin_d_ptr", "c1_ptr", "s1_ptr", "c2_ptr", "s2_ptr", "tw_c_ptr", "tw_s_ptr"]
SLICE_INTS = ["pair0", "n_slices", "n_chan", "X_CHAN", "X_FIRST", "A_OFF", "first_class", "D", "H", "ROWS", "W",
              "WH", "N1", "N2", "M1", "M2", "PER_PROGRAM", "PAIR_WS"]


def compile_(fn, sig, consts, warps=4, stages=1):
    src = ASTSource(fn=fn, signature={**sig, **{k: "constexpr" for k in consts}}, constexprs=consts)
    triton.compile(src, target=target, options=dict(num_warps=warps, num_stages=stages))


bm, bn, bk, warps, stages = m.GPU_BLOCKS["tf32"]
for labels, four in ((True, True), (False, False)):
    lab = "*i64" if labels else f
    fs = dict(FOUR_STEP=four, N1P=16, N2P=16, FOUR_STEP_W=four, M1P=16, M2P=16)
    blocks = dict(PRECISION="tf32", BM=bm, BN=bn, BK=bk)
    # 3D slices and blocks of rows of the 2D split (no column DFT); p given, or softmax / sigmoid
    # computed in the kernels from bf16 logits
    for rows_only, act in ((False, 0), (True, 1 if labels else 2)):
        sfs = dict(fs, FOUR_STEP=four and not rows_only, ROWS_ONLY=rows_only, ACT=act)
        x = "*bf16" if act else f
        compile_(m._scc3d_slices_fwd, dict(probs_ptr=x, target_ptr=lab, act_ptr=f, **{t: f for t in TABLES},
                 scratch_ptr=f, ws_ptr=f, stats_ptr=f, **{i: "i32" for i in SLICE_INTS}),
                 dict(LABELS=labels, **blocks, **sfs), warps, stages)
        compile_(m._scc3d_slices_inv, dict(probs_ptr=x, target_ptr=lab, act_ptr=f, **{t: f for t in TABLES},
                 scratch_ptr=f, ws_ptr=f, coef_ptr=f, grad_ptr=f, **{i: "i32" for i in SLICE_INTS}, n_vox="fp32"),
                 dict(LABELS=labels, INCLUDE_DC=not labels, **blocks, **sfs), warps, stages)
    dfs = dict(FOUR_STEP=four, N1P=16, N2P=16)  # the depth DFT four-step (with the slices') or direct
    compile_(m._scc3d_depth_fwd, dict(ws_ptr=f, parts_ptr=f, scratch_ptr=f, **{t: f for t in DEPTH_TABLES}, D="i32",
             N1="i32", N2="i32", W="i32", WH="i32", NBINS="i32", N_BLOCKS="i32", N_TASKS="i32", PAIR_WS="i64"),
             dict(INCLUDE_DC=labels, NEED_GRAD=labels, **blocks, **dfs), warps, stages)
    compile_(m._scc3d_scalars, dict(stats_ptr=f, parts_ptr=f, scc_ptr=f, valid_ptr="*i1", coef_ptr=f, pair0="i32",
             D="i32", HW="i32", LAST_HW="i32", N_BLOCKS="i32", n_vox="fp32", magnitude_weight="fp32",
             phase_weight="fp32"),
             dict(LABELS=labels, INCLUDE_DC=labels, NEED_GRAD=labels, BD=128, BB=1024))
    compile_(m._scc3d_depth_inv, dict(ws_ptr=f, coef_ptr=f, scratch_ptr=f, **{t: f for t in DEPTH_TABLES}, D="i32",
             N1="i32", N2="i32", NBINS="i32", N_BLOCKS="i32", N_TASKS="i32", PAIR_WS="i64"),
             dict(INCLUDE_DC=labels, **blocks, **dfs), warps, stages)
    fbm, fbn, fbk, fwarps, fstages = m.GPU_BLOCKS_FUSED["tf32"]
    compile_(m._scc_fused_kernel, dict(probs_ptr=f, target_ptr=lab, act_ptr=f, **{t: f for t in TABLES}, scratch_ptr=f,
             scc_ptr=f, valid_ptr="*i1", grad_ptr=f, **{i: "i32" for i in ["n_pairs", "n_chan", "X_CHAN", "X_FIRST",
             "A_OFF", "first_class", "H", "W", "WH", "N1", "N2", "M1", "M2", "PER_PROGRAM"]}, magnitude_weight="fp32",
             phase_weight="fp32"),
             dict(LABELS=labels, ACT=1 if four else 0, INCLUDE_DC=labels, NEED_GRAD=True, SLOTS=3 if four else 5,
                  PRECISION="tf32", BM=fbm, BN=fbn, BK=fbk, **fs), fwarps, fstages)
from scc_fast.backends import _activation_kernel as ak

for act in (1, 2):
    compile_(ak._activation_stats_kernel, dict(x_ptr="*fp16", label_ptr="*i64", out_ptr=f, n_vox="i32", n_chan="i32",
             n_batch="i32", ignore_index="i32"), dict(ACTIVATION=act, HAS_IGNORE=True, BLOCK=1024))
for act in (0, 1, 2):  # the fused activation's backward (every Triton backend's)
    compile_(ak._activation_backward_kernel, dict(x_ptr="*bf16", field_ptr=f, up_ptr=f, scale_ptr=f, label_ptr="*u8",
             out_ptr="*bf16", n_vox="i32", n_chan="i32", first_channel="i32", ignore_index="i32", up_skip="i32"),
             dict(ACTIVATION=act, HAS_IGNORE=act != 1, HAS_SCALE=act == 1, BLOCK=1024))
from scc_fast.backends import triton_fft as fft

# backend triton_fft's pair kernel (float32 and float64 sums) and the field kernel that reads it
for dt, eps, fmax in (("*fp32", 1.1920928955078125e-07, 3.4028234663852886e38),
                      ("*fp64", 2.220446049250313e-16, 1.7976931348623157e308)):
    for labels, (bp, sb) in ((True, fft._pair_blocks(528)), (False, fft._pair_blocks(44)), (True, fft._pair_blocks(1))):
        compile_(fft._pair_kernel, dict(part_ptr=dt, count_ptr="*i32" if labels else dt, tpart_ptr=dt, scc_ptr=dt,
                 valid_ptr="*i1", coef_ptr=dt, **{i: "i32" for i in ["n_pairs", "n_sp", "n_tsp", "n_chunk", "n_chan",
                 "c0", "n_vox"]}, **{w: "fp32" for w in ["mw_hi", "mw_lo", "pw_hi", "pw_lo"]}),
                 dict(LABELS=labels, INCLUDE_DC=not labels, NEED_GRAD=True, EPS=eps, FMAX=fmax, BP=bp, SB=sb))
    compile_(fft._field_kernel, dict(P_ptr=dt, Y_ptr=dt, coef_ptr=dt, n_pairs="i32", n_half="i32"),
             dict(INCLUDE_DC=False, BLOCK=1024))
    compile_(fft._spatial_stats_kernel, dict(p_ptr=dt, p_stride_b="i64", p_stride_c="i64", y_ptr="*i8",
             y_stride_b="i64", y_stride_c="i64", yout_ptr=dt, part_ptr=dt, count_ptr="*i32",
             **{i: "i32" for i in ["n_vox", "n_chunk", "class0", "span", "n_splits"]}),
             dict(LABELS=True, WRITE_Y=True, BLOCK=1024))
# class 0 derived from the others' spectra (softmax over every channel): statistics and field at
# 2-32 class rows, the GPU tile of _derived_config
for rows in (2, 4, 16, 32):
    for even, dc in ((True, False), (False, True)):
        y_skip = not even  # Y of class 0 derived too (labels checked in range) at half of them
        compile_(fft._derived_stats_kernel, dict(P_ptr=f, Y_ptr=f, part_ptr=f, **{i: "i32" for i in ["n_chan",
                 "n_half", "w_half", "n_vox", "span", "n_splits"]}),
                 dict(LAST_EVEN=even, INCLUDE_DC=dc, Y_SKIP=y_skip, CP=rows, BLOCK=max(16, fft.DERIVED_VALUES // rows)),
                 warps=fft.DERIVED_WARPS)
        compile_(fft._derived_field_kernel, dict(P_ptr=f, Y_ptr=f, coef_ptr=f, weight_ptr="*fp64",
                 **{i: "i32" for i in ["n_pairs", "n_chan", "n_half", "n_vox"]}),
                 dict(INCLUDE_DC=dc, Y_SKIP=y_skip, HAS_WEIGHT=dc, CP=rows, BLOCK=max(16, fft.DERIVED_VALUES // rows)),
                 warps=fft.DERIVED_WARPS)
# stage 1 with the activation: softmax / sigmoid of float32 or bf16 logits, labels or a float target,
# and with validate=True's checks (softmax or sigmoid, labels, with and without an ignored label)
stage1_ints = ["n_vox", "n_chan", "first_channel", "c0", "n_chunk", "first_class", "ignore_index", "span", "n_splits",
               "p_skip", "y_skip"]
for x, act, labels, rows, check in (("*fp32", 1, True, 4, False), ("*bf16", 1, True, 16, False),
                                    ("*fp16", 2, True, 32, False), ("*fp32", 1, False, 16, False),
                                    ("*fp32", 1, True, 4, True), ("*bf16", 1, True, 16, True), ("*fp32", 1, True, 32, True),
                                    ("*fp16", 2, True, 2, True)):
    compile_(fft._activated_moments_kernel, dict(x_ptr=x, lab_ptr="*i64" if labels else f, yf_ptr=f,
             yf_stride_b="i64", yf_stride_c="i64", p_out_ptr=f, y_out_ptr=f, part_ptr=f,
             count_ptr="*i32" if labels else f, flag_ptr="*i32" if check else f, **{i: "i32" for i in stage1_ints}),
             dict(ACTIVATION=act, LABELS=labels, HAS_IGNORE=labels and rows != 4, VALIDATE=check, CP=rows,
                  CHANNEL_THREADS=False, BLOCK=max(16, 1024 // rows)), warps=8)
# the other tiles and warps scc-fast bench stage1-tune times (values per tile, warps, threads down
# the channels first), at 16 rows, and the channel-thread tiles at 4 and 32 rows too
variants = [(16, v, w, False) for v, w in ((512, 4), (1024, 4), (1024, 2), (2048, 8), (2048, 4), (4096, 8), (512, 1))]
variants += [(rows, v, w, True) for rows in (4, 16, 32) for v, w in ((1024, 8), (2048, 8), (1024, 4))]
for rows, values, warps, channel_threads in variants:
    compile_(fft._activated_moments_kernel, dict(x_ptr="*fp32", lab_ptr="*i64", yf_ptr=f, yf_stride_b="i64",
             yf_stride_c="i64", p_out_ptr=f, y_out_ptr=f, part_ptr=f, count_ptr="*i32", flag_ptr="*i32",
             **{i: "i32" for i in stage1_ints}),
             dict(ACTIVATION=1, LABELS=True, HAS_IGNORE=False, VALIDATE=False, CP=rows, BLOCK=values // rows,
                  CHANNEL_THREADS=channel_threads), warps=warps)
print("compiled")
"""


def test_kernels_compile_for_the_gpu():
    # The interpreter accepts code the compiler rejects: compile the 3D kernels (and the 2D
    # kernel, whose phases they share) to sm_90 cubins ahead of time, no GPU needed.
    pytest.importorskip("triton.backends.nvidia")
    assert_compiles(_AOT_SCRIPT, timeout=600)
