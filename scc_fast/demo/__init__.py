"""``scc-fast demo``: does the spectral term help? Dice+CE against Dice+CE+SCC on real MRI.

Trains a small UNet on the MNI152 T1 template (grey/white matter/CSF segmentation, from the files
bundled in nilearn's wheel, nothing downloaded) with both losses and the same seeds, then reports
test Dice per class, calibration, and Dice under test-time noise, contrast and bias field.

Needs the ``[demo]`` extra (nilearn, matplotlib): ``pip install 'scc_fast[demo]'``. Importing this
package does not need them; running the command does. ``--data synthetic`` runs without nilearn.

Usage::

    scc-fast demo --quick --out demo_out/     # 3 seeds, 2D, a few minutes on 2 CPU cores
    scc-fast demo --out demo_out/             # 5 seeds, longer training, finer perturbation grid
    scc-fast demo --3d --quick --out demo3d/  # 3D UNet on patches of the same data
"""

from __future__ import annotations

import argparse
import shlex
import sys

from ..benchmark.errors import CLIError, MissingExtraError, run_command, writable_dir

__all__ = ["add_parser", "main"]


def _run(args: argparse.Namespace) -> int:
    from .data import DEMO_EXTRA_HINT

    if args.seeds is not None and args.seeds < 1:
        raise CLIError(f"--seeds must be >= 1, got {args.seeds}")
    if args.steps is not None and args.steps < 1:
        raise CLIError(f"--steps must be >= 1, got {args.steps}")
    if args.threads < 0:
        raise CLIError(f"--threads must be >= 0 (0: torch's choice), got {args.threads}")
    if args.lambda_spectral is not None and not args.lambda_spectral > 0:
        raise CLIError(f"--lambda must be > 0, got {args.lambda_spectral}")
    if args.data == "mni152":
        try:
            import nilearn  # noqa: F401
        except ImportError:
            raise MissingExtraError(f"nilearn is not installed; {DEMO_EXTRA_HINT} (or use --data synthetic)") from None
    from .report import require_matplotlib

    require_matplotlib()
    writable_dir(args.out)
    import torch

    from .run import DemoConfig, run_demo

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = DemoConfig.make(
        quick=args.quick, dims=3 if args.three_d else 2, seeds=args.seeds, steps=args.steps,
        out=args.out, source=args.data, resolution=args.resolution,
        command="scc-fast demo " + " ".join(shlex.quote(a) for a in _demo_argv(args)),
    )
    if args.lambda_spectral is not None:
        cfg.lambda_spectral = args.lambda_spectral
    run_demo(cfg)
    return 0


def _demo_argv(args: argparse.Namespace) -> list[str]:
    """The arguments after ``demo``, for the report's reproduce line."""
    if args.argv is not None:
        return list(args.argv)
    return sys.argv[sys.argv.index("demo") + 1 :] if "demo" in sys.argv else []


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``demo`` on an argparse subparsers object (``scc_fast.cli`` calls this)."""
    p = subparsers.add_parser(
        "demo",
        help="train a small UNet on MNI152 tissue segmentation with Dice+CE and with Dice+CE+SCC, compare",
        description=__doc__.split("Usage::")[0].strip().replace("``", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default="demo_out", help="directory for report.md, the PNG figures and results.json (default: demo_out)")
    p.add_argument("--quick", action="store_true", help="3 seeds, shorter training, coarser perturbation grid (minutes on 2 CPU cores)")
    p.add_argument("--3d", dest="three_d", action="store_true", help="3D UNet on patches instead of the 2D slice UNet (slower)")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (default 3 with --quick, else 5)")
    p.add_argument("--steps", type=int, default=None, help="training steps per run (overrides the mode's default)")
    p.add_argument("--lambda", dest="lambda_spectral", type=float, default=None, help="weight of the SCC term (default: the library default)")
    p.add_argument("--data", choices=("mni152", "synthetic"), default="mni152", help="mni152 (needs nilearn) or a synthetic phantom")
    p.add_argument("--resolution", type=int, choices=(1, 2), default=2, help="MNI152 voxel size in mm (1 is ~4x slower)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.set_defaults(func=_run, argv=None)
    return p


def main(argv: list[str] | None = None) -> int:
    """``python -m scc_fast.demo ...``, the same as ``scc-fast demo ...``."""
    parser = argparse.ArgumentParser(prog="scc-fast")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "demo":
        argv = ["demo"] + argv
    args = parser.parse_args(argv)
    args.argv = argv[1:]
    return run_command(args)
