"""Backend "reference": the oracle of :mod:`scc_fast.reference`, runnable through the public API."""

from __future__ import annotations

import torch

from ..reference import reference_complex_correlation, reference_correlation
from ._protocol import LossOptions
from .activation import plain_loss

correlation = reference_correlation
complex_correlation = reference_complex_correlation


def unavailable_reason() -> str | None:
    return None


def unsupported_reason(probs: torch.Tensor, target: torch.Tensor) -> str | None:
    return None


def loss(x: torch.Tensor, target: torch.Tensor, options: LossOptions) -> torch.Tensor:
    """The loss (:class:`scc_fast.backends._protocol.Backend`), the activation applied with torch ops."""
    return plain_loss(correlation, x, target, options)
