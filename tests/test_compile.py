"""torch.compile(fullgraph=True) of a small model plus the loss, with every available backend.

fullgraph=True turns any graph break into an error, so these tests also pin that the public
path (argument checks, backend dispatch, the backend's autograd.Function or custom op, the
reduction) traces as one graph. Data-dependent value checks (label range, NaN/Inf) are skipped
while tracing, as the ``validate`` docstring says. Shapes are tiny: on CPU, Inductor compiles
C++ with the system compiler, and Triton kernels run under the interpreter.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn

from scc_fast import DiceCESCCLoss, scc_loss
from _helpers import rel_err
from _models import backend_input, backend_params, require_supported

BACKENDS = backend_params()


@pytest.fixture(autouse=True)
def _single_compile_thread(monkeypatch):
    # Inductor's pool of compile workers costs more to start than these tiny graphs take.
    import torch._inductor.config as inductor_config

    monkeypatch.setattr(inductor_config, "compile_threads", 1)

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() and shutil.which("g++") is None and shutil.which("c++") is None,
    reason="torch.compile (Inductor) on CPU needs a C++ compiler",
)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 1))


def _data(shape=(2, 1, 8, 10)):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g)
    labels = torch.randint(0, 3, (shape[0],) + shape[2:], generator=g)
    return x, labels


def _grads(model):
    return [p.grad.detach().clone() for p in model.parameters()]


def _flat(grads):
    return torch.cat([g.flatten() for g in grads])


@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_model_and_loss_equal_eager(backend):
    """float64 where the backend takes it (tolerance 1e-10), else float32 (1e-5): Inductor
    reorders float32 sums, and the last bias gradient of a softmax model sums to 0 over classes,
    so its float32 rounding is only small next to the whole gradient, not next to that bias."""
    x, labels = _data()
    model = _model()
    if require_fp64 := (backend_params_fp64(backend, x, labels)):
        x, model = x.double(), model.double()
    tol = 1e-10 if require_fp64 else 1e-5
    require_supported(backend, *backend_input(model(x).detach(), labels))

    def step(inp, target):
        return scc_loss(model(inp), target, softmax=True, include_background=False, backend=backend)

    eager = step(x, labels)
    eager.backward()
    eager_grads = _grads(model)
    model.zero_grad()

    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True)
    for _ in range(2):  # the second call reuses the compiled graph
        model.zero_grad()
        loss = compiled(x, labels)
        loss.backward()
        assert rel_err(loss, eager) < tol
        assert rel_err(_flat(_grads(model)), _flat(eager_grads)) < tol
    torch._dynamo.reset()


def backend_params_fp64(backend, x, labels) -> bool:
    from scc_fast import backends

    return backends.load(backend).unsupported_reason(torch.zeros(x.shape[0], 3, *x.shape[2:], dtype=torch.float64), labels) is None


def test_compiled_dice_ce_scc_equal_eager():
    """The paper's recipe (Dice + CE + lambda * SCC) as one graph, with the default backend."""
    x, labels = _data()
    model = _model()
    loss_fn = DiceCESCCLoss(include_background=False)

    def step(inp, target):
        return loss_fn(model(inp), target)

    eager = step(x, labels)
    eager.backward()
    eager_grads = _grads(model)
    model.zero_grad()
    torch._dynamo.reset()
    loss = torch.compile(step, fullgraph=True)(x, labels)
    loss.backward()
    assert rel_err(loss, eager) < 1e-5
    assert rel_err(_flat(_grads(model)), _flat(eager_grads)) < 1e-5
    torch._dynamo.reset()
