"""The interface every backend implements, and the options a loss call hands it.

A backend is a module with four functions (:class:`Backend`); one whose activation is fused
(:mod:`scc_fast.backends.activation`: every backend but the reference) has three more, ``field``,
``backward`` and ``fake`` (:class:`FusedBackend`), which the one registered op calls with a
:class:`FieldRequest`. :func:`scc_fast.scc_loss` checks its
arguments, builds one :class:`LossOptions`, picks the backend and calls ``backend.loss``; how the
backend gets there (the activation in its kernels, class 0 derived from the others, the value
checks made in its own first pass) is its own business. ``correlation`` serves
:func:`scc_fast.spectral_correlation` and the backends' tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Protocol

import torch

__all__ = ["Backend", "FieldRequest", "FusedBackend", "LossOptions"]


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


class FieldRequest(NamedTuple):
    """What the registered op ``torch.ops.scc_fast.activated_correlation`` asks of a fused
    backend's ``field`` (:class:`FusedBackend`), already checked.

    Attributes:
        activation: 0 (``x`` holds probabilities), 1 (softmax over every channel of ``x``) or 2
            (sigmoid): :data:`scc_fast.backends.activation.ACTIVATIONS`.
        first_channel, first_class, ignore_index, include_dc, magnitude_weight, phase_weight: as
            in :class:`LossOptions`.
        need_grad: compute the gradient field dSCC/dp.
        derive_first: class 0's field derived from the others' (only where the backend's ``loss``
            asked for it: backend "triton_fft").
        validate: the backend's kernels make ``LossOptions.validate``'s checks (only where its
            ``loss`` asked for it).
    """

    activation: int
    first_channel: int
    first_class: int
    ignore_index: int | None
    include_dc: bool
    magnitude_weight: float
    phase_weight: float
    need_grad: bool
    derive_first: bool = False
    validate: bool = False

    def coefficients(self) -> tuple[bool, float, float]:
        """``(include_dc, magnitude_weight, phase_weight)``."""
        return self.include_dc, self.magnitude_weight, self.phase_weight


class FusedBackend(Backend, Protocol):
    """A backend whose loss runs through the one registered op with the activation fused
    (:mod:`scc_fast.backends.activation`): its forward, backward and fake implementation."""

    def field(
        self, x: torch.Tensor, target: torch.Tensor, request: FieldRequest, field_weights: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(scc, valid, field, aux)`` without autograd: scc and valid B x C', field = dSCC/dp
        B x C' x spatial (float32, float64 for float64 input; B x (C' - 1) x spatial with
        ``request.derive_first``, each class's multiplied by its ``field_weights`` entry where
        given), or shape (0,) without ``request.need_grad``; ``aux`` whatever else :meth:`backward`
        needs, or None. ``x`` is logits or probabilities as ``request.activation``
        says; the activation, background drop and ignore mask are the backend's to apply
        (:func:`scc_fast.backends.activation.probability_field` does it with torch ops)."""

    def backward(self, backend: str, x: torch.Tensor, target: torch.Tensor, field: torch.Tensor,
                 aux: torch.Tensor | None, grad_scc: torch.Tensor, request: FieldRequest,
                 scale: torch.Tensor | None, eager: bool) -> torch.Tensor:
        """dL/dx from the per-pair upstream gradient ``grad_scc`` (B x C', times the one-element
        ``scale`` where given) and what :meth:`field` returned; ``eager`` False in traced code,
        which must reach only registered ops
        (:func:`scc_fast.backends.activation.field_backward` for a backend that needs only the
        field)."""

    def fake(self, x: torch.Tensor, target: torch.Tensor,
             request: FieldRequest) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Empty tensors of :meth:`field`'s shapes and dtypes, for tracing
        (:func:`scc_fast.backends.activation.field_fake`)."""
