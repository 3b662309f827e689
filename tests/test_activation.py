"""The fused activation layer (scc_fast/backends/activation.py) against the float64 reference.

The public API hands logits to backends that provide ``activated_correlation``; the probabilities
are computed inside one registered op and never saved, and backward recomputes them (one Triton
kernel for the Triton backends, torch ops otherwise). Tolerances: float64 1e-10, float32 1e-5
(relative, loss and input gradient), as for every backend.
"""

from __future__ import annotations

import pytest
import torch

import scc_fast
from scc_fast import _settings
from scc_fast import backends
from scc_fast._numerics import plain_eager
from scc_fast.backends import activation

from _fused import fused_case, fused_vs_reference
from _helpers import TOL, rel_err

def available(name: str) -> bool:
    return backends.available_backends()[name].available


FUSED = [name for name in ("torch", "triton", "triton_fft") if available(name)]


@pytest.mark.skipif(not available("triton_fft"), reason="Triton (or TRITON_INTERPRET=1) not available")
@pytest.mark.parametrize("act", [0, 1, 2])
@pytest.mark.parametrize("first_channel", [0, 1])
@pytest.mark.parametrize("ignore_index", [None, 2])
def test_kernel_equals_torch_ops(act, first_channel, ignore_index):
    """The Triton backward kernel and the torch-ops backward compute the same dL/dx."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 4, 6, 10, generator=g) * 4
    labels = torch.randint(0, 4, (2, 6, 10), generator=g)
    field = torch.randn(2, 4 - first_channel, 6, 10, generator=g)
    up = torch.randn(2, 4 - first_channel, generator=g)
    op = torch.ops.scc_fast.activation_backward
    by_kernel = op(x, field, up, labels, act, first_channel, ignore_index, True)
    by_torch = op(x, field, up, labels, act, first_channel, ignore_index, False)
    assert rel_err(by_kernel, by_torch) <= 1e-6
    if ignore_index is not None:
        assert (by_kernel.transpose(0, 1)[:, labels == ignore_index] == 0).all()


@pytest.mark.skipif(not available("triton_fft"), reason="Triton (or TRITON_INTERPRET=1) not available")
@pytest.mark.parametrize("first_channel", [0, 1])
def test_kernel_softmax_with_infinite_and_large_logits(first_channel):
    """The kernel's one-pass max and sums (rescaled as the max grows): logits of -inf, in the first
    channel too (every logit so far -inf), and wide ranges, against torch's softmax backward."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, 7, 9, generator=g) * 30
    x[:, 0][torch.rand(2, 7, 9, generator=g) < 0.5] = -float("inf")
    x[:, 3][torch.rand(2, 7, 9, generator=g) < 0.3] = -float("inf")
    x[:, 4, :2] = -float("inf")  # with channel 0 -inf there too: the max arrives late
    labels = torch.randint(0, 5, (2, 7, 9), generator=g)
    field = torch.randn(2, 5 - first_channel, 7, 9, generator=g)
    up = torch.randn(2, 5 - first_channel, generator=g)
    op = torch.ops.scc_fast.activation_backward
    by_kernel = op(x, field, up, labels, 1, first_channel, None, True)
    by_torch = op(x, field, up, labels, 1, first_channel, None, False)
    assert torch.isfinite(by_kernel).all()
    assert rel_err(by_kernel, by_torch) <= 1e-6


def test_probabilities_masks_and_drops():
    logits, labels = fused_case((2, 3, 4, 5), 255)
    p, t = activation.probabilities(logits, labels, "softmax", 1, 255)
    assert p.shape == (2, 2, 4, 5)
    assert (p.transpose(0, 1)[:, labels == 255] == 0).all()
    assert torch.allclose(p, (torch.softmax(logits, 1) * (labels != 255).unsqueeze(1))[:, 1:])
    assert t.dtype == labels.dtype and not (t == 1).logical_and(labels == 255).any()


def test_bad_activation_is_named():
    logits, labels = fused_case((1, 2, 4, 4), None)
    with pytest.raises(ValueError, match="activation must be None, 'softmax' or 'sigmoid', got 'tanh'"):
        activation.activated_correlation("torch", logits, labels, activation="tanh")


def test_backward_without_field_is_an_error():
    logits, labels = fused_case((1, 2, 6, 6), None)
    x = logits.clone().requires_grad_(True)
    scc, _, field, _ = torch.ops.scc_fast.activated_correlation(x, labels, "torch", 1, 0, 0, None, False, 0.5, 0.5, False,
                                                             False)
    # (the op itself works for every fused backend, kernel or not)
    assert field.shape == (0,)
    with pytest.raises(RuntimeError, match="need_grad=False"):
        scc.sum().backward()


def test_opcheck():
    logits, labels = fused_case((2, 3, 5, 6), 1)
    x = logits.float().requires_grad_(True)
    torch.library.opcheck(
        torch.ops.scc_fast.activated_correlation.default, (x, labels, "torch", 1, 1, 1, 1, False, 0.5, 0.5, True, False)
    )
    torch.library.opcheck(  # the recomputing variant: no field from the forward, backward makes it
        torch.ops.scc_fast.activated_correlation.default, (x, labels, "torch", 1, 1, 1, 1, False, 0.5, 0.5, False, True)
    )
    field = torch.randn(2, 2, 5, 6)
    up = torch.randn(2, 2)
    torch.library.opcheck(
        torch.ops.scc_fast.activation_backward.default, (x.detach(), field, up, labels, 1, 1, 1, False)
    )


FUSED_HERE = "triton_fft" if available("triton_fft") else None  # fused on CPU only under the interpreter


@pytest.mark.skipif(FUSED_HERE is None, reason="no backend fuses the activation on this machine")
def test_no_probabilities_saved_for_backward():
    """The graph keeps the input and the field dSCC/dp, not a B x C x spatial probability tensor
    (applied outside, softmax would save one more full-size tensor)."""
    logits, labels = fused_case((2, 4, 16, 16), None)
    x = logits.float().requires_grad_(True)
    loss = scc_fast.scc_loss(x, labels, softmax=True, backend=FUSED_HERE)
    full = _full_size_saved(loss, x)
    assert len(full) == 1, f"full-size tensors saved besides the input: {len(full)}"
    assert (full[0] < 0).any()  # the field (signed), not probabilities


@pytest.mark.skipif(FUSED_HERE is None, reason="no backend fuses the activation on this machine")
@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("ignore_index", [255, None], ids=["ignore-no-background", "softmax-all"])
def test_eager_calls_skip_the_registered_op_and_match_it(monkeypatch, reduction, ignore_index):
    """An eager call runs the op's autograd.Function twin together with the reduction, one autograd
    node between the input and the loss (no custom-op dispatch); under a dispatch mode (as under
    torch.compile, which the compile tests cover) the registered op and the reduction's own node run.
    Both give the same loss and gradient, bit for bit (with softmax over every channel and the
    mean, backend triton_fft derives class 0 in both)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Seen(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.add(str(func))
            return func(*args, **(kwargs or {}))

    calls = []
    op = activation._activated_correlation_op
    monkeypatch.setattr(activation, "_activated_correlation_op", lambda *a: calls.append(1) or op(*a))
    logits, labels = fused_case((2, 3, 8, 9), ignore_index)
    kw = dict(softmax=True, backend=FUSED_HERE, reduction=reduction)
    if ignore_index is not None:
        kw.update(include_background=False, ignore_index=ignore_index)
    n_loss = 2 if ignore_index is not None else 3
    upstream = torch.linspace(-1.0, 2.0, 2 * n_loss).view(2, n_loss) if reduction == "none" else torch.tensor(1.5)
    results = []
    for mode in (None, Seen()):
        x = logits.float().requires_grad_(True)
        if mode is None:
            loss = scc_fast.scc_loss(x, labels, **kw)
            # One node: the reduction is folded into the op's eager twin.
            assert type(loss.grad_fn).__name__ == "_ActivatedLossEagerBackward"
            assert [type(fn).__name__ for fn, _ in loss.grad_fn.next_functions if fn is not None] == ["AccumulateGrad"]
        else:
            with mode:
                loss = scc_fast.scc_loss(x, labels, **kw)
        loss.backward(upstream)
        results.append((loss.detach(), x.grad))
        assert len(calls) == (0 if mode is None else 1)
    assert "scc_fast.activated_correlation.default" in mode.ops, sorted(mode.ops)
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


def _full_size_saved(loss, x):
    """Tensors B x (any channels) x spatial of x that loss's graph saves for backward, x itself
    excepted (a field over the loss's channels, probabilities over all of them)."""
    saved = []
    node = loss.grad_fn
    seen = set()
    stack = [node]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for name in dir(node):
            if name.startswith("_saved_") or name == "saved_tensors":
                try:
                    value = getattr(node, name)
                except Exception:  # noqa: BLE001 - some saved attributes raise once freed
                    continue
                for v in value if isinstance(value, tuple) else (value,):
                    if isinstance(v, torch.Tensor):
                        saved.append(v)
        stack.extend(n for n, _ in node.next_functions)
    return [t for t in saved if t.dim() == x.dim() and t.shape[0] == x.shape[0] and t.shape[2:] == x.shape[2:]
            and t.data_ptr() != x.data_ptr()]


@pytest.mark.parametrize("backend", FUSED + [name for name in ("native",) if available(name)])
@pytest.mark.parametrize("shape", [(2, 3, 9, 12), (1, 3, 4, 8, 9)])
def test_recompute_field_in_backward(monkeypatch, backend, shape):
    """The setting recompute_field: the graph keeps only the input (no field, and for native no
    softmax statistics), backward computes them again; loss and gradient are those of the default
    path (bitwise: the same passes run)."""
    kw = dict(softmax=True, include_background=False, ignore_index=255, backend=backend, reduction="none")
    logits, labels = fused_case(shape, 255)
    dtype = torch.float64 if backend == "torch" else torch.float32
    if backend != "native" and not activation.kernel_backward(logits.to(dtype), backend):
        pytest.skip(f"backend {backend} applies the activation outside here (no fused op to recompute)")
    upstream = torch.rand(shape[0], shape[1] - 1, generator=torch.Generator().manual_seed(5), dtype=dtype)
    results = {}
    for recompute in (False, True):
        _settings.update(recompute_field=recompute)
        x = logits.to(dtype).requires_grad_(True)
        out = scc_fast.scc_loss(x, labels, **kw)
        saved = _full_size_saved(out, x)
        (out * upstream).sum().backward()
        results[recompute] = (out.detach(), x.grad, saved)
    assert torch.equal(results[True][0], results[False][0]) and torch.equal(results[True][1], results[False][1])
    kept = 2 if backend == "native" else 1  # the field (and native's statistics)
    assert len(results[False][2]) == kept and len(results[True][2]) == 0


@pytest.mark.parametrize("backend", [name for name in ("torch", "native") if available(name)])
def test_unfused_switch_gives_the_same_result(backend, monkeypatch):
    """The setting fuse_activation=False applies the activation with torch ops outside the backend (A/B)."""
    logits, labels = fused_case((2, 3, 8, 9), 255)
    kw = dict(softmax=True, include_background=False, ignore_index=255, backend=backend)
    x1 = logits.clone().requires_grad_(True)
    fused = scc_fast.scc_loss(x1, labels, **kw)
    fused.backward()
    _settings.update(fuse_activation=False)
    x2 = logits.clone().requires_grad_(True)
    unfused = scc_fast.scc_loss(x2, labels, **kw)
    unfused.backward()
    assert rel_err(fused.detach(), unfused.detach()) <= 1e-10
    assert rel_err(x1.grad, x2.grad) <= 1e-10


TRITON = available("triton")


@pytest.mark.skipif(not TRITON, reason="backend triton not available (no CUDA, no TRITON_INTERPRET=1)")
@pytest.mark.parametrize("in_kernel", [True, False])
@pytest.mark.parametrize("mode", ["fused", "split"])
@pytest.mark.parametrize("act", ["softmax", "sigmoid"])
@pytest.mark.parametrize("include_background,ignore_index", [(True, None), (False, 255), (True, 1)])
def test_triton_activation_in_kernel_or_outside(monkeypatch, in_kernel, mode, act, include_background, ignore_index):
    """Backend triton computes p inside its kernels from per-voxel statistics (default), or gets
    the probabilities (activation_in_kernel=False); both 2D modes; the float64 reference decides."""
    from scc_fast.backends import triton_scc

    _settings.update(triton_activation_in_kernel=in_kernel)
    _settings.update(triton_2d=mode)
    _settings.update(triton_split_rows=4)  # 3 blocks of rows, the last of 1
    out, ref, grad, ref_grad = fused_vs_reference("triton", act, include_background, ignore_index, (2, 3, 9, 12),
                                                  torch.float32, seed=3)
    assert rel_err(out, ref) <= TOL[torch.float32]
    assert rel_err(grad, ref_grad) <= TOL[torch.float32]


@pytest.mark.skipif(not TRITON, reason="backend triton not available (no CUDA, no TRITON_INTERPRET=1)")
@pytest.mark.parametrize("act", ["softmax", "sigmoid"])
@pytest.mark.parametrize("shape", [(2, 4, 12, 10), (1, 4, 3, 8, 10)])
def test_triton_activation_in_kernel_makes_no_probability_tensor(monkeypatch, shape, act):
    """With the activation in the kernels, the forward runs no softmax / sigmoid op (which would make
    a B x C x spatial probability tensor) and no full-size masking product; with the probabilities
    computed first (activation_in_kernel=False) it does, which shows the check can see them."""
    from torch.profiler import ProfilerActivity, profile

    from scc_fast.backends import triton_scc

    logits, labels = fused_case(shape, 255)
    kw = dict(softmax=act == "softmax", sigmoid=act == "sigmoid", ignore_index=255, backend="triton", validate=False)
    full_bytes = logits.numel() * 4
    seen = {}
    for in_kernel in (True, False):
        _settings.update(triton_activation_in_kernel=in_kernel)
        x = logits.float().requires_grad_(True)
        scc_fast.scc_loss(x, labels, **kw)  # kernels compiled (or traced) outside the profile
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            scc_fast.scc_loss(x, labels, **kw)
        seen[in_kernel] = {
            e.name for e in prof.events()
            if e.name in ("aten::_softmax", "aten::sigmoid", "aten::mul") and e.cpu_memory_usage >= full_bytes
        }
    assert seen[True] == set(), seen
    assert seen[False] >= {"aten::_softmax" if act == "softmax" else "aten::sigmoid", "aten::mul"}, seen


def test_plain_eager_is_false_under_dispatch_modes_and_for_subclasses():
    """The condition for skipping registered ops: plain tensors (or parameters), no dispatch mode."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Passthrough(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    class Sub(torch.Tensor):
        pass

    t = torch.zeros(2)
    assert plain_eager(t, torch.nn.Parameter(torch.zeros(2)))
    assert not plain_eager(t, t.as_subclass(Sub))
    with Passthrough():
        assert not plain_eager(t)
