"""Benchmark cases: the benchmark shapes of docs/loss.md section 8, and how they are scaled down on a CPU.

Every measured shape keeps the benchmark case it comes from, so each number can be reported with its
scale (fraction of the benchmark case's elements) next to it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction

__all__ = ["Case", "BENCHMARK_CASES", "default_cases", "parse_case", "format_shape", "scaling_shapes"]

#: docs/loss.md section 8: name -> (full shape B x C x spatial, why it is there).
BENCHMARK_CASES: dict[str, tuple[tuple[int, ...], str]] = {
    "synapse-2d": ((24, 9, 224, 224), "TransUNet Synapse setting"),
    "polyp-2d": ((16, 2, 512, 512), "large 2D slices"),
    "brats-3d": ((2, 4, 128, 128, 128), "3D brain tumour patches"),
    "btcv-3d": ((2, 14, 96, 96, 96), "3D multi-organ patches"),
}

# CPU shapes. The batch is reduced so a run takes minutes on two cores; --quick also shrinks the
# spatial size of the two largest cases. 8x9x224x224 and 2x4x64^3 are issue 2's acceptance shapes.
# The acceptance shapes come first: rows run in this order, and a --time-budget cuts the tail.
_CPU_DEFAULT: dict[str, tuple[str, tuple[int, ...]]] = {
    "synapse-2d": ("synapse-2d", (8, 9, 224, 224)),
    "brats-3d-64": ("brats-3d", (2, 4, 64, 64, 64)),
    "polyp-2d": ("polyp-2d", (4, 2, 512, 512)),
    "brats-3d": ("brats-3d", (1, 4, 128, 128, 128)),
    "btcv-3d": ("btcv-3d", (1, 14, 96, 96, 96)),
}
_CPU_QUICK: dict[str, tuple[str, tuple[int, ...]]] = {
    "synapse-2d": ("synapse-2d", (8, 9, 224, 224)),
    "brats-3d": ("brats-3d", (2, 4, 64, 64, 64)),
    "polyp-2d": ("polyp-2d", (2, 2, 256, 256)),
    "btcv-3d": ("btcv-3d", (1, 14, 48, 48, 48)),
}

#: Case names --quick measures reference-compile for on a CPU (each compile costs ~25 s there).
CPU_QUICK_COMPILE = ("synapse-2d", "brats-3d")


def format_shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape)


def _fraction(x: float) -> str:
    if x >= 1:
        return "1" if abs(x - 1) < 1e-12 else f"{x:.3g}"
    f = Fraction(x).limit_denominator(4096)
    if f.numerator == 1 and abs(float(f) - x) < 1e-9:
        return f"1/{f.denominator}"
    return f"{x:.3g}"


@dataclass(frozen=True)
class Case:
    """One measured shape. ``spec`` names the benchmark case it scales (None for a custom shape)."""

    name: str
    shape: tuple[int, ...]
    spec: str | None = None

    @property
    def full_shape(self) -> tuple[int, ...] | None:
        return BENCHMARK_CASES[self.spec][0] if self.spec else None

    @property
    def spatial(self) -> tuple[int, ...]:
        return self.shape[2:]

    @property
    def ndim(self) -> int:
        return len(self.spatial)

    @property
    def elements(self) -> int:
        """B x C x N: the number of logits, the x axis of the case plots."""
        return math.prod(self.shape)

    @property
    def voxels(self) -> int:
        return math.prod(self.spatial)

    @property
    def scale(self) -> float | None:
        """Fraction of the benchmark case's elements measured (1 = full size)."""
        full = self.full_shape
        return None if full is None else self.elements / math.prod(full)

    @property
    def scale_text(self) -> str:
        """E.g. ``"1/3 of 24x9x224x224: batch 8/24"``, ``"full size"``, ``"custom shape"``."""
        full = self.full_shape
        if full is None:
            return "custom shape"
        if tuple(full) == tuple(self.shape):
            return "full size"
        parts = []
        if self.shape[0] != full[0]:
            parts.append(f"batch {self.shape[0]}/{full[0]}")
        if self.shape[1] != full[1]:
            parts.append(f"channels {self.shape[1]}/{full[1]}")
        if self.spatial != full[2:]:
            parts.append(f"spatial {format_shape(self.spatial)} of {format_shape(full[2:])}")
        return f"{_fraction(self.scale)} of {format_shape(full)}: {', '.join(parts)}"

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "spec_case": self.spec,
            "full_shape": list(self.full_shape) if self.full_shape else None,
            "scale": self.scale,
            "scale_text": self.scale_text,
            "elements": self.elements,
            "voxels": self.voxels,
        }


def default_cases(device: str, quick: bool) -> dict[str, Case]:
    """The cases a run measures by default on ``device`` ("cpu" or "cuda")."""
    if device == "cuda":
        return {name: Case(name, shape, name) for name, (shape, _) in BENCHMARK_CASES.items()}
    table = _CPU_QUICK if quick else _CPU_DEFAULT
    return {name: Case(name, shape, spec) for name, (spec, shape) in table.items()}


_CUSTOM = re.compile(r"^(?:(?P<name>[A-Za-z0-9_.\-]+)=)?(?P<shape>\d+(?:x\d+){3,4})$")


def parse_case(text: str, known: dict[str, Case]) -> Case:
    """A case from the command line: a known name, or ``[name=]BxCxHxW`` / ``[name=]BxCxDxHxW``."""
    if text in known:
        return known[text]
    if text in BENCHMARK_CASES:  # a benchmark case this device/mode does not list by default: run it full size
        return Case(text, BENCHMARK_CASES[text][0], text)
    m = _CUSTOM.match(text)
    if m is None:
        raise ValueError(
            f"--cases entries must be one of {', '.join(sorted(set(known) | set(BENCHMARK_CASES)))} or a shape "
            f"[name=]BxCxHxW / [name=]BxCxDxHxW, got {text!r}"
        )
    shape = tuple(int(s) for s in m.group("shape").split("x"))
    if shape[0] < 1 or shape[1] < 2 or any(s < 2 for s in shape[2:]):
        raise ValueError(f"a custom case needs B >= 1, C >= 2 (softmax) and spatial sizes >= 2, got {text!r}")
    return Case(m.group("name") or m.group("shape"), shape, None)


def scaling_shapes(device: str, quick: bool) -> dict[int, tuple[tuple[int, int], list[int]]]:
    """Scaling study: rank -> ((B, C), edge lengths). Capped on a CPU so it takes a few minutes."""
    if device == "cuda":
        return {2: ((4, 4), [64, 128, 256, 512, 1024]), 3: ((1, 4), [32, 64, 96, 128, 160])}
    if quick:
        return {2: ((1, 4), [64, 128, 256, 512]), 3: ((1, 4), [32, 48, 64, 96])}
    return {2: ((1, 4), [64, 128, 256, 512, 1024]), 3: ((1, 4), [32, 64, 96, 128, 160])}
