"""Functional API: :func:`scc_loss` and :func:`spectral_correlation`.

:func:`scc_loss` checks the arguments, builds one :class:`~scc_fast.backends._protocol.LossOptions`,
picks the backend and returns its ``loss``: the activation, ``ignore_index``, the background drop,
the value checks and the reduction are the backend's (docs/architecture.md).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from . import backends
from ._checks import check_target_values
from .backends._protocol import LossOptions

__all__ = ["scc_loss", "spectral_correlation"]

_REDUCTIONS = ("mean", "sum", "none")
_KINDS = ("scc", "magnitude", "phase", "complex")


def _check_input(input: torch.Tensor, name: str) -> None:
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(input).__name__}")
    if not input.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor (logits or probabilities), got dtype {input.dtype}")
    if input.dim() not in (4, 5):
        raise ValueError(
            f"{name} must be B x C x H x W or B x C x D x H x W (4 or 5 dims), got {input.dim()} dims "
            f"with shape {tuple(input.shape)}"
        )
    if input.shape[0] < 1 or input.shape[1] < 1:
        raise ValueError(f"{name} must have at least one image and one channel, got shape {tuple(input.shape)}")
    if any(s < 2 for s in input.shape[2:]):
        raise ValueError(f"{name} must have every spatial size >= 2, got spatial shape {tuple(input.shape[2:])}")


def _check_target(input: torch.Tensor, target: torch.Tensor, ignore_index: int | None) -> torch.Tensor:
    """Check ``target``'s type and shape against ``input``; return labels B x spatial or a float
    B x C x spatial."""
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if target.device != input.device:
        raise ValueError(f"target must be on the device of input ({input.device}), got {target.device}")
    spatial = tuple(input.shape[2:])
    n_batch = input.shape[0]
    if target.dtype == torch.bool:
        target = target.to(input.dtype if input.dtype == torch.float64 else torch.float32)
    if target.is_floating_point():
        if ignore_index is not None:
            raise ValueError("ignore_index applies to integer label targets only, got a floating-point target")
        if tuple(target.shape) != tuple(input.shape):
            hint = " (for class labels pass an integer tensor, e.g. target.long())" if target.shape[1:2] == (1,) else ""
            raise ValueError(
                f"a floating-point target must have the shape of input, B x C x spatial = {tuple(input.shape)}, "
                f"got {tuple(target.shape)}{hint}"
            )
        return target
    if target.is_complex():
        raise TypeError(f"target must be integer labels or a real floating-point tensor, got dtype {target.dtype}")
    if target.dim() == input.dim() and target.shape[1] == 1:
        target = target.squeeze(1)
    if target.dim() != input.dim() - 1:
        raise ValueError(
            f"integer labels must be B x spatial or B x 1 x spatial for input {tuple(input.shape)}, "
            f"got shape {tuple(target.shape)}"
        )
    if target.shape[0] != n_batch:
        raise ValueError(f"target batch size must equal input's ({n_batch}), got {target.shape[0]}")
    if tuple(target.shape[1:]) != spatial:
        raise ValueError(f"target spatial shape must equal input's {spatial}, got {tuple(target.shape[1:])}")
    return target


def _check_weights(magnitude_weight: float, phase_weight: float) -> None:
    for name, value in (("magnitude_weight", magnitude_weight), ("phase_weight", phase_weight)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if magnitude_weight == 0 and phase_weight == 0:
        raise ValueError("magnitude_weight and phase_weight must not both be 0")


def _class_weights(weight, n_pairs: int, include_background: bool, device) -> torch.Tensor | None:
    if weight is None:
        return None
    w = torch.as_tensor(weight, dtype=torch.float64).flatten()
    if w.numel() != n_pairs:
        which = "C - 1 (background excluded)" if not include_background else "C"
        raise ValueError(f"weight must have one entry per class in the loss, {which} = {n_pairs}, got {w.numel()}")
    if not torch.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"weight must be finite and >= 0, got {w.tolist()}")
    return w.to(device)


def _capturing(t: torch.Tensor) -> bool:
    """Whether ``t``'s CUDA stream is being captured into a CUDA graph: a value check waits for the
    device, which a capture does not allow."""
    return t.is_cuda and torch.cuda.is_current_stream_capturing()


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")


def scc_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    softmax: bool = False,
    sigmoid: bool = False,
    include_background: bool = True,
    include_dc: bool = False,
    magnitude_weight: float = 0.5,
    phase_weight: float = 0.5,
    weight: Sequence[float] | torch.Tensor | None = None,
    ignore_index: int | None = None,
    reduction: str = "mean",
    validate: bool = True,
    backend: str = "auto",
) -> torch.Tensor:
    """Spectral Correlation Coefficient loss, ``1 - SCC`` per (image, class) pair, reduced.

    ``SCC = magnitude_weight * rho_mag + phase_weight * rho_phase``: ``rho_mag`` is the Pearson
    correlation of the magnitude spectra ``|DFT(p)|`` and ``|DFT(y)|`` over the frequency set K,
    ``rho_phase = sum_K Re(P conj Y) / sum_K |P||Y|`` the magnitude-weighted cosine of their phase
    difference. The exact definition, its degenerate cases and its gradient are in docs/loss.md
    (the paper publishes no equation; this is the project's reconstruction).

    Args:
        input: the prediction, B x C x H x W or B x C x D x H x W: logits when ``softmax`` or
            ``sigmoid`` is set, else probabilities. float16 and bfloat16 are computed in float32.
        target: integer labels B x H x W(xD) or B x 1 x spatial (label c is channel c; with C = 1
            the labels 0/1 are the mask of that channel), or a float one-hot or soft target of
            the input's shape.
        softmax: apply a softmax over the C channels to ``input``. Defaults to False.
        sigmoid: apply a sigmoid to each channel of ``input``. Defaults to False.
        include_background: keep channel 0 in the loss (the softmax always uses it; ignored when
            C = 1). Defaults to True.
        include_dc: keep the zero frequency in K (docs/loss.md section 1 says why it is left out
            by default). Defaults to False.
        magnitude_weight: weight of ``rho_mag``, finite and >= 0. Defaults to 0.5.
        phase_weight: weight of ``rho_phase``, finite and >= 0, not 0 with ``magnitude_weight``.
            Defaults to 0.5.
        weight: class weights, one per class in the loss (C, or C - 1 without background),
            finite and >= 0. Defaults to None (every class 1).
        ignore_index: a label (integer targets only) whose voxels are set to 0 in prediction and
            target and get no gradient. Defaults to None.
        reduction: ``"mean"`` (class-weighted, over the non-degenerate pairs), ``"sum"`` or
            ``"none"``. Defaults to ``"mean"``.
        validate: check the labels' range and the input and target for NaN/Inf; the check
            costs a device sync. Skipped while ``torch.compile`` traces the call or a CUDA graph
            captures it. With ``validate=False`` a NaN or Inf propagates to a NaN loss and
            out-of-range labels count as 0 in every channel. Defaults to True.
        backend: ``"auto"``, ``"reference"``, ``"torch"``, ``"native"``, ``"triton"`` or
            ``"triton_fft"`` (docs/backends.md); the environment variable ``SCC_FAST_BACKEND``
            overrides ``"auto"``. Defaults to ``"auto"``.

    Returns:
        A scalar for ``"mean"`` and ``"sum"``, else B x C' (C' = C, or C - 1 without background);
        float32, float64 for float64 input. A pair whose target has no energy over K (the class
        absent, or covering the image when DC is out) has loss 0 and gradient 0 and is left out
        of the mean; if every pair is, the loss is 0.

    Raises:
        TypeError: ``input`` or ``target`` of the wrong type or dtype.
        ValueError: bad shapes, option values, labels out of range or NaN/Inf (``validate``).
        RuntimeError: a named backend that cannot run this input, with the reason.

    Example::

        loss = scc_loss(logits, labels, softmax=True)     # B x C x H x W logits, B x H x W labels
    """
    _check_input(input, "input")
    if softmax and sigmoid:
        raise ValueError("softmax and sigmoid are mutually exclusive, got both True")
    if softmax and input.shape[1] < 2:
        raise ValueError(f"softmax=True needs at least 2 channels, got C = {input.shape[1]}")
    _check_choice("reduction", reduction, _REDUCTIONS)
    backends._check_name(backend, "backend")
    _check_weights(magnitude_weight, phase_weight)
    if ignore_index is not None and (not isinstance(ignore_index, int) or isinstance(ignore_index, bool)):
        raise ValueError(f"ignore_index must be an int or None, got {ignore_index!r}")
    target = _check_target(input, target, ignore_index)

    n_chan = input.shape[1]
    drop_background = not include_background and n_chan > 1
    acc = torch.float64 if input.dtype == torch.float64 else torch.float32  # what the backends compute in
    labels = not target.is_floating_point()
    if not labels:
        target = (target[:, 1:] if drop_background else target).to(acc)
    options = LossOptions(
        activation="softmax" if softmax else "sigmoid" if sigmoid else None,
        first_channel=1 if drop_background else 0,
        first_class=1 if labels and (n_chan == 1 or drop_background) else 0,
        ignore_index=ignore_index,
        include_dc=bool(include_dc),
        magnitude_weight=float(magnitude_weight),
        phase_weight=float(phase_weight),
        class_weights=_class_weights(weight, n_chan - drop_background, not drop_background, input.device),
        reduction=reduction,
        # Value checks branch on data, which torch.compile(fullgraph=True) cannot trace, and wait
        # for the device, which a CUDA graph capture cannot.
        validate=validate and not torch.compiler.is_compiling() and not _capturing(input),
    )
    # The backend is chosen from metadata alone: the input itself where it is what the backend
    # computes on, else a stand-in of one uninitialised element (no kernel launch) expanded to it.
    if input.dtype == acc and not drop_background:
        probe = input
    else:
        probe = torch.empty((), dtype=acc, device=input.device).expand(input.shape)[:, options.first_channel:]
    return backends.select_backend(backend, probe, target).loss(input, target, options)


def spectral_correlation(
    probs: torch.Tensor,
    target: torch.Tensor,
    *,
    kind: str = "scc",
    include_dc: bool = False,
    magnitude_weight: float = 0.5,
    phase_weight: float = 0.5,
    backend: str = "auto",
) -> torch.Tensor:
    """Per-pair spectral correlation of ``probs`` and ``target``: a metric, B x C.

    Args:
        probs: B x C x H x W or B x C x D x H x W probabilities (or any real maps).
        target: integer labels B x spatial or B x 1 x spatial, or a float target of the shape of
            ``probs``.
        kind: ``"scc"`` (the weighted sum of the next two), ``"magnitude"`` (Pearson correlation
            of the magnitude spectra), ``"phase"`` (magnitude-weighted cosine of the phase
            difference) or ``"complex"`` (Pearson correlation of the complex spectra, computed
            without a transform). Defaults to ``"scc"``.
        include_dc: keep the zero frequency in K. Defaults to False.
        magnitude_weight: weight of the magnitude term for ``kind="scc"``. Defaults to 0.5.
        phase_weight: weight of the phase term for ``kind="scc"``. Defaults to 0.5.
        backend: as in :func:`scc_loss`. Defaults to ``"auto"``.

    Returns:
        B x C correlations in [-1, 1], float32 (float64 for float64 input); 0 where a
        denominator is 0 (a constant map, or a class absent from the target), docs/loss.md
        section 2.
    """
    _check_input(probs, "probs")
    _check_choice("kind", kind, _KINDS)
    backends._check_name(backend, "backend")
    if kind == "scc":
        _check_weights(magnitude_weight, phase_weight)
    else:
        magnitude_weight, phase_weight = (1.0, 0.0) if kind == "magnitude" else (0.0, 1.0)
    target = _check_target(probs, target, None)
    if not torch.compiler.is_compiling() and not _capturing(probs):
        check_target_values(target, probs.shape[1], None)
    first_class = 1 if probs.shape[1] == 1 else 0
    x = probs if probs.dtype == torch.float64 else probs.float()
    if target.is_floating_point():
        target = target.to(x.dtype)
    impl = backends.select_backend(backend, x, target)
    if kind == "complex":
        # No transform needed; every backend shares the spatial formula, the reference keeps its FFT one.
        complex_impl = getattr(impl, "complex_correlation", None) or backends.load("torch").complex_correlation
        return complex_impl(x, target, first_class=first_class, include_dc=include_dc)[0]
    return impl.correlation(
        x,
        target,
        first_class=first_class,
        include_dc=include_dc,
        magnitude_weight=float(magnitude_weight),
        phase_weight=float(phase_weight),
    )[0]
