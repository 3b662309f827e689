"""The modes of ``scc-fast bench`` beyond the cases, scaling and timeline studies: one module each.

Every mode module has ``add_arguments(parser)`` and ``run(args) -> int``, and may import torch,
triton and the backends at its top: :class:`ModeAction` imports a mode only when the command line
names it, so ``scc-fast --help`` and ``scc-fast bench --help`` import none of them (the one-line
help of each comes from :data:`MODES`). A user mistake is a :class:`..errors.CLIError`.
"""

from __future__ import annotations

import argparse
import importlib

__all__ = ["MODES", "ModeAction", "add_modes"]

#: mode name -> (module under scc_fast.benchmark.modes, one-line help)
MODES: dict[str, tuple[str, str]] = {
    "gpu-3d": ("gpu_3d", "every accelerated backend at the benchmark cases, 3D first: correctness, time, memory, "
                         "roofline; writes the dispatch table"),
    "gpu-check": ("gpu_check", "backend triton at the 2D cases: accuracy of each dot precision, time and memory "
                               "against torch and the reference"),
    "reliability": ("reliability", "determinism, autocast and out-of-memory recovery of every fast backend"),
    "profile": ("profile", "where a step's time goes: host and device time, kernels per step, host time per launch"),
    "tune": ("tune", "tile configurations of backend triton (3D path, 2D fused and split)"),
    "stage1-tune": ("stage1_tune", "tile size and warps of triton_fft's first kernel (its device time)"),
    "host-overhead": ("host_overhead", "the host's cost of a Triton backend's step on a CPU, kernels stubbed: "
                                       "time, torch ops and launches"),
    "native-cpu": ("native_cpu", "backend native against torch and the reference on a CPU: A/B blocks of steps "
                                 "and peak RSS"),
    "native-fft": ("native_fft", "backend native under each of its transform engines and instruction sets, A/B blocks of steps, "
                                 "optionally against the reference"),
    "fft-peak": ("fft_peak", "triton_fft's forward peak memory at the benchmark cases, predicted on a CPU"),
    "derived-accuracy": ("derived_accuracy", "accuracy of triton_fft's derived class 0 as that class's share shrinks"),
}


def load(name: str, parser: argparse.ArgumentParser) -> None:
    """Import mode ``name`` and give ``parser`` its arguments and entry point (once)."""
    if parser.get_default("func") is not None:
        return
    module = importlib.import_module(f"{__name__}.{MODES[name][0]}")
    parser.description = module.__doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    module.add_arguments(parser)
    parser.set_defaults(func=module.run, mode=name)


class ModeAction(argparse._SubParsersAction):
    """``bench``'s subcommands, whose modules are imported when one is chosen (see the docstring)."""

    def __call__(self, parser, namespace, values, option_string=None):
        if values and values[0] in MODES and values[0] in self._name_parser_map:
            load(values[0], self._name_parser_map[values[0]])
        super().__call__(parser, namespace, values, option_string)


def add_modes(subparsers: argparse._SubParsersAction) -> None:
    """One subcommand per entry of :data:`MODES` (arguments added by :func:`load`)."""
    for name, (module, help_text) in MODES.items():
        first = help_text[0].upper() + help_text[1:] + "."
        subparsers.add_parser(name, help=help_text, description=f"{first} (scc_fast.benchmark.modes.{module})")
