"""Helpers shared by the reliability tests: backend parametrisation and a tiny UNet.

Not a test module (no ``test_`` prefix); imported by ``test_reliability``, ``test_properties``,
``test_compile`` and ``test_distributed`` (and by the DDP worker processes, which is why the
worker function lives here: ``spawn`` must be able to import it by module name).
"""

from __future__ import annotations

import datetime
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import scc_fast
from scc_fast import backends


# ---------------------------------------------------------------- backends


def backend_params(*, exclude: tuple[str, ...] = ()) -> list:
    """One ``pytest.param`` per registered backend, skipped (with the reason) where unavailable."""
    params = []
    for name, status in scc_fast.available_backends().items():
        if name in exclude:
            continue
        marks = () if status.available else pytest.mark.skip(reason=f"backend {name!r} unavailable: {status.reason}")
        params.append(pytest.param(name, marks=marks, id=name))
    return params


def require_supported(name: str, probs: torch.Tensor, target: torch.Tensor) -> None:
    """Skip the test when backend ``name`` declares it does not support these tensors.

    ``probs``/``target`` are what the backend receives (after the activation, float32/float64).
    """
    reason = backends.load(name).unsupported_reason(probs, target)
    if reason is not None:
        pytest.skip(f"backend {name!r} does not support this input: {reason}")


def backend_input(input: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The (probs, target) pair the public API hands the backend for ``input``/``target``."""
    probs = input.detach() if input.dtype == torch.float64 else input.detach().float()
    if not target.is_floating_point() and target.dim() == input.dim():
        target = target.squeeze(1)
    elif target.is_floating_point():
        target = target.to(probs.dtype)
    return probs, target


# ---------------------------------------------------------------- a small UNet


class _Block(nn.Sequential):
    def __init__(self, c_in: int, c_out: int) -> None:
        # GroupNorm, not BatchNorm: batch statistics would differ between one process and the
        # per-rank halves of DDP, and the DDP test checks exact equality of gradients.
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, padding=1),
            nn.GroupNorm(2, c_out),
            nn.ReLU(),
            nn.Conv2d(c_out, c_out, 3, padding=1),
            nn.ReLU(),
        )


class SmallUNet(nn.Module):
    """Two-level 2D UNet: B x in_channels x H x W -> B x num_classes x H x W logits (H, W even)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 3, width: int = 4) -> None:
        super().__init__()
        self.enc = _Block(in_channels, width)
        self.mid = _Block(width, 2 * width)
        self.up = nn.ConvTranspose2d(2 * width, width, 2, stride=2)
        self.dec = _Block(2 * width, width)
        self.head = nn.Conv2d(width, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.enc(x)
        mid = self.mid(F.max_pool2d(skip, 2))
        return self.head(self.dec(torch.cat([self.up(mid), skip], dim=1)))


def ddp_batch(batch: int = 4, size: int = 16, classes: int = 3, dtype=torch.float64):
    """Deterministic images and labels in which every class is present in every image.

    Every (image, class) pair is non-degenerate, the condition under which the DDP average of
    per-rank means equals the full-batch mean (see ``test_distributed``).
    """
    g = torch.Generator().manual_seed(1234)
    images = torch.randn(batch, 1, size, size, generator=g, dtype=dtype)
    labels = torch.randint(0, classes, (batch, size, size), generator=g)
    for c in range(classes):  # make sure each class has at least one voxel in each image
        labels[:, c, 0] = c
    return images, labels


def make_model(dtype=torch.float64) -> SmallUNet:
    torch.manual_seed(0)
    return SmallUNet().to(dtype)


def ddp_worker(rank: int, world_size: int, init_file: str, out_dir: str, steps: int) -> None:
    """One DDP rank: train ``steps`` SGD steps on its half of :func:`ddp_batch`, save gradients."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(1)
    # A bounded timeout: a rank that fails must not leave the other waiting for gloo's default 30 min.
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=120))
    try:
        images, labels = ddp_batch()
        per_rank = images.shape[0] // world_size
        mine = slice(rank * per_rank, (rank + 1) * per_rank)
        model = DDP(make_model())
        loss_fn = scc_fast.DiceCESCCLoss()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        grads = []
        for _ in range(steps):
            opt.zero_grad()
            loss_fn(model(images[mine]), labels[mine]).backward()
            grads.append({n: p.grad.detach().clone() for n, p in model.module.named_parameters()})
            opt.step()
        torch.save(
            {"grads": grads, "params": {n: p.detach().clone() for n, p in model.module.named_parameters()}},
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
        # Both ranks done before either tears its pairs down: a rank exiting while its peer still
        # used the connection was seen once to abort (SIGABRT, "terminate called without an
        # active exception") in a full CI run.
        dist.barrier()
    finally:
        dist.destroy_process_group()
