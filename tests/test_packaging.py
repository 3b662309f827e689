"""The source distribution carries what building it needs."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_sdist_carries_the_native_sources_and_headers(tmp_path):
    """`pip install` from an sdist builds scc_fast._C from csrc/: every .cpp and .h there must be in
    it (setuptools packs an extension's .cpp sources by itself, not the headers they include), and
    so must the test helpers the packed tests import."""
    # A copy without build outputs: setuptools would otherwise reuse an old *.egg-info/SOURCES.txt.
    src = tmp_path / "src"
    skip = shutil.ignore_patterns(".git", "*.egg-info", "build", "dist", "__pycache__", "*.so", ".*cache*",
                                  ".hypothesis", ".benchmarks", "demo_out", "out")
    shutil.copytree(ROOT, src, ignore=skip)
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
