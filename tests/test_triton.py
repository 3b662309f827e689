"""Backend "triton" (fused 2D kernel, and the 2D split mode) against the float64 reference; 3D
input: test_triton_3d.py.

On a machine without CUDA the kernel runs under Triton's interpreter: tests/conftest.py sets
TRITON_INTERPRET=1 before anything imports triton. Tolerance (docs/loss.md section 6): relative error
||out - ref|| / ||ref|| <= 1e-5 for SCC and for dSCC/dp (float32 dots; on GPU the tests force
IEEE dots, since TF32 is only held to 5e-3).
"""

from __future__ import annotations

import os

import pytest
import torch

import scc_fast
from scc_fast import _settings
from scc_fast import backends
from scc_fast.reference import reference_correlation

import _helpers
from _helpers import check_against_reference, rel_err

triton_scc = pytest.importorskip("scc_fast.backends.triton_scc")
if triton_scc.unavailable_reason() is not None:
    pytest.skip(f"triton backend unavailable: {triton_scc.unavailable_reason()}", allow_module_level=True)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = _helpers.TOL[torch.float32]


@pytest.fixture(autouse=True)
def _ieee_dots_and_2d_mode(request, monkeypatch):
    _settings.update(triton_precision="ieee")
    # Tests parametrised over RANKS run 2D input in both modes; "2d-split" cuts maps into blocks
    # of 5 rows, so there are several slices per pair and (mostly) a shorter last one.
    callspec = getattr(request.node, "callspec", None)
    split = callspec is not None and callspec.params.get("rank") == "2d-split"
    _settings.update(triton_2d="split" if split else "fused")
    _settings.update(triton_split_rows=5 if split else None)


def make_inputs(shape, labels: bool, seed: int = 0, ignore: bool = False, n_labels: int | None = None):
    """``_helpers.make_inputs`` as these tests use it: probabilities that partly follow the target
    (SCC well away from 0), 10% of the labels ignored where ``ignore``."""
    return _helpers.make_inputs(shape, labels, seed, ignore=0.1 if ignore else 0.0, n_labels=n_labels, follow=True)


def compare(probs, target, **kw):
    """Run triton (float32, on DEVICE) against the float64 reference; assert they agree."""
    return check_against_reference(triton_scc.correlation, probs, target, torch.float32, DEVICE, **kw)


def assert_forward_only_matches(probs, target, out, valid, **kw):
    """Without the gradient the kernels take their own launches and scratch layout: they must
    give ``compare``'s SCC and valid bitwise."""
    t = target.to(DEVICE) if not target.is_floating_point() else target.to(DEVICE, torch.float32)
    with torch.no_grad():
        out_ng, valid_ng = triton_scc.correlation(probs.to(DEVICE, torch.float32), t, **kw)
    assert torch.equal(out_ng, out) and torch.equal(valid_ng, valid)


@pytest.mark.parametrize("weights", [(1.0, 0.0), (0.0, 1.0), (0.5, 0.5), (2.0, 0.25)])
def test_magnitude_phase_weights(weights):
    probs, target = make_inputs((2, 2, 12, 14), labels=True, seed=3)
    compare(probs, target, magnitude_weight=weights[0], phase_weight=weights[1])


# The label-layout cases below run in 2D (both modes) and 3D (the 3D path's own tests:
# test_triton_3d.py); shapes are looked up by rank[:2].
RANKS = ["2d", "2d-split", "3d"]


@pytest.mark.parametrize("rank", RANKS)
@pytest.mark.parametrize("include_dc", [False, True])
def test_ignored_labels_and_first_class(include_dc, rank):
    # Channel j is label 1 + j; label 0 (background, dropped) and -1 (ignored) are 0 in every channel.
    shape = {"2d": (2, 3, 13, 10), "3d": (2, 3, 3, 10, 9)}[rank[:2]]
    probs, target = make_inputs(shape, labels=True, ignore=True, n_labels=4, seed=5)
    compare(probs, target, first_class=1, include_dc=include_dc)


@pytest.mark.parametrize("rank", RANKS)
@pytest.mark.parametrize("include_dc", [False, True])
def test_degenerate_pairs_and_constant_prediction(include_dc, rank):
    shape = {"2d": (3, 3, 12, 9), "3d": (3, 3, 3, 9, 8)}[rank[:2]]
    probs, target = make_inputs(shape, labels=True, seed=7)
    target[0] = 0  # image 0: class 0 covers everything (degenerate without DC), 1 and 2 absent
    target[1][target[1] == 2] = 1  # image 1: class 2 absent
    probs[2, 1] = 0.25  # image 2, class 1: a constant prediction (no spectral energy outside DC)
    out, valid, grad = compare(probs, target, include_dc=include_dc)
    assert not valid[0, 1] and not valid[0, 2] and not valid[1, 2]
    assert bool(valid[0, 0]) == include_dc
    if not include_dc:
        assert out[2, 1] == 0  # both correlations have a zero denominator: defined as 0


@pytest.mark.parametrize("rank", RANKS)
def test_degenerate_float_target(rank):
    shape = {"2d": (2, 2, 10, 12), "3d": (2, 2, 3, 8, 10)}[rank[:2]]
    probs, target = make_inputs(shape, labels=False, seed=11)
    target[0, 0] = 0.3  # constant soft target: degenerate with DC out
    target[1, 1] = 0.0  # all zero: degenerate either way
    for include_dc in (False, True):
        _, valid, _ = compare(probs, target, include_dc=include_dc)
        assert bool(valid[0, 0]) == include_dc and not valid[1, 1]


@pytest.mark.parametrize("rank", ["2d", "2d-split"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_are_read_as_float32(dtype, rank):
    probs, target = make_inputs((2, 2, 12, 10), labels=True, seed=13)
    rounded = probs.to(dtype)
    ref, _ = reference_correlation(rounded.double(), target)
    out, _ = triton_scc.correlation(rounded.to(DEVICE), target.to(DEVICE))
    assert out.dtype == torch.float32
    assert rel_err(out, ref) <= TOL
    x = rounded.to(DEVICE).requires_grad_(True)
    (grad,) = torch.autograd.grad(triton_scc.correlation(x, target.to(DEVICE))[0].sum(), x)
    assert grad.dtype == dtype


@pytest.mark.parametrize("rank", RANKS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_public_api_reads_half_logits_without_a_float32_copy(dtype, rank):
    # With the softmax in the kernels, float16/bfloat16 logits go in as they are: the loss is that
    # of their float32 conversion (the same values), the gradient comes back in their dtype (equal
    # up to its rounding: the interpreter's bfloat16 stores truncate), and the graph saves no
    # float32 copy of the input.
    shape = {"2d": (2, 3, 12, 10), "3d": (1, 3, 4, 8, 9)}[rank[:2]]
    g = torch.Generator().manual_seed(83)
    logits = (torch.randn(shape, generator=g) * 2).to(dtype)
    labels = torch.randint(0, 3, (shape[0], *shape[2:]), generator=g)
    kw = dict(softmax=True, ignore_index=2, include_background=False, backend="triton")
    x = logits.to(DEVICE).clone().requires_grad_(True)
    loss = scc_fast.scc_loss(x, labels.to(DEVICE), **kw)
    saved = []
    stack, seen = [loss.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        saved += [t for t in getattr(node, "saved_tensors", ()) if isinstance(t, torch.Tensor)]
        stack.extend(n for n, _ in node.next_functions)
    assert not [t for t in saved if t.dtype == torch.float32 and t.shape == x.shape]
    loss.backward()
    x32 = logits.float().to(DEVICE).requires_grad_(True)
    loss32 = scc_fast.scc_loss(x32, labels.to(DEVICE), **kw)
    loss32.backward()
    assert torch.equal(loss, loss32) and x.grad.dtype == dtype
    ulp = torch.finfo(dtype).eps * x32.grad.abs().max()
    assert (x.grad.float() - x32.grad.to(dtype).float()).abs().max() <= ulp


@pytest.mark.parametrize("rank", RANKS)
def test_no_grad_path_matches(rank):
    shape = {"2d": (2, 3, 11, 9), "3d": (2, 2, 3, 9, 9)}[rank[:2]]
    probs, target = make_inputs(shape, labels=True, seed=17)
    p, t = probs.to(DEVICE, torch.float32), target.to(DEVICE)
    with_grad, _ = triton_scc.correlation(p.clone().requires_grad_(True), t)
    with torch.no_grad():
        without, valid = triton_scc.correlation(p, t)
    assert torch.equal(with_grad.detach(), without)
    ref, ref_valid = reference_correlation(probs, target)
    assert torch.equal(valid.cpu(), ref_valid) and rel_err(without, ref) <= TOL


@pytest.mark.parametrize("shape,four_step", [((2, 3, 37, 45), False), ((1, 3, 48, 64), True)])
@pytest.mark.slow
def test_tiled_loops_and_persistent_grid(monkeypatch, shape, four_step):
    # Small blocks force several tiles per axis (as on GPU), and fewer programs than pairs make
    # each program loop over pairs, reusing its scratch; with four_step, both axes are factored
    # and the W intermediate is reused block of rows after block of rows.
    monkeypatch.setattr(triton_scc, "_blocks", lambda H, W, precision, table=None: (16, 16, 16, 4, 1))
    monkeypatch.setattr(triton_scc, "_max_programs", lambda device, n_pairs, path="sliced": 2)
    if four_step:
        monkeypatch.setattr(triton_scc, "FOUR_STEP_MIN_H", 32)
    probs, target = make_inputs(shape, labels=True, seed=19)
    compare(probs, target, magnitude_weight=0.6, phase_weight=0.4)


@pytest.mark.parametrize(
    "shape,labels,include_dc",
    [((1, 2, 48, 20), True, False), ((2, 2, 32, 17), False, True), ((1, 2, 64, 9), True, True)],
)
def test_four_step_column_dft(monkeypatch, shape, labels, include_dc):
    # Factored DFT along H (H = N1 * N2, N2 = 16; N1 = 3 is padded to a 16 block with masks),
    # enabled here below its default threshold so that the interpreter stays quick.
    monkeypatch.setattr(triton_scc, "FOUR_STEP_MIN_H", 32)
    assert triton_scc._four_step_factors(shape[2]) == (shape[2] // 16, 16)
    probs, target = make_inputs(shape, labels, seed=47)
    compare(probs, target, include_dc=include_dc, magnitude_weight=0.3, phase_weight=0.7)


@pytest.mark.parametrize(
    "shape,labels,include_dc",
    [((1, 2, 9, 48), True, False), ((1, 2, 20, 64), False, True), ((2, 2, 32, 32), True, True)],
)
@pytest.mark.slow
def test_four_step_row_dft(monkeypatch, shape, labels, include_dc):
    # Factored real-to-complex DFT along W and its Hermitian inverse (and along H too for 32 x 32).
    monkeypatch.setattr(triton_scc, "FOUR_STEP_MIN_H", 32)
    assert triton_scc._four_step_factors(shape[3]) == (shape[3] // 16, 16)
    probs, target = make_inputs(shape, labels, seed=59)
    kw = dict(include_dc=include_dc, magnitude_weight=0.6, phase_weight=0.4)
    out, valid, _ = compare(probs, target, **kw)
    assert_forward_only_matches(probs, target, out, valid, **kw)


def test_four_step_default_threshold():
    assert triton_scc._four_step_factors(512) == (16, 32) and triton_scc._four_step_factors(224) == (14, 16)
    assert triton_scc._four_step_factors(100) is None and triton_scc._four_step_factors(250) is None
    probs, target = make_inputs((1, 2, 128, 9), labels=True, seed=53)
    probs[0, 0] = 0.5  # also a constant prediction through the factored path
    compare(probs, target, include_dc=True)


@pytest.mark.parametrize("mode", ["fused", "split"])
@pytest.mark.parametrize("precision", list(triton_scc.GPU_BLOCKS))
def test_gpu_block_configuration(monkeypatch, precision, mode):
    # The block sizes used on GPU (fused: GPU_BLOCKS_FUSED, split: GPU_BLOCKS), at a size with
    # partial tiles on both axes (split: row blocks of BM rows, the last shorter, and the depth
    # passes' tiles along H).
    monkeypatch.setattr(triton_scc, "_blocks", lambda H, W, p, table=None: (table or triton_scc.GPU_BLOCKS)[precision])
    _settings.update(triton_2d=mode)
    probs, target = make_inputs((1, 2, 70, 66), labels=True, seed=23)
    compare(probs, target)


# The split mode (2D input through the sliced passes: blocks of rows transformed along W, the
# column DFT in the depth passes). Rows per slice: None = the row block (one slice per pair
# under the interpreter's large blocks); otherwise several slices, the last one shorter.
SPLIT_CASES = [
    ((2, 3, 20, 24), None, True, False),
    ((2, 3, 21, 17), 5, False, True),  # last slice: 1 row
    ((1, 2, 37, 45), 8, True, True),
    ((1, 3, 9, 130), 4, True, False),
    ((1, 2, 12, 128), 5, True, False),  # four-step along W
    ((2, 2, 16, 256), None, False, True),  # four-step along W, 256 = 16 x 16
    ((3, 1, 10, 11), 1, False, False),  # one row per slice
]


@pytest.mark.parametrize("shape,rows,labels,include_dc", SPLIT_CASES)
def test_split_mode_matches_reference(monkeypatch, shape, rows, labels, include_dc):
    _settings.update(triton_2d="split")
    _settings.update(triton_split_rows=rows)
    probs, target = make_inputs(shape, labels, seed=61)
    compare(probs, target, include_dc=include_dc, magnitude_weight=0.35, phase_weight=0.65)


@pytest.mark.parametrize("shape,labels,include_dc", [((1, 2, 48, 20), True, False), ((2, 2, 64, 17), False, True)])
def test_split_mode_four_step_columns(monkeypatch, shape, labels, include_dc):
    # The column DFT of the split mode is the depth passes' four-step transform (H = N1 x 16),
    # enabled below its default threshold; blocks of 8 rows.
    _settings.update(triton_2d="split")
    _settings.update(triton_split_rows=8)
    monkeypatch.setattr(triton_scc, "FOUR_STEP_MIN_H", 32)
    probs, target = make_inputs(shape, labels, seed=79)
    compare(probs, target, include_dc=include_dc, magnitude_weight=0.45, phase_weight=0.55)


@pytest.mark.slow
def test_split_mode_chunks_and_persistent_grid(monkeypatch):
    # GPU-like small tiles (3 row blocks of 16, 16, 5 rows per pair; 16-row tiles along H in the
    # depth passes), fewer programs than slices (each loops, reusing its scratch), and a
    # workspace cap of 2 pairs: 6 pairs in 3 chunks of five launches each.
    _settings.update(triton_2d="split")
    monkeypatch.setattr(triton_scc, "_blocks", lambda H, W, precision, table=None: (16, 16, 16, 4, 1))
    monkeypatch.setattr(triton_scc, "_depth_blocks", lambda D, n_bins, precision: (16, 16, 16, 4, 1))
    monkeypatch.setattr(triton_scc, "_max_programs", lambda device, n, path="sliced": 3)
    cap = 2 * triton_scc.workspace_bytes_per_pair(1, 37, 40, n_slices=3)
    _settings.update(triton_workspace_bytes=cap)
    probs, target = make_inputs((2, 3, 37, 40), labels=True, seed=67, ignore=True)
    compare(probs, target, first_class=0, include_dc=False)


def test_settings_are_listed_by_the_cli(monkeypatch, capsys):
    from scc_fast import cli

    _settings.update(triton_2d="split", triton_activation_in_kernel=False, triton_programs_per_sm=2)
    assert cli.main(["backends"]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("triton "))
    listed = {"mode_2d": "split", "precision": "ieee", "activation_in_kernel": False, "programs_per_sm": 2}
    assert triton_scc.settings() == listed
    assert "(settings: " + ", ".join(f"{k}={v}" for k, v in listed.items()) + ")" in line


def test_2d_mode_setting(monkeypatch):
    probs, target = make_inputs((1, 2, 12, 10), labels=True, seed=71)
    p, t = probs.to(DEVICE, torch.float32), target.to(DEVICE)
    _settings.update(triton_2d="auto")
    assert triton_scc._mode_2d() == "auto"
    assert triton_scc._launcher(p) is triton_scc._launch  # "auto" without a GPU: fused
    assert triton_scc._launcher(p[:, :, None]) is triton_scc._launch_sliced  # 3D: one way only
    _settings.update(triton_2d="split")
    assert triton_scc._launcher(p) is triton_scc._launch_sliced
    split, _ = triton_scc.correlation(p, t)
    _settings.update(triton_2d="fused")
    assert triton_scc._launcher(p) is triton_scc._launch
    fused, _ = triton_scc.correlation(p, t)
    assert rel_err(split, fused) <= TOL
    with pytest.raises(ValueError, match=r"setting triton_2d must be one of 'auto', 'fused', 'split', got 'rows'"):
        _settings.update(triton_2d="rows")
    assert triton_scc._mode_2d() == "fused"  # a refused value changes nothing


def test_programs_per_sm_per_path(monkeypatch):
    # GPU runs 3 and 4: the fused kernel 1 program per SM (its scratch is per program), the sliced
    # passes 2; an integer setting applies to both; no GPU: one program per pair.
    monkeypatch.setattr(triton_scc, "_sm_count", lambda device: 132)
    cuda = torch.device("cuda")
    _settings.update(triton_programs_per_sm=None)
    assert triton_scc._max_programs(cuda, 1000, "fused") == 132
    assert triton_scc._max_programs(cuda, 1000, "sliced") == 264 and triton_scc._max_programs(cuda, 50) == 50
    _settings.update(triton_programs_per_sm=2)
    assert triton_scc._max_programs(cuda, 1000, "fused") == triton_scc._max_programs(cuda, 1000) == 264
    assert triton_scc._max_programs(torch.device("cpu"), 7, "fused") == 7
    _settings.update(triton_programs_per_sm=None)
    assert triton_scc.settings()["programs_per_sm"] == {"fused": 1, "sliced": 2}


def test_2d_mode_auto_splits_when_pairs_leave_sms_idle(monkeypatch):
    # GPU run 3 (H200, 132 SMs): 32 pairs of 512^2 ran 2.2x faster split; 216 pairs of 224^2 ran
    # at the same speed fused, with less memory. No GPU: always the fused kernel.
    _settings.update(triton_2d="auto")
    monkeypatch.setattr(triton_scc, "_sm_count", lambda device: 132)
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert triton_scc._split_2d(32, cuda) and triton_scc._split_2d(131, cuda)
    assert not triton_scc._split_2d(132, cuda) and not triton_scc._split_2d(216, cuda)
    assert not triton_scc._split_2d(1, cpu)
    for mode, split in (("fused", False), ("split", True)):  # an explicit mode holds whatever the size
        _settings.update(triton_2d=mode)
        assert all(triton_scc._split_2d(n, d) is split for n in (1, 216) for d in (cuda, cpu))


@pytest.mark.parametrize("rank", ["2d-split"])  # the fused 2D mode and 3D: test_matrix.py's reductions
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_public_api_every_reduction(reduction, rank):
    shape, ignored_rows = {"2d": ((2, 3, 12, 11), 4), "3d": ((2, 3, 3, 9, 8), 3)}[rank[:2]]
    g = torch.Generator().manual_seed(29)
    logits = torch.randn(shape, generator=g, dtype=torch.float64)
    target = torch.randint(0, 3, (shape[0], *shape[2:]), generator=g)
    target[0, ..., :ignored_rows, :] = 255
    kw = dict(softmax=True, ignore_index=255, include_background=False, weight=[1.0, 2.0], reduction=reduction)
    x = logits.clone().requires_grad_(True)
    ref = scc_fast.scc_loss(x, target, backend="reference", **kw)
    w = torch.rand(ref.shape, generator=g, dtype=torch.float64)  # per-pair upstream weights for "none"
    (ref_grad,) = torch.autograd.grad((ref * w).sum(), x)
    x32 = logits.to(DEVICE, torch.float32).requires_grad_(True)
    out = scc_fast.scc_loss(x32, target.to(DEVICE), backend="triton", **kw)
    (grad,) = torch.autograd.grad((out * w.to(DEVICE, torch.float32)).sum(), x32)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert rel_err(out, ref) <= TOL and rel_err(grad, ref_grad) <= TOL


@pytest.mark.parametrize("rank", RANKS)
def test_public_api_sigmoid_single_channel_and_soft_target(rank):
    shape = {"2d": (2, 1, 9, 16), "3d": (2, 1, 2, 9, 10)}[rank[:2]]
    g = torch.Generator().manual_seed(31)
    logits = torch.randn(shape, generator=g, dtype=torch.float64)
    mask = (torch.rand(shape, generator=g) < 0.3).long()
    soft = torch.rand(shape, generator=g, dtype=torch.float64)
    for target in (mask, soft):
        x = logits.clone().requires_grad_(True)
        ref = scc_fast.scc_loss(x, target, sigmoid=True, backend="reference")
        (ref_grad,) = torch.autograd.grad(ref, x)
        x32 = logits.to(DEVICE, torch.float32).requires_grad_(True)
        out = scc_fast.scc_loss(x32, target.to(DEVICE), sigmoid=True, backend="triton")
        (grad,) = torch.autograd.grad(out, x32)
        assert rel_err(out, ref) <= TOL and rel_err(grad, ref_grad) <= TOL


@pytest.mark.slow
def test_torch_compile_fullgraph_and_opcheck():
    probs, target = make_inputs((2, 3, 12, 10), labels=True, seed=37)
    p, t = probs.to(DEVICE, torch.float32), target.to(DEVICE)

    def loss_fn(x, t):
        return scc_fast.scc_loss(x, t, softmax=True, backend="triton", validate=False)

    x = p.clone().requires_grad_(True)
    eager = loss_fn(x, t)
    (g_eager,) = torch.autograd.grad(eager, x)
    # fullgraph=True fails on any graph break; aot_eager runs AOTAutograd (fake impl, autograd
    # registration) without needing a C++ compiler for the rest of the graph.
    compiled = torch.compile(loss_fn, backend="aot_eager", fullgraph=True)
    out = compiled(x, t)
    (g_compiled,) = torch.autograd.grad(out, x)
    assert torch.allclose(out, eager) and torch.allclose(g_compiled, g_eager)

    op = torch.ops.scc_fast.activated_correlation.default
    for mode in ("fused", "split"):
        _settings.update(triton_2d=mode)
        torch.library.opcheck(op, (p.clone().requires_grad_(True), t, "triton", 0, 0, 0, None, False, 0.5, 0.5,
                                   True, False))
        torch.library.opcheck(op, (p, t, "triton", 0, 0, 0, None, True, 0.3, 0.7, False, False))


def test_unsupported_inputs_are_reported():
    p = torch.rand(1, 2, 16, 16, device=DEVICE)
    lab = torch.zeros(1, 16, 16, dtype=torch.long, device=DEVICE)
    assert triton_scc.unsupported_reason(p, lab) is None
    cases = {
        "2D (B x C x H x W) and 3D": (torch.rand(1, 2, 8, device=DEVICE), torch.zeros(1, 8, dtype=torch.long, device=DEVICE)),
        "[8, 1024]": (torch.rand(1, 2, 7, 16, device=DEVICE), torch.zeros(1, 7, 16, dtype=torch.long, device=DEVICE)),
        "float64": (p.double(), lab),
        "shape of probs": (p, torch.rand(1, 3, 16, 16, device=DEVICE)),
        "B x H x W": (p, torch.zeros(1, 16, 15, dtype=torch.long, device=DEVICE)),
    }
    for needle, (pp, tt) in cases.items():
        reason = triton_scc.unsupported_reason(pp, tt)
        assert reason is not None and needle in reason, (needle, reason)
    big = torch.rand(1, 1, 8, 1025, device="meta")
    assert "1024" in triton_scc.unsupported_reason(big, torch.zeros(1, 8, 1025, dtype=torch.long, device="meta"))
    # Asked for by name: a clear error, no silent fallback. "auto" goes to another backend.
    logits = torch.randn(1, 2, 6, 6, device=DEVICE)
    labels = torch.zeros(1, 6, 6, dtype=torch.long, device=DEVICE)
    with pytest.raises(RuntimeError, match="backend 'triton' was asked for but cannot run"):
        scc_fast.scc_loss(logits, labels, softmax=True, backend="triton")
    with pytest.raises(RuntimeError, match="float64"):
        triton_scc.correlation(p.double(), lab)
    if DEVICE == "cuda":
        assert "triton" not in backends.explain_backend(torch.softmax(logits, 1), labels).splitlines()[0]


def test_precision_setting(monkeypatch):
    probs, target = make_inputs((1, 2, 8, 10), labels=True, seed=41)
    # SCC_FAST_TRITON_PRECISION is read when scc_fast._settings is imported: its parser.
    monkeypatch.setenv(_settings.PRECISION_ENV, "bogus")
    with pytest.raises(ValueError, match="SCC_FAST_TRITON_PRECISION must be one of 'tf32', 'tf32x3', 'ieee', got 'bogus'"):
        _settings._from_environment()
    monkeypatch.setenv(_settings.PRECISION_ENV, "tf32x3")
    assert _settings._from_environment().triton_precision == "tf32x3"
    monkeypatch.delenv(_settings.PRECISION_ENV)
    assert _settings._from_environment().triton_precision == "tf32"
    for precision in ("tf32x3", "ieee"):  # the accurate options hold the fp32 tolerance on GPU too
        _settings.update(triton_precision=precision)
        out, _ = triton_scc.correlation(probs.float().to(DEVICE), target.to(DEVICE))
        assert rel_err(out, reference_correlation(probs, target)[0]) <= TOL
    _settings.update(triton_precision="tf32")
    assert triton_scc._precision() == "tf32"
    # TF32 (the GPU default): operands are rounded to TF32 in the kernel; the interpreter does
    # it too when asked, and then shows TF32's accuracy: docs/loss.md section 6 allows 5e-3.
    _settings.update(triton_interpret_tf32=True)
    out, _ = triton_scc.correlation(probs.float().to(DEVICE), target.to(DEVICE))
    err = rel_err(out, reference_correlation(probs, target)[0])
    assert err <= 5e-3
    if DEVICE == "cpu":
        assert err > 1e-6  # the rounding did happen


def test_interpreter_set_before_import():
    # conftest.py must set the variable before triton is imported, or the kernel is compiled.
    if DEVICE == "cpu":
        assert os.environ.get("TRITON_INTERPRET") == "1" and triton_scc._INTERPRET


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy, in the interpreter, on Inf - Inf
def test_nonfinite_input_propagates_and_double_backward_refused():
    probs, target = make_inputs((1, 2, 9, 10), labels=True, seed=43)
    p = probs.float().to(DEVICE)
    p[0, 0, 3, 4] = float("inf")
    out, _ = triton_scc.correlation(p, target.to(DEVICE))
    assert torch.isnan(out[0, 0]) and torch.isfinite(out[0, 1])  # not read as a zero correlation
    x = probs.float().to(DEVICE).requires_grad_(True)
    scc, _ = triton_scc.correlation(x, target.to(DEVICE))
    (g,) = torch.autograd.grad(scc.sum(), x, create_graph=False)
    assert torch.isfinite(g).all()
    scc, _ = triton_scc.correlation(x, target.to(DEVICE))
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(scc.sum(), x, create_graph=True)
