"""The value at a constant prediction (docs/loss.md, section 2): every backend and the reference
take a constant map's spectrum off DC as exactly 0, so the loss's gradient there is defined, not
rounding noise, and every backend returns the reference's.

A zero-initialised last layer gives exactly such a prediction (softmax of equal logits). With DC
in K, |P_k| off DC is then about 1e-17 of |P_0|: without the rule its phase, and with it the
gradient's direction, is noise that differed between backends by 0.1-0.5 (relative).
"""

from __future__ import annotations

import pytest
import torch

from scc_fast import scc_loss

from _helpers import TOL as _TOL, rel_err
from _models import backend_params

# 2D and 3D, odd and even sizes; small, as backend "triton" runs under the interpreter here.
SHAPES = [(2, 3, 9, 10), (1, 3, 4, 8, 9)]
TOL = _TOL[torch.float32]  # float32 paths against the float64 reference


def _case(shape, activation: str | None, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    b, c, *spatial = shape
    labels = torch.randint(0, c, (b, *spatial), generator=gen)
    if activation is None:  # probabilities, constant per (image, class)
        x = torch.full(shape, 0.3, dtype=torch.float64)
        x[:, 1] = 0.7
    else:  # equal logits: a constant softmax (1 / C) or sigmoid
        x = torch.full(shape, 0.3, dtype=torch.float64)
    # (values that are not dyadic fractions: their transforms leave rounding noise off DC)
    return x, labels


def _loss_and_grad(x, labels, backend, activation, include_dc):
    x = x.clone().requires_grad_(True)
    kwargs = {"softmax": activation == "softmax", "sigmoid": activation == "sigmoid"}
    loss = scc_loss(x, labels, include_dc=include_dc, backend=backend, **kwargs)
    (grad,) = torch.autograd.grad(loss, x)
    return loss.detach(), grad


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("activation", ["softmax", "sigmoid", None])
@pytest.mark.parametrize("include_dc", [True, False], ids=["dc", "no-dc"])
def test_constant_prediction_matches_reference(backend, shape, activation, include_dc):
    x, labels = _case(shape, activation)
    ref_loss, ref_grad = _loss_and_grad(x, labels, "reference", activation, include_dc)
    loss, grad = _loss_and_grad(x.float(), labels, backend, activation, include_dc)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    assert rel_err(loss, ref_loss, floor=1.0) < TOL
    assert rel_err(grad, ref_grad) < TOL
    if include_dc:
        # The point of the rule: the gradient is not zero there (DC carries a field), and it is
        # the same for every voxel of a class, as the DC bin's field and the spatial terms are.
        assert ref_grad.abs().max() > 0
    else:
        # Without DC a constant map's correlations have zero denominators: no gradient at all.
        assert ref_grad.abs().max() == 0


def test_reference_is_the_same_in_float32_and_float64():
    """Rounding noise differs between dtypes; the defined value does not."""
    x, labels = _case(SHAPES[0], "softmax")
    loss64, grad64 = _loss_and_grad(x, labels, "reference", "softmax", True)
    loss32, grad32 = _loss_and_grad(x.float(), labels, "reference", "softmax", True)
    assert rel_err(loss32, loss64, floor=1.0) < TOL
    assert rel_err(grad32, grad64) < TOL


def test_nearly_constant_map_is_not_constant():
    """Above the threshold (1e3 eps^2 of the total energy off DC) a map keeps its spectrum: its
    gradient follows the data, so a sign flip of the perturbation changes it."""
    x, labels = _case(SHAPES[0], "softmax")
    bump = 1e-3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    _, grad_plus = _loss_and_grad(x + bump, labels, "reference", "softmax", True)
    _, grad_minus = _loss_and_grad(x - bump, labels, "reference", "softmax", True)
    assert rel_err(grad_plus, grad_minus) > 1e-2
