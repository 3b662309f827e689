"""The source distribution carries what building it needs; a wheel installs a working package; the
build script names missing wheel tools."""

from __future__ import annotations

import json
import os
import runpy
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# A copy of the checkout without build outputs: setuptools would otherwise reuse an old
# *.egg-info/SOURCES.txt, and a build in the checkout would leave build/ there.
_SKIP = shutil.ignore_patterns(".git", "*.egg-info", "build", "dist", "__pycache__", "*.so", ".*cache*",
                               ".hypothesis", ".benchmarks", "demo_out", "out", ".venv*")


def _clean_copy(dst: Path) -> Path:
    shutil.copytree(ROOT, dst, ignore=_SKIP)
    return dst


def test_sdist_carries_the_native_sources_and_headers(tmp_path):
    """`pip install` from an sdist builds scc_fast._C from csrc/: every .cpp and .h there must be in
    it (setuptools packs an extension's .cpp sources by itself, not the headers they include), and
    so must the test helpers the packed tests import."""
    src = _clean_copy(tmp_path / "src")
    done = subprocess.run(
        [sys.executable, "setup.py", "-q", "sdist", "--dist-dir", str(tmp_path / "dist")],
        cwd=src, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (tarball,) = (tmp_path / "dist").glob("*.tar.gz")
    with tarfile.open(tarball) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    wanted = {p.relative_to(ROOT).as_posix() for p in (ROOT / "csrc").rglob("*") if p.suffix in (".cpp", ".h")}
    wanted |= {p.relative_to(ROOT).as_posix() for p in (ROOT / "tests").glob("*.py")}
    assert any(w.endswith(".h") for w in wanted)
    assert wanted <= names, f"missing from the sdist: {sorted(wanted - names)}"


# What runs in the installed copy: its location, its data file, its backends, and backend
# triton_fft (every subpackage imported, under the interpreter) against the reference.
_INSTALLED_CHECK = r"""
import json, os, sys
# An editable install of the checkout (CI's) adds an import hook that would find scc_fast._C in
# the checkout for a package that lacks it: this copy is to stand alone.
sys.meta_path = [f for f in sys.meta_path if not str(getattr(f, "__module__", "")).startswith("__editable__")]
import torch
import scc_fast
from scc_fast.backends import dispatch
x = torch.randn(1, 3, 8, 12, 10, generator=torch.Generator().manual_seed(0))
t = torch.randint(0, 3, (1, 8, 12, 10), generator=torch.Generator().manual_seed(1))
fast = scc_fast.scc_loss(x, t, softmax=True, backend="triton_fft")
ref = scc_fast.scc_loss(x.double(), t, softmax=True, backend="reference")
print(json.dumps({
    "file": scc_fast.__file__,
    "table": os.path.isfile(os.path.join(os.path.dirname(dispatch.__file__), "dispatch_table.json")),
    "backends": {k: v.available for k, v in scc_fast.available_backends().items()},
    "native_reason": scc_fast.available_backends()["native"].reason,
    "rel_err": abs(fast.item() - ref.item()) / abs(ref.item()),
}))
"""


def test_wheel_installs_a_working_package(tmp_path):
    """`pip install .` makes a wheel, not the editable install CI tests with: build one (without the
    native operator, which only adds minutes of compiling), install it into an empty folder and use
    it from there, away from the checkout."""
    src = _clean_copy(tmp_path / "src")
    env = {**os.environ, "SCC_FAST_SKIP_NATIVE": "1"}
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-build-isolation", "--no-deps", "-w", str(tmp_path / "dist"), "."],
        cwd=src, env=env, capture_output=True, text=True, timeout=600,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("scc_fast-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        assert "scc-fast = scc_fast.cli:main" in zf.read(entry_points).decode()
    assert "scc_fast/backends/dispatch_table.json" in names
    assert not any(n.startswith("tests/") for n in names), "the tests are not a package to install"
    site = tmp_path / "site"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(site), str(wheel)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    run_env = {**os.environ, "PYTHONPATH": str(site), "TRITON_INTERPRET": "1"}
    used = subprocess.run([sys.executable, "-c", _INSTALLED_CHECK], cwd=tmp_path, env=run_env,
                          capture_output=True, text=True, timeout=600)
    assert used.returncode == 0, used.stderr[-3000:]
    out = json.loads(used.stdout.strip().splitlines()[-1])
    assert Path(out["file"]).is_relative_to(site), out["file"]
    assert out["table"]
    assert out["backends"]["reference"] and out["backends"]["torch"]
    assert not out["backends"]["native"] and "without its native operator" in out["native_reason"]
    if out["backends"]["triton_fft"]:  # triton installed (CI installs the extra)
        assert out["rel_err"] < 1e-5


def _setup_module() -> dict:
    """setup.py's functions, without running setup()."""
    return runpy.run_path(str(ROOT / "setup.py"), run_name="scc_fast_setup")


@pytest.mark.parametrize("command", ["dist_info", "bdist_wheel", "editable_wheel"])
def test_setup_names_missing_wheel_tools(command):
    problem = _setup_module()["wheel_tools_problem"]
    message = problem(["setup.py", command, "--output-dir", "x"], False, "65.5.0")
    assert "setuptools >= 70.1" in message and "'wheel'" in message and "65.5.0" in message
    assert 'pip install "setuptools>=70.1"' in message
    assert problem(["setup.py", command], True, "65.5.0") is None  # wheel installed, or setuptools >= 70.1


@pytest.mark.parametrize("command", ["sdist", "build_ext", "egg_info"])
def test_setup_needs_no_wheel_tools_elsewhere(command):
    assert _setup_module()["wheel_tools_problem"](["setup.py", command], False, "65.5.0") is None


def test_setup_stops_with_the_message_when_wheel_tools_are_missing(tmp_path):
    """setup.py as pip's backend runs it (__main__, a wheel command) where neither setuptools'
    bdist_wheel nor the wheel package can be found: it exits with the message, before building."""
    hide = r"""
import importlib.util, runpy, sys
real = importlib.util.find_spec
importlib.util.find_spec = lambda name, *a: None if name in ("wheel", "setuptools.command.bdist_wheel") else real(name, *a)
sys.argv = ["setup.py", "bdist_wheel"]
runpy.run_path("setup.py", run_name="__main__")
"""
    for name in ("setup.py", "pyproject.toml", "README.md"):  # a build, were it to start, stays in tmp_path
        shutil.copy(ROOT / name, tmp_path / name)
    done = subprocess.run([sys.executable, "-c", hide], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "SCC_FAST_SKIP_NATIVE": "1"})
    assert done.returncode == 1
    assert "building a wheel needs setuptools >= 70.1 or the 'wheel' package" in done.stderr
