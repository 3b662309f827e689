"""``scc-fast bench derived-accuracy``: accuracy of backend triton_fft's derived class 0 against transforming every class, as class 0's
share of the probability mass shrinks (CPU, Triton interpreter; about a second a row).

Class 0's spectrum is the other classes' summed (their maps sum to one under the softmax), so their
float32 rounding lands on it; with ``validate=True`` (labels checked in range) the target's class 0
spectrum is derived the same way. For logits N(0, 2^2) with class 0's shifted and labels uniform
over the classes (``--labels uniform``) or drawn from the softmax's probabilities at each voxel
(``--labels sampled``: class 0 as rare in the target as in the prediction), this prints the relative
error of the loss (the mean of 1 - SCC over the valid pairs) and of its gradient by the logits
against the float64 reference: P and Y of class 0 derived (validate=True) / P derived / every class
transformed.

    scc-fast bench derived-accuracy                 # 2 x 4 x 16^3
    scc-fast bench derived-accuracy --labels sampled
    scc-fast bench derived-accuracy --shape 1x3x32x32

(Before the harness: ``bench/derived_class_accuracy.py``.)
"""

from __future__ import annotations

import argparse
import os

from ..errors import CLIError
from ._common import shape_arg


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shape", type=lambda s: shape_arg(s, min_channels=2), default=(2, 4, 16, 16, 16),
                   help="BxCxHxW or BxCxDxHxW, C >= 2")
    p.add_argument("--shifts", default="0,-3,-6,-9,4", help="comma-separated, added to class 0's logits")
    p.add_argument("--labels", choices=("uniform", "sampled"), default="uniform",
                   help="labels uniform over the classes, or drawn from the softmax at each voxel")


def rel(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def run(args: argparse.Namespace) -> int:
    try:
        shifts = [float(v) for v in args.shifts.split(",")]
    except ValueError:
        raise CLIError(f"--shifts: expected comma-separated numbers like 0,-3,4, got {args.shifts!r}") from None
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported: the kernels take CPU tensors
    import torch

    from scc_fast.backends import triton_fft
    from scc_fast.backends.activation import _activation_backward
    from scc_fast.reference import reference_correlation

    shape = tuple(args.shape)
    print("| class 0 shift | class 0 mean p | class 0 labels | loss P, Y derived / P derived / all | "
          "gradient P, Y derived / P derived / all |")
    print("|---|---|---|---|---|")
    for shift in shifts:
        g = torch.Generator().manual_seed(7)
        logits = torch.randn(shape, generator=g, dtype=torch.float64) * 2
        logits[:, 0] += shift
        logits = logits.float().double()  # the reference sees the float32 logits the kernels read
        labels = torch.randint(0, shape[1], (shape[0],) + shape[2:], generator=g)
        if args.labels == "sampled":
            p = torch.softmax(logits, 1).movedim(1, -1).reshape(-1, shape[1])
            labels = torch.multinomial(p, 1, generator=g).view(labels.shape)
        x = logits.clone().requires_grad_(True)
        ref, valid = reference_correlation(torch.softmax(x, 1), labels)
        n_valid = valid.sum()
        ref_loss = ((1 - ref) * valid).sum() / n_valid
        (ref_dx,) = torch.autograd.grad(ref_loss, x)
        errs = []
        for derive, validate in ((True, True), (True, False), (False, False)):
            scc, _, field = triton_fft._forward(logits.float(), labels, 0, False, 0.5, 0.5, True, activation=1,
                                                derive_first=derive, validate=validate)
            upstream = torch.full(shape[:2], -1.0 / n_valid.item())  # the mean's, uniform
            dx = _activation_backward(logits.float(), field, upstream, labels, 1, 0, None, True)
            loss = ((1 - scc.double()) * valid).sum() / n_valid
            errs.append((rel(loss, ref_loss.detach()), rel(dx, ref_dx)))
        share = torch.softmax(logits, 1)[:, 0].mean().item()
        label_share = (labels == 0).double().mean().item()
        losses = " / ".join(f"{e[0]:.1e}" for e in errs)
        grads = " / ".join(f"{e[1]:.1e}" for e in errs)
        print(f"| {shift:+.0f} | {share:.2%} | {label_share:.2%} | {losses} | {grads} |")
    return 0
