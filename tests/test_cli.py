"""The ``scc-fast`` command line without extras, and its errors: one stderr line, exit code 2.

``scc-fast bench`` without matplotlib (a plain ``pip install .``) writes its JSON and Markdown
files, skips the PNG files and says so in one line. Every mistake on the command line is one
line that names the offending value, never a traceback. The tiny cases run in this process
(``--isolation none``) so each test takes about a second.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from scc_fast import available_backends
from scc_fast.cli import CLIError, main

TINY_CASE = ["--cases", "tiny=1x2x8x8", "--backends", "reference", "torch", "--no-compile",
             "--repeats", "1", "--warmup", "0", "--isolation", "none"]
SCALING = ["--sizes-2d", "8", "16", "--sizes-3d", "4", "8"]

# study -> (extra arguments, files it writes)
MODES = {
    "cases": ([], {"results.json", "results.md"}),
    "scaling": (["--scaling", *SCALING], {"scaling.json", "scaling.md"}),
    "timeline": (["--timeline"], {"timeline.json", "timeline.md"}),
    "all": (["--all", *SCALING], {"results.json", "results.md", "scaling.json", "scaling.md",
                                  "timeline.json", "timeline.md"}),
}


@pytest.fixture
def no_matplotlib(monkeypatch):
    """matplotlib made unimportable in this process, as after ``pip install .`` without extras."""
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)


def _told(err: str) -> list[str]:
    """stderr without the ``[bench m:ss]`` progress lines: the lines a user is told something in."""
    return [line for line in err.splitlines() if line.strip() and not line.startswith("[bench ")]


def _files(out: Path) -> set[str]:
    return {p.name for p in out.iterdir() if not p.name.endswith(".tmp")}


@pytest.mark.parametrize("mode", list(MODES))
def test_bench_without_matplotlib_writes_tables_and_one_line(mode, tmp_path, capsys, no_matplotlib):
    extra, expected = MODES[mode]
    out = tmp_path / "out"
    assert main(["bench", *TINY_CASE, *extra, "--out", str(out)]) == 0
    files = _files(out)
    assert expected <= files
    assert not [f for f in files if f.endswith(".png")]
    for name in expected:
        assert (out / name).stat().st_size > 0
        if name.endswith(".json"):
            json.loads((out / name).read_text())
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = _told(err)
    assert len(lines) == 1, err
    assert lines[0].startswith("scc-fast bench:") and "matplotlib" in lines[0]


def test_report_only_without_matplotlib(tmp_path, capsys, no_matplotlib):
    out = tmp_path / "out"
    assert main(["bench", *TINY_CASE, "--out", str(out)]) == 0
    md = (out / "results.md").read_text()
    (out / "results.md").unlink()
    capsys.readouterr()
    assert main(["bench", "--report-only", "--out", str(out)]) == 0
    assert (out / "results.md").read_text() == md
    assert not (out / "cases.png").exists()
    captured = capsys.readouterr()
    assert len(_told(captured.err)) == 1, captured.err
    assert str(out / "results.md") in captured.out


def test_no_plots_without_matplotlib_says_nothing(tmp_path, capsys, no_matplotlib):
    assert main(["bench", *TINY_CASE, "--no-plots", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "results.json").exists()
    assert _told(capsys.readouterr().err) == []


def test_bench_with_matplotlib_still_draws(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    assert main(["bench", *TINY_CASE, "--out", str(tmp_path)]) == 0
    assert (tmp_path / "cases.png").read_bytes()[:4] == b"\x89PNG"
    assert _told(capsys.readouterr().err) == []


# --------------------------------------------------------------------------------------------
# Errors: exit code 2, one line on stderr naming the offending value, nothing written
# --------------------------------------------------------------------------------------------


def _one_error_line(err: str, command: str) -> str:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"scc-fast {command}: error: "), lines[0]
    return lines[0]


@pytest.mark.parametrize(
    "argv, offending",
    [
        (["--cases", "nope"], "nope"),
        (["--cases", "x=1x3"], "x=1x3"),
        (["--cases", "x=1x1x8x8"], "x=1x1x8x8"),
        (["--cases", "0x2x8x8"], "0x2x8x8"),
        (["--backends", "nope"], "nope"),
        (["--backends", "torch", "reference-compiled"], "reference-compiled"),
        (["--repeats", "0"], "--repeats"),
        (["--warmup", "-1"], "--warmup"),
        (["--sizes-2d", "1"], "--sizes-2d"),
        (["--threads", "0"], "--threads"),
        (["--job-timeout", "0"], "--job-timeout"),
    ],
)
def test_bench_argument_errors_are_one_line(argv, offending, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["bench", *argv, "--out", str(out)]) == 2
    assert offending in _one_error_line(capsys.readouterr().err, "bench")
    assert not out.exists()  # checked before anything is measured or written


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_bench_cuda_without_cuda(tmp_path, capsys):
    assert main(["bench", "--device", "cuda", "--out", str(tmp_path / "o")]) == 2
    line = _one_error_line(capsys.readouterr().err, "bench")
    assert "--device cuda" in line and "--device cpu" in line


def test_bench_unavailable_backend(tmp_path, capsys, monkeypatch):
    import scc_fast
    from scc_fast.backends import BackendStatus

    status = dict(available_backends())
    status["native"] = BackendStatus(False, "the native operator was not built\n(simulated, two lines)")
    monkeypatch.setattr(scc_fast, "available_backends", lambda: status)
    assert main(["bench", "--backends", "native", "--out", str(tmp_path / "o")]) == 2
    line = _one_error_line(capsys.readouterr().err, "bench")
    assert "'native'" in line and "not built" in line


@pytest.mark.parametrize("kind", ["empty folder", "missing folder"])
def test_report_only_without_results(kind, tmp_path, capsys):
    out = tmp_path / "o"
    if kind == "empty folder":
        out.mkdir()
    assert main(["bench", "--report-only", "--out", str(out)]) == 2
    assert str(out) in _one_error_line(capsys.readouterr().err, "bench")


@pytest.mark.parametrize("report_only", [False, True])
def test_bench_unwritable_out(report_only, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    out = blocker / "sub"  # below a file: cannot be created, even by root
    argv = ["bench", *TINY_CASE, "--out", str(out)]
    if report_only:
        out = blocker  # a file, not a folder with results
        argv = ["bench", "--report-only", "--out", str(out)]
    assert main(argv) == 2
    assert str(out) in _one_error_line(capsys.readouterr().err, "bench")


def test_bench_out_is_a_file(tmp_path, capsys):
    out = tmp_path / "results"
    out.write_text("")
    assert main(["bench", *TINY_CASE, "--out", str(out)]) == 2
    assert str(out) in _one_error_line(capsys.readouterr().err, "bench")


@pytest.mark.parametrize(
    "argv, offending",
    [
        (["--explain", "--backend", "nope", "--shape", "1,2,8,8", "--device", "cpu"], "nope"),
        (["--explain", "--shape", "1,2,8,8", "--device", "tpu"], "tpu"),
    ],
)
def test_backends_explain_errors(argv, offending, capsys):
    assert main(["backends", *argv]) == 2
    assert offending in _one_error_line(capsys.readouterr().err, "backends")


def test_backends_explain_unavailable_backend(capsys, monkeypatch):
    import scc_fast
    from scc_fast.backends import BackendStatus

    status = dict(available_backends())
    status["native"] = BackendStatus(False, "the native operator was not built (simulated)")
    monkeypatch.setattr(scc_fast, "available_backends", lambda: status)
    assert main(["backends", "--explain", "--backend", "native", "--shape", "1,2,8,8", "--device", "cpu"]) == 2
    assert "'native'" in _one_error_line(capsys.readouterr().err, "backends")


def test_demo_without_nilearn(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "nilearn", None)
    assert main(["demo", "--quick", "--out", str(tmp_path / "d")]) == 2
    line = _one_error_line(capsys.readouterr().err, "demo")
    assert "nilearn" in line and "scc_fast[demo]" in line and "--data synthetic" in line
    assert not (tmp_path / "d").exists()


def test_demo_without_matplotlib(tmp_path, capsys, no_matplotlib):
    assert main(["demo", "--data", "synthetic", "--quick", "--out", str(tmp_path / "d")]) == 2
    line = _one_error_line(capsys.readouterr().err, "demo")
    assert "matplotlib" in line and "scc_fast[demo]" in line
    assert not (tmp_path / "d").exists()


def test_demo_missing_matplotlib_is_still_an_import_error(no_matplotlib):
    from scc_fast.demo.report import require_matplotlib

    with pytest.raises(ImportError, match="matplotlib"):
        require_matplotlib()


@pytest.mark.parametrize(
    "argv, offending",
    [(["--seeds", "0"], "--seeds"), (["--steps", "0"], "--steps"), (["--lambda", "0"], "--lambda"),
     (["--threads", "-1"], "--threads")],
)
def test_demo_argument_errors(argv, offending, tmp_path, capsys):
    assert main(["demo", "--data", "synthetic", *argv, "--out", str(tmp_path / "d")]) == 2
    assert offending in _one_error_line(capsys.readouterr().err, "demo")


def test_demo_unwritable_out(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert main(["demo", "--data", "synthetic", "--out", str(blocker / "d")]) == 2
    assert str(blocker / "d") in _one_error_line(capsys.readouterr().err, "demo")


def test_demo_main_prints_errors_the_same_way(tmp_path, capsys):
    from scc_fast.demo import main as demo_main

    assert demo_main(["--data", "synthetic", "--seeds", "0", "--out", str(tmp_path / "d")]) == 2
    assert "--seeds" in _one_error_line(capsys.readouterr().err, "demo")


def test_benchmark_main_prints_errors_the_same_way(tmp_path, capsys):
    from scc_fast.benchmark import main as bench_main

    assert bench_main(["--cases", "nope", "--out", str(tmp_path / "o")]) == 2
    assert "nope" in _one_error_line(capsys.readouterr().err, "bench")


def test_argparse_usage_errors_are_left_to_argparse(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--device", "gpu"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_cli_error_is_printed_as_one_line(tmp_path, capsys, monkeypatch):
    from scc_fast.benchmark import suite

    def refuses(cfg):
        raise CLIError("first line\nsecond line")

    monkeypatch.setattr(suite, "run_cases", refuses)
    assert main(["bench", *TINY_CASE, "--no-plots", "--out", str(tmp_path)]) == 2
    told = "\n".join(_told(capsys.readouterr().err))  # the progress lines before it left out
    assert "first line second line" in _one_error_line(told, "bench")


def test_bugs_keep_their_traceback(tmp_path, monkeypatch):
    """Only CLIError becomes a one-line message; anything else is a bug and propagates."""
    from scc_fast.benchmark import suite

    def broken(cfg):
        raise ZeroDivisionError("a genuine bug")

    monkeypatch.setattr(suite, "run_cases", broken)
    with pytest.raises(ZeroDivisionError):
        main(["bench", *TINY_CASE, "--no-plots", "--out", str(tmp_path)])


# --------------------------------------------------------------------------------------------
# A plain install: nothing outside torch and numpy on the import or bench path, no cycle
# --------------------------------------------------------------------------------------------

EXTRAS = ("matplotlib", "triton", "pytest", "_pytest", "pytest_benchmark", "hypothesis", "nilearn")


def test_bench_runs_with_every_extra_missing(tmp_path):
    """In a fresh interpreter where every extra raises ImportError: the bench path through
    ``scc_fast.benchmark.main`` (which must not import ``scc_fast.cli``) exits 0 with its tables."""
    out = tmp_path / "out"
    code = textwrap.dedent(f"""
        import json, sys
        for name in {EXTRAS!r}:
            sys.modules[name] = None
        from scc_fast.benchmark import main
        rc = main({[*TINY_CASE, "--out", str(out)]!r})
        print(json.dumps({{"rc": rc, "cli_imported": "scc_fast.cli" in sys.modules}}))
    """)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got == {"rc": 0, "cli_imported": False}
    assert {"results.json", "results.md"} <= _files(out) and not (out / "cases.png").exists()
    assert len(_told(proc.stderr)) == 1, proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_import_loads_no_extra():
    code = ("import sys; from scc_fast.cli import build_parser; build_parser(); "
            f"print(sorted(m for m in {EXTRAS!r} if m in sys.modules and m != 'triton'))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
