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
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYTHON = os.environ.get("SCC_FAST_TRITON36_PYTHON", "").strip()

pytestmark = pytest.mark.skipif(not PYTHON, reason="SCC_FAST_TRITON36_PYTHON not set (.ci/run sets it)")


def _run(code: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([PYTHON, "-c", code], env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_the_python_has_triton_3_6():
    proc = _run("import triton; print(triton.__version__)", timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().startswith("3.6."), proc.stdout


@pytest.mark.parametrize("module", ["test_triton_3d", "test_triton_fft", "test_reduction"])
def test_kernels_compile_with_triton_3_6(module):
    source = (ROOT / "tests" / f"{module}.py").read_text()
    script = source.split('_AOT_SCRIPT = r"""', 1)[1].split('"""', 1)[0]
    proc = _run(script)
    assert proc.returncode == 0 and "compiled" in proc.stdout, proc.stderr[-3000:]
