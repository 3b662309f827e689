"""Tensor-level memory accounting: the bytes that tensors made under a dispatch mode hold, now and
at the peak, on any device (the allocator's own rounding, caching and workspaces, e.g. cuFFT's,
are not counted).

With a backend's kernels stubbed out (``scc-fast bench host-overhead``'s ``stub_kernels``) this predicts
a GPU call's peak on a CPU: ``scc-fast bench fft-peak`` reproduces GPU run 5's measured peaks of
backend triton_fft at the benchmark cases within 1 MiB. It sees the tensors of Python-level torch calls
only: those made inside a registered custom op's implementation are seen when that implementation
is called directly, not through the op.
"""

from __future__ import annotations

import weakref

import torch
import torch.utils._pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["LiveBytes"]


class LiveBytes(TorchDispatchMode):
    """The bytes of the storages that tensors made under this mode hold, ``now`` and at the
    ``peak`` (storages of the ``external`` tensors, the inputs and their views, are not counted).

    ::

        with torch.no_grad(), LiveBytes(x, labels) as live:
            out = fn(x, labels)
        live.peak  # bytes
    """

    def __init__(self, *external: torch.Tensor):
        super().__init__()
        self.external = {t.untyped_storage().data_ptr() for t in external}
        self.live: dict[int, list[int]] = {}  # storage pointer -> [bytes, tensors referring to it]
        self.now = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in pytree.tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key = storage.data_ptr()
            if key in self.external or storage.nbytes() == 0:
                continue
            if key not in self.live:
                self.live[key] = [storage.nbytes(), 0]
                self.now += storage.nbytes()
                self.peak = max(self.peak, self.now)
            self.live[key][1] += 1
            weakref.finalize(t, self._release, key)
        return out

    def _release(self, key: int) -> None:
        entry = self.live[key]
        entry[1] -= 1
        if entry[1] == 0:
            self.now -= entry[0]
            del self.live[key]
