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


import pytest  # noqa: E402

from scc_fast import _settings  # noqa: E402


@pytest.fixture(autouse=True)
def _restore_settings():
    """Tests change scc_fast._settings freely (``_settings.update``); each starts from the settings
    in force at collection and leaves them so."""
    with _settings.override():
        yield
