"""Ahead-of-time compile checks of the Triton kernels: run a test module's ``_AOT_SCRIPT`` (which
compiles kernel variants for sm_90 and prints "compiled") in a fresh process, without the
interpreter, with this checkout on the path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def aot_script(module: str) -> str:
    """The ``_AOT_SCRIPT`` text of ``tests/<module>.py``."""
    source = (ROOT / "tests" / f"{module}.py").read_text()
    return source.split('_AOT_SCRIPT = r"""', 1)[1].split('"""', 1)[0]


def run_python(code: str, python: str = sys.executable, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([python, "-c", code], env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def assert_compiles(script: str, python: str = sys.executable, timeout: int = 900) -> None:
    """Run ``script``; skip where triton has no ptxas (nothing to compile with), else it must print
    "compiled"."""
    proc = run_python(script, python, timeout)
    if proc.returncode != 0 and "ptxas" in proc.stderr and "not found" in proc.stderr.lower():
        pytest.skip("no ptxas in this triton installation")
    assert proc.returncode == 0 and "compiled" in proc.stdout, proc.stderr[-3000:]
