"""Build script. Pure-Python package metadata lives in pyproject.toml; this file exists for the
optional native operator in csrc/ (``scc_fast._C``), which needs torch's C++ extension machinery.

The operator is built when torch is importable at build time (``pip install --no-build-isolation``,
so the torch already installed is used and no other is fetched) and a C++ compiler exists.
Otherwise the package installs without it and backend "native" says why it is missing.
``SCC_FAST_SKIP_NATIVE=1`` skips it on purpose.

A wheel (what ``pip install`` builds, editable or not) needs setuptools >= 70.1 or the ``wheel``
package; with ``--no-build-isolation`` pip uses the ones installed, and a fresh virtual environment
of Python 3.11 holds setuptools 65 without ``wheel``: this script then says so, instead of
setuptools' "invalid command 'bdist_wheel'".
"""

from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import sys

import setuptools
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


# The setup.py commands pip runs to make a wheel (metadata, wheel, editable wheel).
WHEEL_COMMANDS = ("dist_info", "bdist_wheel", "editable_wheel")


def _builds_wheels() -> bool:
    """Whether this setuptools can make a wheel: its own bdist_wheel (70.1 and later) or wheel's."""
    return (
        importlib.util.find_spec("setuptools.command.bdist_wheel") is not None
        or importlib.util.find_spec("wheel") is not None
    )


def wheel_tools_problem(argv: list[str], builds_wheels: bool, setuptools_version: str) -> str | None:
    """The error for a wheel command this setuptools cannot run, or None."""
    if builds_wheels or not any(cmd in argv for cmd in WHEEL_COMMANDS):
        return None
    return (
        f"scc_fast: building a wheel needs setuptools >= 70.1 or the 'wheel' package, and this "
        f"environment has setuptools {setuptools_version} without 'wheel' (with --no-build-isolation "
        f"pip uses the build tools installed, not pyproject.toml's). "
        f'Run `pip install "setuptools>=70.1"`, then install scc_fast again.'
    )


if __name__ == "__main__":  # pip's build backend and `python setup.py ...` run it as __main__
    problem = wheel_tools_problem(sys.argv, _builds_wheels(), setuptools.__version__)
    if problem:
        sys.exit(problem)
    setup(**native_extension())
