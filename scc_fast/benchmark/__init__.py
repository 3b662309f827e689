"""``scc-fast bench``: time and memory of every available backend against the torch.fft reference.

Three studies, each writing JSON, Markdown and PNG files into ``--out`` (the PNG files need
matplotlib, the ``[bench]`` extra; without it they are skipped, with one line on stderr saying so):

* cases (default): the benchmark cases of docs/loss.md section 8 (full size on a GPU, reduced batch, and with
  ``--quick`` reduced size, on a CPU; the scale is written next to every number) for every
  available backend, the ``reference`` in eager mode and under ``torch.compile``; forward and
  forward + backward; median and IQR; peak memory above the inputs; ratios against the reference
  measured in the same run; on a GPU the achieved bandwidth and its fraction of the copy
  bandwidth. Files: ``results.json``, ``results.md``, ``cases.png``.
* ``--scaling``: time and memory against N (2D 64^2..1024^2, 3D 32^3..160^3; capped on a CPU),
  with the fitted growth exponent. Files: ``scaling.json``, ``scaling.md``, ``scaling.png``.
* ``--timeline``: memory over one forward + backward (CUDA allocator trace, or the CPU resident
  set per phase). Files: ``timeline.json``, ``timeline.md``, ``timeline.png`` (and, on CUDA,
  ``timeline_<backend>.pickle`` snapshots for https://pytorch.org/memory_viz).

These are also the modes ``cases``, ``scaling`` and ``timeline``; the other modes of the harness
(the GPU checks, profile, tuning, the CPU studies: ``scc-fast bench --help`` lists them) live in
:mod:`.modes`, one module each, imported only when named. Every mode times through
:func:`.measure.time_steps`.

Progress goes to stderr. ``main(argv)`` runs it from Python (``argv`` without ``"bench"``, e.g.
``main(["profile", "--smoke", "--device", "cpu", "--out", "d"])``).
A mistake on the command line is one line on stderr and exit code 2 (:class:`.errors.CLIError`).
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import threading
from pathlib import Path

from .cases import CPU_QUICK_COMPILE, BENCHMARK_CASES, Case, default_cases, parse_case, scaling_shapes
from .errors import CLIError, one_line, run_command, writable_dir
from .report import PLOTS_HINT, fit_exponent, plots_unavailable

__all__ = ["add_parser", "main", "run", "fit_exponent", "Case", "BENCHMARK_CASES"]

COMPILED = "reference-compile"


STUDIES = {
    "cases": "the benchmark cases, every backend against the reference (the default without a mode)",
    "scaling": "time and memory against N, with the fitted growth exponent (same as --scaling)",
    "timeline": "memory over one forward + backward (same as --timeline)",
}


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``bench`` and its modes on the ``scc-fast`` command line (called by :mod:`scc_fast.cli`)."""
    from .modes import ModeAction, add_modes

    p = subparsers.add_parser(
        "bench",
        help="benchmark every available backend against the torch.fft reference (and the modes below)",
        description=__doc__.split("\n\n")[0] + " Cases: " + ", ".join(
            f"{n} {'x'.join(map(str, s))}" for n, (s, _) in BENCHMARK_CASES.items()) + ". "
        "Without a mode it runs the cases study with the options below; `scc-fast bench MODE --help` "
        "gives a mode's own options (put them after the mode).",
    )
    _add_study_options(p)
    modes = p.add_subparsers(dest="mode", metavar="MODE", action=ModeAction, required=False,
                             title="modes (default: cases)")
    for name, help_text in STUDIES.items():
        sp = modes.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".")
        _add_study_options(sp)
        sp.set_defaults(**{name: True} if name != "cases" else {})
    add_modes(modes)
    return p


def _add_study_options(p: argparse.ArgumentParser) -> None:
    """The options of the cases, scaling and timeline studies (``bench`` itself and its three modes)."""
    p.add_argument("--quick", action="store_true",
                   help="fewer repeats; on a CPU also smaller cases and torch.compile only on the two acceptance shapes "
                        "(under 3 minutes on 2 cores)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available, else cpu")
    p.add_argument("--cases", nargs="+", metavar="CASE",
                   help="case names (synapse-2d polyp-2d brats-3d btcv-3d, on a CPU also brats-3d-64) or shapes "
                        "[name=]BxCxHxW / [name=]BxCxDxHxW; default: every case for the device")
    p.add_argument("--backends", nargs="+", metavar="NAME",
                   help=f"row labels: registry backends and {COMPILED!r}; default: reference, {COMPILED} and every "
                        "available backend")
    p.add_argument("--out", type=Path, default=Path("bench_out"), help="output folder (default: bench_out)")
    p.add_argument("--scaling", action="store_true", help="run the scaling study (instead of the cases)")
    p.add_argument("--timeline", action="store_true", help="run the memory timeline (instead of the cases)")
    p.add_argument("--all", action="store_true", help="cases, then timeline, then scaling")
    p.add_argument("--no-compile", action="store_true", help=f"leave out the {COMPILED} rows")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per row (default: 5 quick / 15 CPU / 30 GPU)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up calls before timing (default: 1 quick CPU / 2 CPU / 5 GPU)")
    p.add_argument("--sizes-2d", type=int, nargs="+", default=None, help="scaling: 2D edge lengths")
    p.add_argument("--sizes-3d", type=int, nargs="+", default=None, help="scaling: 3D edge lengths")
    p.add_argument("--isolation", choices=["process", "none"], default=None,
                   help="process: a fresh interpreter per (case, backend), needed for CPU peak RSS (default on CPU); "
                        "none: everything in this process (default on CUDA)")
    p.add_argument("--job-timeout", type=float, default=None, help="seconds before a row's worker process is killed (default: 120 quick / 600)")
    p.add_argument("--time-budget", type=float, default=None,
                   help="seconds; rows not started by then are reported as not run, compiled rows need 45 s (GPU 30 s) "
                        "of it left (default: 130 for --quick on a CPU, else none)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads in every measurement (default: torch's own choice); 1 gives steadier "
                        "CPU numbers on a machine shared with other jobs")
    p.add_argument("--validate", action="store_true", help="time with validate=True (label-range check, a sync)")
    p.add_argument("--no-plots", action="store_true",
                   help="write JSON and Markdown only (without matplotlib the PNG files are skipped anyway)")
    p.add_argument("--report-only", action="store_true", help="rewrite Markdown and PNG from the JSON files in --out")
    p.set_defaults(func=run)


def main(argv: list[str] | None = None) -> int:
    """``scc-fast bench ARGS`` from Python: ``main(["--quick", "--out", "d"])``; returns the exit code."""
    parser = argparse.ArgumentParser(prog="scc-fast")
    add_parser(parser.add_subparsers(dest="command", required=True))
    argv = ["bench", *(sys.argv[1:] if argv is None else argv)]
    args = parser.parse_args(argv)
    args._argv = argv
    return run_command(args)


def _labels(args, device: str) -> tuple[list[str], dict[str, str]]:
    """Row labels to measure, and the backends left out with the reason."""
    from .. import available_backends

    status = available_backends()
    notes: dict[str, str] = {}
    interp = device == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"
    if args.backends:
        labels = list(dict.fromkeys(args.backends))
        for lb in labels:
            name = "reference" if lb == COMPILED else lb
            if name not in status:
                raise CLIError(f"--backends: unknown backend {lb!r}; choose from {', '.join([*status, COMPILED])}")
            if not status[name].available:
                raise CLIError(f"--backends: backend {lb!r} is not available here: {status[name].reason}; "
                               "leave it out (`scc-fast backends` lists what runs here)")
        if "reference" not in labels:
            labels.insert(0, "reference")  # every ratio is against it
    else:
        labels = ["reference", COMPILED]
        for name, st in status.items():
            if name == "reference":
                continue
            if not st.available:
                notes[name] = st.reason
            elif interp and name.startswith("triton"):
                notes[name] = "runs under the Triton CPU interpreter here (for tests only, not timed); ask with --backends"
            else:
                labels.append(name)
    if args.no_compile:
        if COMPILED in labels:
            labels.remove(COMPILED)
        notes[COMPILED] = "left out with --no-compile"
    return labels, notes


def run(args: argparse.Namespace) -> int:
    """Entry point of ``scc-fast bench``."""
    import torch

    from . import suite

    out: Path = args.out
    # Without matplotlib (a plain `pip install .`) the JSON and Markdown files are still written.
    why_no_plots = None if args.no_plots else plots_unavailable()
    if args.report_only:
        if not out.is_dir():
            raise CLIError(f"--report-only: --out {str(out)!r} is not a folder with results; "
                           "give the --out of an earlier scc-fast bench run")
        if not any((out / f).exists() for f in suite.RESULT_FILES):
            raise CLIError(f"--report-only: no {', '.join(suite.RESULT_FILES[:-1])} or {suite.RESULT_FILES[-1]} "
                           f"in {str(out)!r}; run scc-fast bench --out {shlex.quote(str(out))} first")
        writable_dir(out)
        for p in suite.write_reports(out, plots=not args.no_plots and why_no_plots is None):
            print(p)
        _say_plots_skipped(why_no_plots)
        return 0
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device cuda: no CUDA device is available to this torch "
                       f"({torch.__version__}, torch.version.cuda={torch.version.cuda}); use --device cpu")
    for name in ("repeats", "warmup"):
        v = getattr(args, name)
        if v is not None and v < (1 if name == "repeats" else 0):
            raise CLIError(f"--{name} must be >= {1 if name == 'repeats' else 0}, got {v}")
    for name in ("sizes_2d", "sizes_3d"):
        v = getattr(args, name)
        if v is not None and any(s < 2 for s in v):
            raise CLIError(f"--{name.replace('_', '-')} sizes must be >= 2, got {v}")
    if args.threads is not None and args.threads < 1:
        raise CLIError(f"--threads must be >= 1, got {args.threads}")
    if args.job_timeout is not None and args.job_timeout <= 0:
        raise CLIError(f"--job-timeout must be > 0, got {args.job_timeout}")

    known = default_cases(device, args.quick)
    try:
        cases = [parse_case(c, known) for c in args.cases] if args.cases else list(known.values())
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    labels, notes = _labels(args, device)
    writable_dir(out)

    gpu = device == "cuda"
    repeats = args.repeats or ((10 if args.quick else 30) if gpu else (5 if args.quick else 15))
    warmup = args.warmup if args.warmup is not None else (5 if gpu else (1 if args.quick else 2))
    compile_skip = {}
    if args.quick and not gpu and not args.cases:
        compile_skip = {c.name: "not measured by --quick on a CPU (torch.compile costs ~25 s per shape there); "
                                "run without --quick or name the case with --cases"
                        for c in cases if c.name not in CPU_QUICK_COMPILE}
    sizes = scaling_shapes(device, args.quick)
    if args.sizes_2d:
        sizes[2] = (sizes[2][0], sorted(args.sizes_2d))
    if args.sizes_3d:
        sizes[3] = (sizes[3][0], sorted(args.sizes_3d))
    cfg = suite.Config(
        device=device,
        out=out,
        cases=cases,
        labels=labels,
        quick=args.quick,
        repeats=repeats,
        warmup=warmup,
        isolation=args.isolation or ("none" if gpu else "process"),
        job_timeout=args.job_timeout or (120.0 if args.quick else 600.0),
        time_budget=args.time_budget if args.time_budget is not None else (130.0 if args.quick and not gpu else None),
        compile_reserve=30.0 if gpu else 45.0,
        validate=args.validate,
        threads=args.threads,
        plots=not args.no_plots and why_no_plots is None,
        compile_skip=compile_skip,
        label_notes=notes,
        scaling_sizes=sizes,
        scaling_repeats=args.repeats or (10 if gpu else (2 if args.quick else 3)),
        command=command_of(args),
    )
    for name, why in notes.items():
        suite.progress(cfg, f"left out {name}: {why}")
    suite.progress(cfg, f"device {device}, rows {', '.join(labels)}, isolation {cfg.isolation}, "
                        f"{repeats} repeats after {warmup} warm-up calls, output {out}")
    studies = ["cases", "timeline", "scaling"] if args.all else (
        [s for s in ("timeline", "scaling") if getattr(args, s)] or ["cases"])
    # SIGTERM (e.g. from `timeout`) becomes SystemExit so a running worker process is killed too.
    old_handler = None
    if threading.current_thread() is threading.main_thread():
        old_handler = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        for study in studies:
            getattr(suite, f"run_{study}")(cfg)
            if study == "cases":
                print((out / "results.md").read_text())
    finally:
        if old_handler is not None:
            signal.signal(signal.SIGTERM, old_handler)
    suite.progress(cfg, f"done; files in {out}")
    _say_plots_skipped(why_no_plots)
    return 0


def _say_plots_skipped(why: str | None) -> None:
    if why is not None:
        print(f"scc-fast bench: plots skipped ({one_line(why)}); {PLOTS_HINT}", file=sys.stderr, flush=True)


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def command_of(args: argparse.Namespace) -> str:
    """The command for the record: as typed where :func:`main` or ``scc-fast`` parsed it."""
    argv = getattr(args, "_argv", None)
    if argv is None and sys.argv[1:2] == ["bench"]:
        argv = sys.argv[1:]
    return "scc-fast " + shlex.join(argv if argv is not None else ["bench", *_argv_of(args)])


def _argv_of(args: argparse.Namespace) -> list[str]:
    """A reconstruction of the command for the record, when not run from the command line."""
    parts = []
    for k, v in sorted(vars(args).items()):
        if k.startswith("_") or k in ("func", "command", "mode") or v in (None, False):
            continue
        flag = "--" + k.replace("_", "-")
        if v is True:
            parts.append(flag)
        elif isinstance(v, list):
            parts += [flag, *map(str, v)]
        else:
            parts += [flag, str(v)]
    return parts
