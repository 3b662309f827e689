"""The benchmark suite's own logic (``scc-fast bench``): tiny shapes, one repeat, files checked.

These check that the suite measures, reports and fails the way it says; they time nothing.
"""

from __future__ import annotations

import json
import math
import os
import random

import pytest
import torch

from scc_fast import available_backends
from scc_fast.benchmark import main
from scc_fast.benchmark import measure
from scc_fast.benchmark.cases import Case, default_cases, parse_case
from scc_fast.benchmark.report import fit_exponent

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY = ["--repeats", "1", "--warmup", "1", "--isolation", "none"]


def _png(path) -> bool:
    return path.exists() and path.read_bytes()[:8] == PNG_MAGIC


def test_cases_in_process_writes_json_markdown_png(tmp_path, capsys):
    rc = main(["--cases", "tiny2d=1x3x16x16", "tiny3d=1x2x8x8x6", "--backends", "reference", "torch",
               "--no-compile", *TINY, "--out", str(tmp_path)])
    assert rc == 0
    data = json.loads((tmp_path / "results.json").read_text())
    rows = {(r["case"]["name"], r["label"]): r for r in data["rows"]}
    assert set(rows) == {(c, b) for c in ("tiny2d", "tiny3d") for b in ("reference", "torch")}
    for (case, label), r in rows.items():
        assert r["status"] == "ok", r.get("reason")
        assert set(r["time"]) == {"fwd", "fwdbwd"} and r["time"]["fwdbwd"]["n"] == 1
        assert r["time"]["fwdbwd"]["median_ms"] > 0
        assert r["memory"]["fwdbwd"]["peak_bytes"] is not None
        # the same loss from every backend, and ratios against the reference of the same run
        assert r["derived"]["loss_rel_diff"] < 1e-5
        if label == "reference":
            assert r["derived"]["speedup"]["fwdbwd"] == pytest.approx(1.0)
    assert data["meta"]["labels"] == ["reference", "torch"]
    assert "reference-compile" in data["meta"]["left_out"]
    md = (tmp_path / "results.md").read_text()
    for word in ("tiny2d", "tiny3d", "| reference |", "| torch |", "1x3x16x16 (custom shape)", "torch 2."):
        assert word in md
    assert _png(tmp_path / "cases.png")
    assert "| torch |" in capsys.readouterr().out  # the table is printed too

    # --report-only rebuilds the Markdown and plot from the JSON
    (tmp_path / "results.md").unlink()
    (tmp_path / "cases.png").unlink()
    assert main(["--report-only", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "results.md").read_text() == md
    assert _png(tmp_path / "cases.png")


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc for the CPU peak")
def test_cases_fresh_process_per_row_measures_rss(tmp_path):
    rc = main(["--cases", "p=1x3x96x96", "--backends", "torch", "--no-compile", "--repeats", "1",
               "--warmup", "1", "--isolation", "process", "--no-plots", "--out", str(tmp_path)])
    assert rc == 0
    data = json.loads((tmp_path / "results.json").read_text())
    assert [r["label"] for r in data["rows"]] == ["reference", "torch"]
    for r in data["rows"]:
        assert r["status"] == "ok", r.get("reason")
        assert "rss_after_inputs_bytes" in r and r["ru_maxrss_bytes"] > r["rss_after_inputs_bytes"] // 2
        # the reference materialises complex spectra of 3 x 96 x 96: well above a page or two
        if r["label"] == "reference":
            assert r["memory"]["fwdbwd"]["peak_bytes"] > 3 * 96 * 96 * 8
            # the first call of a fresh process: one-time costs on top of the steady-state peak
            assert r["first_call_peak_bytes"] > 3 * 96 * 96 * 8
    assert not (tmp_path / "cases.png").exists()


def test_compile_failure_is_reported_not_fatal(tmp_path, monkeypatch):
    def broken_compile(*args, **kwargs):
        raise RuntimeError("no C++ compiler found (simulated)")

    monkeypatch.setattr(torch, "compile", broken_compile)
    rc = main(["--cases", "t=1x2x8x8", "--backends", "reference", "reference-compile", *TINY, "--out", str(tmp_path)])
    assert rc == 0
    rows = {r["label"]: r for r in json.loads((tmp_path / "results.json").read_text())["rows"]}
    assert rows["reference"]["status"] == "ok"
    assert rows["reference-compile"]["status"] == "failed"
    assert "no C++ compiler found" in rows["reference-compile"]["reason"]
    assert "reference-compile on t: failed: RuntimeError: no C++ compiler found" in (tmp_path / "results.md").read_text()


def test_time_budget_skips_rows_with_reason(tmp_path):
    rc = main(["--cases", "t=1x2x8x8", "--backends", "torch", "--no-compile", *TINY, "--time-budget", "0",
               "--no-plots", "--out", str(tmp_path)])
    assert rc == 0
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert all(r["status"] == "skipped" and "time budget" in r["reason"] for r in rows)


def test_scaling_fits_and_plots(tmp_path, capsys):
    rc = main(["--scaling", "--backends", "torch", "--sizes-2d", "8", "16", "32", "64", "--sizes-3d", "4", "8",
               *TINY, "--out", str(tmp_path)])
    assert rc == 0
    data = json.loads((tmp_path / "scaling.json").read_text())
    assert {(p["ndim"], p["label"]) for p in data["points"]} == {(d, b) for d in (2, 3) for b in ("reference", "torch")}
    assert all(p["status"] == "ok" for p in data["points"])
    fits = {(f["ndim"], f["label"]): f for f in data["fits"]}
    assert math.isfinite(fits[(2, "torch")]["time"]["exponent"])
    assert fits[(2, "torch")]["time_large"] is not None  # 4 sizes: the upper half is fitted too
    assert fits[(3, "torch")]["time_large"] is None
    assert "growth exponents" in capsys.readouterr().out
    assert _png(tmp_path / "scaling.png")
    assert "time exponent" in (tmp_path / "scaling.md").read_text()


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc for the CPU timeline")
def test_timeline_cpu_phases(tmp_path):
    rc = main(["--timeline", "--cases", "t=1x3x64x64", "--backends", "torch", "--isolation", "none",
               "--out", str(tmp_path)])
    assert rc == 0
    data = json.loads((tmp_path / "timeline.json").read_text())
    assert [r["label"] for r in data["rows"]] == ["reference", "torch"]
    for r in data["rows"]:
        assert r["status"] == "ok", r.get("reason")
        assert [p["phase"] for p in r["phases"]] == ["inputs", "forward", "backward", "freed"]
        assert r["phases"][0]["hwm_bytes"] >= 3 * 64 * 64 * 4  # the logits alone
    assert _png(tmp_path / "timeline.png")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--cases", "nope"], "--cases entries must be one of"),
        (["--cases", "x=1x3"], "--cases entries must be one of"),
        (["--cases", "x=1x1x8x8"], "C >= 2"),
        (["--backends", "nope"], "unknown backend 'nope'"),
        (["--repeats", "0"], "--repeats must be >= 1"),
        (["--sizes-2d", "1"], "--sizes-2d sizes must be >= 2"),
        (["--threads", "0"], "--threads must be >= 1"),
        (["--device", "gpu"], "invalid choice"),
    ],
)
def test_argument_errors(tmp_path, capsys, argv, message):
    assert _exit_code([*argv, "--out", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err


def _exit_code(argv) -> int:
    """main's exit code: returned for the suite's own checks (CLIError), SystemExit for argparse's."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_cuda_requested_without_cuda(tmp_path, capsys):
    assert _exit_code(["--device", "cuda", "--out", str(tmp_path)]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_unavailable_backend_requested_is_an_error(tmp_path, capsys, monkeypatch):
    import scc_fast
    from scc_fast.backends import BackendStatus

    status = dict(available_backends())
    status["native"] = BackendStatus(False, "the native operator was not built (simulated)")
    monkeypatch.setattr(scc_fast, "available_backends", lambda: status)
    assert _exit_code(["--backends", "native", "--out", str(tmp_path)]) == 2
    assert "backend 'native' is not available here: the native operator was not built" in capsys.readouterr().err


def test_report_only_needs_results(tmp_path, capsys):
    assert _exit_code(["--report-only", "--out", str(tmp_path)]) == 2
    assert "no results.json" in capsys.readouterr().err


def test_fit_exponent_on_synthetic_power_laws():
    rng = random.Random(0)
    n = [64**2, 128**2, 256**2, 512**2, 1024**2]
    exact = fit_exponent(n, [3e-4 * x**1.25 for x in n])
    assert exact["exponent"] == pytest.approx(1.25, abs=1e-12) and exact["r2"] == pytest.approx(1.0)
    noisy = fit_exponent(n, [2.0 * x * math.log(x) * rng.uniform(0.95, 1.05) for x in n])
    assert 1.05 < noisy["exponent"] < 1.2  # N log N grows a little faster than N
    assert fit_exponent(n, [5.0] * 5)["exponent"] == pytest.approx(0.0, abs=1e-12)
    # unusable points are dropped; fewer than two distinct sizes give no fit
    assert fit_exponent([1, 2, 4], [0.0, None, 8.0]) is None
    assert fit_exponent([4, 4], [1.0, 2.0]) is None
    assert fit_exponent([1, 2, 4], [1.0, 0.0, 16.0])["exponent"] == pytest.approx(2.0)


def test_case_scales_are_written_out():
    quick = default_cases("cpu", quick=True)
    assert quick["synapse-2d"].shape == (8, 9, 224, 224)
    assert quick["synapse-2d"].scale == pytest.approx(1 / 3)
    assert quick["synapse-2d"].scale_text == "1/3 of 24x9x224x224: batch 8/24"
    assert quick["brats-3d"].shape == (2, 4, 64, 64, 64)
    assert quick["brats-3d"].scale_text == "1/8 of 2x4x128x128x128: spatial 64x64x64 of 128x128x128"
    full = default_cases("cpu", quick=False)
    assert full["brats-3d-64"].shape == (2, 4, 64, 64, 64)  # issue 2's acceptance shape
    gpu = default_cases("cuda", quick=False)
    assert {c.shape for c in gpu.values()} == {
        (24, 9, 224, 224), (16, 2, 512, 512), (2, 4, 128, 128, 128), (2, 14, 96, 96, 96)}
    assert all(c.scale == 1 and c.scale_text == "full size" for c in gpu.values())
    assert parse_case("polyp-2d", {}) == Case("polyp-2d", (16, 2, 512, 512), "polyp-2d")
    assert parse_case("a=2x3x5x7", {}).shape == (2, 3, 5, 7)
    assert parse_case("2x3x4x5x6", {}).name == "2x3x4x5x6"


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="Linux only")
def test_cpu_high_water_mark_resets():
    assert measure.reset_hwm()
    measure.trim_heap()
    rss0, _ = measure.read_rss()
    big = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    rss1, hwm1 = measure.read_rss()
    assert hwm1 - rss0 >= 60 * 2**20
    del big
    measure.trim_heap()
    assert measure.reset_hwm()
    rss2, hwm2 = measure.read_rss()
    assert hwm2 - rss2 < 8 * 2**20 and hwm1 - hwm2 >= 50 * 2**20


def test_summary_statistics():
    s = measure.summarize([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (s["median_ms"], s["q1_ms"], s["q3_ms"], s["min_ms"], s["max_ms"], s["n"]) == (3.0, 2.0, 4.0, 1.0, 5.0, 5)
    one = measure.summarize([7.0])
    assert one["median_ms"] == one["q1_ms"] == one["q3_ms"] == 7.0


def _fake_row(case: Case, label: str, ms: float, peak: int, device: str = "cuda") -> dict:
    t = measure.summarize([ms, ms * 1.1, ms * 0.9])
    return {"case": case.as_dict(), "label": label, "device": device, "status": "ok", "shape": list(case.shape),
            "time": {"fwd": t, "fwdbwd": t}, "memory": {"fwd": {"peak_bytes": peak}, "fwdbwd": {"peak_bytes": peak}},
            "loss": 0.5}


def test_gpu_bandwidth_roofline_and_ratios_from_synthetic_rows(tmp_path):
    from scc_fast.benchmark.report import add_derived, cases_markdown, plot_cases

    case = default_cases("cuda", quick=False)["synapse-2d"]
    rows = [_fake_row(case, "reference", 20.0, 800 * 2**20), _fake_row(case, "reference-compile", 10.0, 400 * 2**20),
            _fake_row(case, "triton", 2.0, 100 * 2**20),
            {"case": case.as_dict(), "label": "native", "device": "cuda", "status": "unsupported",
             "reason": "RuntimeError: backend 'native' was asked for but cannot run: CPU only", "time": {}, "memory": {}}]
    meta = {"device": "cuda", "device_name": "Fake H100", "copy_bandwidth": {"GBps": 3000.0, "method": "copy"},
            "repeats": 3, "warmup": 1}
    add_derived(rows, meta)
    d = rows[2]["derived"]
    assert d["speedup"]["fwdbwd"] == pytest.approx(10.0)
    assert d["speedup_vs_compiled"]["fwdbwd"] == pytest.approx(5.0)
    assert d["memory_ratio"]["fwdbwd"] == pytest.approx(8.0)
    n = 24 * 224 * 224
    moved = 2 * (9 * n * 4) + n * 8  # logits read + gradient written (float32) + int64 labels read
    assert d["bytes_moved"]["fwdbwd"] == moved
    assert d["GBps"]["fwdbwd"] == pytest.approx(moved / 2e-3 / 1e9)
    assert d["roofline"]["fwdbwd"] == pytest.approx(moved / 2e-3 / 1e9 / 3000.0)
    md = cases_markdown({"meta": meta, "rows": rows})
    assert "% of copy BW" in md and "Fake H100" in md and "3000 GB/s" in md
    assert f"{100 * d['roofline']['fwdbwd']:.1f}%" in md
    assert "native on synapse-2d: unsupported: RuntimeError: backend 'native'" in md
    assert "24x9x224x224 (full size)" in md
    assert _png(plot_cases({"meta": meta, "rows": rows}, tmp_path / "c.png"))


def test_cuda_style_timeline_plots(tmp_path):
    from scc_fast.benchmark.report import plot_timeline, timeline_markdown

    case = Case("t", (1, 2, 8, 8))
    rows = [{"label": "reference", "status": "ok", "allocated_bytes": [2**20, 3 * 2**20, 2**20, 0],
             "forward_end_index": 2, "peak_bytes": 3 * 2**20},
            {"label": "triton", "status": "ok", "allocated_bytes": [2**20, 0], "forward_end_index": 1,
             "peak_bytes": 2**20},
            {"label": "triton_fft", "status": "failed", "reason": "OutOfMemoryError: ..."}]
    data = {"meta": {"device": "cuda", "device_name": "Fake"}, "case": case.as_dict(), "rows": rows}
    assert _png(plot_timeline(data, tmp_path / "t.png"))
    md = timeline_markdown(data)
    assert "reference: peak 3.0 MiB above the inputs over 4 allocator events" in md
    assert "triton_fft: failed: OutOfMemoryError" in md


def _run_mode_in_subprocess(mode, *args):
    """``scc-fast bench MODE ARGS`` in a fresh process: for the modes that stub the Triton kernels
    for the rest of their process (host-overhead, fft-peak)."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "scc_fast.cli", "bench", mode, *args], capture_output=True,
                          text=True, timeout=300)


def test_bench_help_lists_every_mode(capsys):
    """``scc-fast bench --help`` names every mode with its one line; each mode's --help works."""
    from scc_fast.benchmark import STUDIES
    from scc_fast.benchmark.modes import MODES
    from scc_fast.cli import main as cli_main

    with pytest.raises(SystemExit) as done:
        cli_main(["bench", "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for name, help_text in [*STUDIES.items(), *((n, h) for n, (_, h) in MODES.items())]:
        assert f"{name} {' '.join(help_text.split())}" in text, name
    for name in [*STUDIES, *MODES]:
        with pytest.raises(SystemExit) as done:
            cli_main(["bench", name, "--help"])
        assert done.value.code == 0, name
        assert f"usage: scc-fast bench {name}" in capsys.readouterr().out


def test_bench_help_imports_no_mode():
    """The modes are imported when named: ``scc-fast bench --help`` loads none of them."""
    import subprocess
    import sys

    code = ("import sys, contextlib, io\nfrom scc_fast.cli import main\n"
            "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n    main(['bench', '--help'])\n"
            "print(sorted(m for m in sys.modules if m.startswith('scc_fast.benchmark.modes.') or m == 'triton'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


def test_bench_folder_holds_only_the_gpu_call_the_suite_and_the_journal():
    """Every benchmark is a mode of ``scc-fast bench``: bench/ keeps the prepared GPU call, the
    pytest-benchmark suite and RESULTS.md with its result folders; gpu_run.sh calls the harness,
    every mode it names exists."""
    import re
    from pathlib import Path

    from scc_fast.benchmark import STUDIES
    from scc_fast.benchmark.modes import MODES

    bench = Path(__file__).resolve().parents[1] / "bench"
    extra = [f.name for f in bench.iterdir() if not (
        f.name in ("gpu_run.sh", "conftest.py", "RESULTS.md", "__pycache__") or (f.is_dir() and f.name == "results")
        or re.fullmatch(r"test_.*\.py", f.name))]
    assert not extra, extra
    script = (bench / "gpu_run.sh").read_text()
    assert "python3 " not in script.replace('BENCH="python3 -m scc_fast.cli bench"', "").replace(
        "python3 -m scc_fast.cli backends", "").replace("python3 -c", ""), "gpu_run.sh runs something besides the harness"
    named = set(re.findall(r"\$BENCH ([a-z][a-z0-9-]*)", script)) | set(re.findall(r"^  step ([a-z]+) ", script, re.M))
    assert named and named <= {*MODES, *STUDIES}, named - {*MODES, *STUDIES}


def test_smoke_runs_choose_the_triton_interpreter(monkeypatch):
    """A --smoke run without CUDA sets TRITON_INTERPRET itself (before the backends import triton)."""
    from scc_fast.benchmark.modes._common import interpreter_for_smoke

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    interpreter_for_smoke(False)
    assert "TRITON_INTERPRET" not in os.environ
    interpreter_for_smoke(True)
    assert os.environ["TRITON_INTERPRET"] == ("1" if not torch.cuda.is_available() else os.environ["TRITON_INTERPRET"])


def test_time_steps_rounds_blocks_and_alternation():
    """The one timing loop: warm-up calls, an untimed call before each block, the order reversed
    every other round with alternate, one sample (the block's median) per round and clock."""
    calls = []
    steps = {n: (lambda n=n: calls.append(n)) for n in "ab"}
    ms = measure.time_steps(steps, repeats=3, warmup=1, block=2, untimed_first=True, alternate=True,
                            clocks=("wall", "host"), before_block=lambda n: calls.append(n.upper()))
    assert calls == ["a", "b"] + ["A", "a", "a", "a", "B", "b", "b", "b"] + ["B", "b", "b", "b", "A", "a", "a", "a"] \
        + ["A", "a", "a", "a", "B", "b", "b", "b"]
    assert set(ms) == {"a", "b"} and all(len(v) == 3 and min(v) >= 0 for c in ms.values() for v in c.values())
    with pytest.raises(ValueError, match="events on CUDA only"):
        measure.time_steps(steps, repeats=1, clocks=("events",))


def test_gpu_profile_mode_dry_run_on_cpu(tmp_path):
    """scc-fast bench profile (a stage of the prepared GPU call) runs end to end on CPU: a row per
    backend with step/host times, the validate=True time and the profiler's host table."""
    wanted = ["reference", "torch"] + (["native"] if available_backends()["native"].available else [])
    if available_backends()["triton_fft"].available:
        wanted += ["triton_fft", "triton_fft:all-classes"]  # and a row with a setting changed
    assert main(["profile", "--smoke", "--device", "cpu", "--cases", "smoke-2d", "--reps", "2",
                 "--backends", ",".join(wanted), "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "results.json").read_text())
    assert [r["backend"] for r in data["rows"]] == wanted and not data["skipped"]
    for r in data["rows"]:
        assert "error" not in r, r
        assert r["step_ms"] > 0 and 0 < r["host_ms"] <= r["step_ms"] and r["step_ms_validate"] > 0
        assert r["gpu_ms"] is None  # no CUDA events on CPU
        table = (tmp_path / f"profile_smoke-2d_{r['backend'].replace(':', '-')}.txt").read_text()
        assert "Top ops by host time" in table
    md = (tmp_path / "results.md").read_text()
    assert "| smoke-2d | torch |" in md and data["environment"]["card"] == "CPU (dry run)"
    env = data["environment"]
    assert env["command"].startswith("scc-fast bench profile --smoke") and env["commit"] and env["date"]
    # Host time per launch: a torch op, and two Triton kernels where triton_fft runs (interpreter).
    names = ["torch.add"] + (["triton 6 args (_narrow_labels_kernel)", "triton 21 args (_activated_moments_kernel)"]
                             if available_backends()["triton_fft"].available else [])
    assert list(data["launch_us"]) == names and all(v > 0 for v in data["launch_us"].values()), data["launch_us"]
    assert "Host time per launch" in md


def test_gpu_profile_mode_refuses_bad_arguments(tmp_path, capsys):
    assert main(["profile", "--smoke", "--device", "cpu", "--backends", "torch,nope", "--out", str(tmp_path)]) == 2
    assert "unknown backends ['nope']" in capsys.readouterr().err
    assert main(["profile", "--smoke", "--device", "cpu", "--cases", "brats-3d", "--out", str(tmp_path)]) == 2
    assert "unknown cases ['brats-3d']" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["profile", "--out", str(tmp_path)]) == 2
        assert "no CUDA device" in capsys.readouterr().err


def _assert_budget_and_refusal(mode, tmp_path, n_rows, capsys):
    """A tuning mode with no time budget lists all its rows as skipped; without CUDA and --smoke
    it refuses."""
    assert main([mode, "--smoke", "--budget", "0", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert len(rows) == n_rows and all("time budget" in r["skipped"] for r in rows), rows
    if not torch.cuda.is_available():
        capsys.readouterr()
        assert main([mode, "--out", str(tmp_path)]) == 2
        assert "no CUDA device" in capsys.readouterr().err


@pytest.mark.slow
def test_gpu_tune_mode_dry_run_on_cpu(tmp_path, capsys):
    """scc-fast bench tune (a stage of the prepared GPU call) runs on CPU under the interpreter:
    the 3D path under its first two configurations and each 2D mode's default are timed and agree
    with the case's first row; rows past the budget are listed as skipped; without CUDA and
    --smoke it refuses."""
    pytest.importorskip("triton")
    from scc_fast.backends import triton_scc

    blocks = dict(triton_scc.GPU_BLOCKS)
    assert main(["tune", "--smoke", "--configs", "4", "--reps", "1", "--out", str(tmp_path)]) == 0
    assert triton_scc.GPU_BLOCKS == blocks  # the defaults are back
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [(r["mode"], r["case"]) for r in rows] == [
        ("3d", "smoke-3d"), ("3d", "smoke-3d"), ("fused", "smoke-2d"), ("split", "smoke-2d")], rows
    for r in rows:
        assert r["ms"] > 0 and r["rel_diff_loss"] <= 1e-5 and r["rel_diff_grad"] <= 1e-5, r
    assert "| smoke-2d | split | 32, 32, 32 | 4 | 2 | 2 |" in (tmp_path / "results.md").read_text()
    _assert_budget_and_refusal("tune", tmp_path, 8, capsys)


def test_gpu_stage1_tune_mode_dry_run_on_cpu(tmp_path, capsys):
    """scc-fast bench stage1-tune (a stage of the prepared GPU call) runs on CPU under the
    interpreter: each configuration's step runs and agrees with the first row, the kernel time is
    left out off CUDA, rows past the budget are listed as skipped; without CUDA and --smoke it
    refuses."""
    pytest.importorskip("triton")
    from scc_fast import _settings

    before = _settings.current()
    assert main(["stage1-tune", "--smoke", "--configs", "2", "--reps", "1", "--out", str(tmp_path)]) == 0
    assert _settings.current() == before
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [(r["values"], r["warps"], r["channel_threads"]) for r in rows] == [(1024, 8, False), (1024, 8, True)], rows
    for r in rows:
        assert r["ms"] > 0 and r["kernel_us"] is None and r["rel_diff_loss"] <= 1e-6 and r["rel_diff_grad"] <= 1e-6, r
    assert "| smoke-3d | 1024 | 8 | yes | - |" in (tmp_path / "results.md").read_text()
    _assert_budget_and_refusal("stage1-tune", tmp_path, 11, capsys)


@pytest.mark.slow
def test_host_overhead_mode_counts_a_steps_ops_and_launches(tmp_path, capsys):
    """scc-fast bench host-overhead times a triton_fft step with its kernels stubbed and counts
    what the host issues. The counts are the step's host work (GPU run 5: the eager step is
    host-bound): a change that adds torch ops or launches to it fails here and has to say why."""
    pytest.importorskip("triton")
    done = _run_mode_in_subprocess("host-overhead", "--steps", "5", "--repeats", "1", "--warmup", "2",
                                   "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    r = json.loads((tmp_path / "results.json").read_text())
    assert r["backend"] == "triton_fft" and r["shape"] == [1, 3, 4, 4, 4] and r["host_us"][0] > 0
    assert r["command"].startswith("scc-fast bench host-overhead") and r["commit"]
    # Stage 1, spectral sums, pair kernel, field kernel (softmax over every channel and the mean:
    # class 0 derived from the others), activation backward (the reduction's kernel runs on CUDA
    # only); two forward transforms and one inverse.
    assert r["kernel_launches_by_name"] == {name: 1 for name in (
        "_activated_moments_kernel", "_activation_backward_kernel", "_derived_field_kernel", "_pair_kernel",
        "_derived_stats_kernel")}
    assert r["torch_ops_by_name"]["aten::fft_rfftn"] == 2 and r["torch_ops_by_name"]["aten::fft_irfftn"] == 1
    assert r["torch_ops"] <= 26, r["torch_ops_by_name"]
    assert "select" not in " ".join(r["torch_ops_by_name"])  # sizes come from shapes, not x[0, 0]

    # The reduction as on CUDA: one more (stubbed) launch instead of its torch ops.
    cuda = _run_mode_in_subprocess("host-overhead", "--cuda-reduction", "--steps", "5", "--repeats", "1",
                                   "--warmup", "2", "--out", str(tmp_path / "cuda"))
    assert cuda.returncode == 0, cuda.stderr[-2000:]
    rc = json.loads((tmp_path / "cuda" / "results.json").read_text())
    assert rc["cuda_reduction"] and rc["kernel_launches_by_name"]["_pair_loss_kernel"] == 1
    assert rc["kernel_launches"] == 6 and rc["torch_ops"] <= 18, rc["torch_ops_by_name"]
    # The loss's gradient multiplies dloss/dscc inside the activation's backward kernel, not in a
    # torch op (a CUDA launch) of its own; bool and float32 tensors go to the kernels as they are.
    assert not {"aten::mul", "aten::view", "aten::to"} & set(rc["torch_ops_by_name"]), rc["torch_ops_by_name"]

    # validate=True (scc_loss's default): stage 1 makes the checks, read once after the forward
    # (one reduction and one sync), not aminmax / sum passes and two syncs before it.
    checked = _run_mode_in_subprocess("host-overhead", "--cuda-reduction", "--validate", "--steps", "5",
                                      "--repeats", "1", "--warmup", "2", "--out", str(tmp_path / "validate"))
    assert checked.returncode == 0, checked.stderr[-2000:]
    rv = json.loads((tmp_path / "validate" / "results.json").read_text())
    assert rv["validate"] and rv["kernel_launches"] == 6 and rv["torch_ops"] <= 21, rv["torch_ops_by_name"]
    assert rv["torch_ops_by_name"]["aten::max"] == 1 and rv["torch_ops_by_name"]["aten::item"] == 1
    assert not {"aten::aminmax", "aten::sum", "aten::isfinite"} & set(rv["torch_ops_by_name"]), rv["torch_ops_by_name"]

    with pytest.raises(SystemExit) as bad:  # parsing only: nothing is stubbed in this process
        main(["host-overhead", "--shape", "1x1x4x4", "--out", str(tmp_path)])
    assert bad.value.code == 2 and "--shape must be" in capsys.readouterr().err


def test_fft_forward_peak_mode(tmp_path):
    """scc-fast bench fft-peak (triton_fft's forward peak with its kernels stubbed, the table in
    bench/RESULTS.md): each derivation lowers the peak, to every map and spectrum of C - 1 classes
    with validate=True."""
    pytest.importorskip("triton")
    done = _run_mode_in_subprocess("fft-peak", "--shape", "2x4x24x24x24")
    assert done.returncode == 0, done.stderr[-2000:]
    row = next(line for line in done.stdout.splitlines() if line.startswith("| shape 1 2x4x24x24x24"))
    every, derived, validated = (float(v) for v in row.strip(" |").split("|")[1:])
    map_mib, spectrum_mib = 2 * 4 * 24**3 * 4 / 2**20, 2 * 4 * 24**2 * 13 * 8 / 2**20
    assert every > derived > validated
    expected = 3 / 4 * (max(2 * map_mib, map_mib + spectrum_mib) + spectrum_mib)
    assert abs(validated - expected) <= 0.01 * expected + 0.01, (validated, expected)


def test_derived_class_accuracy_mode(capsys):
    """scc-fast bench derived-accuracy (the accuracy table of triton_fft's derived class 0 in
    bench/RESULTS.md) runs and its rows hold the float32 tolerance where class 0 is not tiny."""
    pytest.importorskip("triton")
    for labels in ("uniform", "sampled"):
        assert main(["derived-accuracy", "--shape", "1x3x8x10", "--shifts", "0,4", "--labels", labels]) == 0
        out = capsys.readouterr().out
        rows = [line for line in out.splitlines() if line.startswith("| +")]
        assert len(rows) == 2, out
        for row in rows:  # loss and gradient: P and Y derived / P derived / every class transformed
            cells = row.split("|")
            errors = [float(v) for v in cells[4].split("/") + cells[5].split("/")]
            assert len(errors) == 6 and max(errors) <= 1e-5, row
    assert main(["derived-accuracy", "--shifts", "0,x"]) == 2
    assert "--shifts" in capsys.readouterr().err


@pytest.mark.slow
def test_gpu_check_and_reliability_modes_dry_run_on_cpu(tmp_path):
    """The other stages of the prepared GPU call that have no test of their own run end to end on CPU
    (the interpreter, tiny shapes): gpu-check with every contender, the split mode's and the
    probabilities-first rows included, and reliability."""
    pytest.importorskip("triton")
    from scc_fast import _settings

    before = _settings.current()
    assert main(["gpu-check", "--smoke", "--no-compile", "--reps", "1", "--cases", "smoke-b",
                 "--out", str(tmp_path / "t")]) == 0
    assert _settings.current() == before
    data = json.loads((tmp_path / "t" / "results.json").read_text())
    (row,) = data["rows"]
    assert set(row["accuracy"]) == {"tf32", "ieee", "tf32,split"}, row
    assert all(e["ok"] for e in row["accuracy"].values()), row["accuracy"]
    assert {"triton[tf32]", "triton[tf32,split]", "triton[tf32,p-first]", "triton[tf32,unfused]", "reference",
            "torch"} <= set(row["time_ms"]), row
    assert data["meta"]["command"].startswith("scc-fast bench gpu-check")
    assert main(["reliability", "--device", "cpu", "--out", str(tmp_path / "r")]) == 0
    md = (tmp_path / "r" / "results.md").read_text()
    assert "| triton | 2d | True / True |" in md and "command: `scc-fast bench reliability" in md


@pytest.mark.skipif(not available_backends()["native"].available, reason="native operator not built")
def test_native_fft_ab_mode_runs_each_engine(capsys):
    """scc-fast bench native-fft: a row per engine with the engine fft_engine names for the shape
    and a ratio against the first (1.000 for itself)."""
    from scc_fast import _settings

    before = _settings.current()
    assert main(["native-fft", "--shapes", "1x2x8x64", "1x3x4x4x16", "--engines", "auto", "mkl", "aten",
                 "--rounds", "2", "--block", "1"]) == 0
    assert _settings.current() == before
    rows = [ln.split() for ln in capsys.readouterr().out.splitlines() if ln.startswith("1x")]
    assert [(r[0], r[1]) for r in rows] == [(s, e) for s in ("1x2x8x64", "1x3x4x4x16") for e in ("auto", "mkl", "aten")]
    from scc_fast.backends import native

    for r in rows:
        shape = tuple(int(v) for v in r[0].split("x"))[2:]
        want = {"auto": native.fft_engine(shape), "mkl": "mkl_inplace", "aten": "aten"}[r[1]]
        if r[1] == "mkl" and native.fft_engine() == "aten":
            want = "aten"  # libtorch without MKL's DFTI
        assert r[2] == f"({want})" and float(r[3]) > 0
        assert r[-1] == "1.000" if r[1] == "auto" else float(r[-1]) > 0


@pytest.mark.skipif(not available_backends()["native"].available, reason="native operator not built")
def test_native_fft_mode_caps_the_isa_and_times_the_reference(capsys):
    """--isa avx2 runs the AVX2 builds (the radix transform's too, where the CPU has them) for
    every engine; --reference adds a reference row and reference/this ratios (1.00 for itself)."""
    from scc_fast import _settings
    from scc_fast.backends import native

    before = _settings.current()
    assert main(["native-fft", "--shapes", "1x2x8x64", "--engines", "auto", "mkl", "--rounds", "2", "--block", "1",
                 "--isa", "avx2", "--reference", "--validate"]) == 0
    assert _settings.current() == before
    out = capsys.readouterr().out
    with _settings.override(native_isa="avx2"):
        isa, radix = native.isa(), native.fft_engine((8, 64))
    assert f"inner loops {isa}, validate=True" in out
    rows = {ln.split()[1]: ln.split() for ln in out.splitlines() if ln.startswith("1x")}
    assert list(rows) == ["auto", "mkl", "reference"]
    assert rows["auto"][2] == f"({radix})" and rows["reference"][2] == "(torch.fft)"
    assert rows["reference"][rows["reference"].index("reference/this:") + 1] == "1.00x"
    assert all(float(r[r.index("reference/this:") + 1].rstrip("x")) > 0 for r in rows.values())


def test_native_fft_ab_mode_refuses_bad_arguments(capsys):
    with pytest.raises(SystemExit) as done:
        main(["native-fft", "--shapes", "2x4x64"])
    assert done.value.code == 2 and "a shape needs B, C and 2 or 3 spatial sizes" in capsys.readouterr().err
    with pytest.raises(SystemExit) as done:
        main(["native-fft", "--engines", "fftw"])
    assert done.value.code == 2 and "invalid choice: 'fftw'" in capsys.readouterr().err
    assert main(["native-fft", "--rounds", "0"]) == 2
    assert "--rounds and --block must be >= 1" in capsys.readouterr().err


def test_commit_of_a_measurement(monkeypatch, tmp_path):
    """The commit a benchmark reports: a written .git_commit wins (the device machine's copy has a
    stale .git: GPU run 4 reported its HEAD), else git's HEAD; outside any checkout, "unknown"."""
    from scc_fast.benchmark import suite

    monkeypatch.setattr(suite, "_PKG_ROOT", tmp_path)
    assert suite._commit() == "unknown"
    (tmp_path / ".git_commit").write_text("1bd06cfb34eb4b22853c35ec4268967fa09de9db\n")
    assert suite._commit() == "1bd06cfb34eb4b22853c35ec4268967fa09de9db"
