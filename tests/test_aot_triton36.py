"""Every Triton kernel compiles for sm_90 with triton 3.6 too, the oldest triton the project
supports and the one on the GPU machine. The interpreter runs code that a compiler version
rejects, and compilers differ: GPU run 5 found a kernel that triton 3.9 compiled and 3.6 did not.

Runs the ahead-of-time compile scripts of the kernel tests (test_triton_3d, test_triton_fft,
test_reduction) with the Python named by ``SCC_FAST_TRITON36_PYTHON``, which must import triton
3.6 (``.ci/run`` makes a virtual environment with the system's packages and triton==3.6.0).
Skipped when the variable is unset; an error when it names no working triton 3.6.
"""

from __future__ import annotations

import os

import pytest

from _aot import aot_script, assert_compiles, run_python

PYTHON = os.environ.get("SCC_FAST_TRITON36_PYTHON", "").strip()

pytestmark = pytest.mark.skipif(not PYTHON, reason="SCC_FAST_TRITON36_PYTHON not set (.ci/run sets it)")


def test_the_python_has_triton_3_6():
    proc = run_python("import triton; print(triton.__version__)", PYTHON, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().startswith("3.6."), proc.stdout


@pytest.mark.parametrize("module", ["test_triton_3d", "test_triton_fft", "test_reduction"])
def test_kernels_compile_with_triton_3_6(module):
    assert_compiles(aot_script(module), PYTHON)
