"""The interface every backend implements, and the options a loss call hands it.

A backend is a module with four functions (:class:`Backend`). :func:`scc_fast.scc_loss` checks its
arguments, builds one :class:`LossOptions`, picks the backend and calls ``backend.loss``; how the
backend gets there (the activation in its kernels, class 0 derived from the others, the value
checks made in its own first pass) is its own business. ``correlation`` serves
:func:`scc_fast.spectral_correlation` and the backends' tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

__all__ = ["Backend", "LossOptions"]


@dataclass(frozen=True, eq=False)
class LossOptions:
    """What :func:`scc_fast.scc_loss` asks of a backend, already checked.

    Attributes:
        activation: None (``x`` holds probabilities), ``"softmax"`` over every channel of ``x``,
            or ``"sigmoid"``.
        first_channel: channels before it take part in the softmax but not in the loss (1 leaves
            the background out).
        first_class: the label of loss channel 0 (integer labels; 0 for a float target).
        ignore_index: a label whose voxels count as probability 0 and target 0 in every channel
            and get no gradient (integer labels only), or None.
        include_dc: keep the zero frequency in the frequency set.
        magnitude_weight: weight of the magnitude correlation.
        phase_weight: weight of the phase correlation.
        class_weights: one weight per loss channel (C'), float64 on the input's device, or None.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        validate: check the labels' range and the input and target for NaN/Inf, raising the
            ``ValueError`` of :mod:`scc_fast._checks`.
    """

    activation: str | None = None
    first_channel: int = 0
    first_class: int = 0
    ignore_index: int | None = None
    include_dc: bool = False
    magnitude_weight: float = 0.5
    phase_weight: float = 0.5
    class_weights: torch.Tensor | None = None
    reduction: str = "mean"
    validate: bool = True

    def coefficients(self) -> dict:
        """The keyword arguments of a backend's ``correlation`` besides ``first_class``."""
        return {"include_dc": self.include_dc, "magnitude_weight": self.magnitude_weight,
                "phase_weight": self.phase_weight}


class Backend(Protocol):
    """A backend module's interface.

    ``x`` is B x C x spatial, logits or probabilities (``options.activation``), in its own dtype:
    the backend converts what it cannot read. ``target`` is integer labels B x spatial (label
    ``first_class + j`` is loss channel ``j``; anything else is 0 in every channel) or a float
    target B x C' x spatial of the loss channels (C' = C - first_channel), in the computing dtype.
    """

    def unavailable_reason(self) -> str | None:
        """None where the backend runs in this process, else a sentence saying what is missing."""

    def unsupported_reason(self, probs: torch.Tensor, target: torch.Tensor) -> str | None:
        """None where the backend takes tensors of these shapes, dtypes and device, else why not."""

    def loss(self, x: torch.Tensor, target: torch.Tensor, options: LossOptions) -> torch.Tensor:
        """``1 - SCC`` per pair, reduced as ``options.reduction`` says; differentiable in ``x``."""

    def correlation(self, probs: torch.Tensor, target: torch.Tensor, *, first_class: int, include_dc: bool,
                    magnitude_weight: float, phase_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scc, valid)``, both B x C', of probabilities B x C' x spatial (float32 or float64):
        docs/loss.md section 1; ``valid`` is False for degenerate pairs; ``scc`` differentiable in
        ``probs``."""
