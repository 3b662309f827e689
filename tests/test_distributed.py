"""DistributedDataParallel: 2 CPU processes (gloo) train like one process on the whole batch.

Reduction semantics (documented in the README): ``scc_loss(reduction="mean")`` averages the
non-degenerate (image, class) pairs of the batch it is given, so in DDP each rank computes the
mean over *its* pairs and DDP averages the ranks' gradients. With the same number of images
on every rank and no degenerate pair (every class present and not covering the whole image in
every image), each rank has the same number of pairs, and the average of the per-rank means
is exactly the mean over all pairs of the global batch: DDP gives the gradient of the
full-batch loss. The Dice term (mean over pairs) and the cross-entropy term (mean over voxels,
equal voxel counts per rank) of ``DiceCESCCLoss`` behave the same way. With degenerate pairs,
class weights or ``ignore_index`` the per-rank denominators differ and DDP computes the mean
of per-rank means, which is not the global mean (as for any mean-reduced loss under DDP).

The model is float64 and uses GroupNorm (no batch statistics), so the comparison is tight.
"""

from __future__ import annotations

import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import scc_fast
from _helpers import rel_err
from _models import ddp_batch, ddp_worker, make_model

WORLD_SIZE = 2
STEPS = 2


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed with gloo is not available")
@pytest.mark.skipif(sys.platform == "win32", reason="file:// rendezvous and spawn timing are not tested on Windows")
def test_ddp_gradients_equal_single_process_full_batch(tmp_path):
    init_file = tmp_path / "rendezvous"
    mp.spawn(ddp_worker, args=(WORLD_SIZE, str(init_file), str(tmp_path), STEPS), nprocs=WORLD_SIZE, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD_SIZE)]

    # Single process, whole batch, same initialisation and optimiser.
    images, labels = ddp_batch()
    model = make_model()
    loss_fn = scc_fast.DiceCESCCLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(STEPS):
        opt.zero_grad()
        loss_fn(model(images), labels).backward()
        for name, p in model.named_parameters():
            for r, saved in enumerate(ranks):
                err = rel_err(saved["grads"][step][name], p.grad)
                assert err < 1e-10, f"step {step}, rank {r}, {name}: DDP gradient differs from full batch by {err:.2e}"
        opt.step()
    for name, p in model.named_parameters():
        for saved in ranks:
            assert rel_err(saved["params"][name], p) < 1e-10, name
    # Not vacuous: the spectral term contributes to the gradients compared above.
    model.zero_grad()
    scc_fast.scc_loss(model(images), labels, softmax=True).backward()
    assert model.head.weight.grad.abs().max() > 1e-6
