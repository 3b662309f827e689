"""Backend "reference": the oracle of :mod:`scc_fast.reference`, runnable through the public API."""

from __future__ import annotations

import torch

from ..reference import reference_complex_correlation, reference_correlation

correlation = reference_correlation
complex_correlation = reference_complex_correlation


def unavailable_reason() -> str | None:
    return None


def unsupported_reason(probs: torch.Tensor, target: torch.Tensor) -> str | None:
    return None
