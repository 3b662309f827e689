"""Build script. Pure-Python package metadata lives in pyproject.toml; this file exists for the
optional native operator in csrc/ (``scc_fast._C``), which needs torch's C++ extension machinery.

The operator is built when torch is importable at build time (``pip install --no-build-isolation``,
so the torch already installed is used and no other is fetched) and a C++ compiler exists.
Otherwise the package installs without it and backend "native" says why it is missing.
``SCC_FAST_SKIP_NATIVE=1`` skips it on purpose.
"""

from __future__ import annotations

import glob
import os
import shutil
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))
HOW = "pip install --no-build-isolation -e . (with torch installed and a C++ compiler on PATH)"


def _note(message: str) -> None:
    print(f"scc_fast: {message}", file=sys.stderr)


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++", "cl"):
        if name and shutil.which(name.split()[0]):
            return name
    return None


def native_extension() -> dict:
    """``ext_modules`` and ``cmdclass`` for the native operator, or nothing (with a message why)."""
    if os.environ.get("SCC_FAST_SKIP_NATIVE", "").strip() not in ("", "0"):
        _note("SCC_FAST_SKIP_NATIVE is set: building without the native operator (backend 'native').")
        return {}
    try:
        import torch
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError as exc:
        _note(
            f"torch is not importable at build time ({exc}): building without the native operator "
            f"(backend 'native'). To build it: {HOW}."
        )
        return {}
    if _compiler() is None:
        _note(f"no C++ compiler found (CXX, c++, g++, clang++): building without the native operator. To build it: {HOW}.")
        return {}
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    if sys.platform == "win32":
        cxx = ["/O2", "/openmp", "/std:c++17"]
        ldflags: list[str] = []
    else:
        # -fno-trapping-math lets the selects in the field loop vectorise. -fopenmp: at::parallel_for is inline OpenMP code; without it the passes run on one thread.
        cxx = ["-O3", "-fno-math-errno", "-fno-trapping-math"]
        ldflags = []
        if sys.platform != "darwin" and "OpenMP" in torch.__config__.parallel_info():
            cxx.append("-fopenmp")
            ldflags.append("-fopenmp")
    _note(f"building the native operator scc_fast._C against torch {torch.__version__}.")
    ext = CppExtension(
        "scc_fast._C",
        sources,
        extra_compile_args={"cxx": cxx},
        extra_link_args=ldflags,
    )
    return {"ext_modules": [ext], "cmdclass": {"build_ext": BuildExtension.with_options(no_python_abi_suffix=False)}}


setup(**native_extension())
