"""Test configuration shared by every test module.

Triton kernels run on CPU tensors only under its interpreter, and TRITON_INTERPRET must be set
before triton (or any kernel module) is first imported, so it is set here, at collection time.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Tests pick backends explicitly; an override in the caller's environment must not leak in.
os.environ.pop("SCC_FAST_BACKEND", None)
