"""Backend registry and dispatch.

Every backend is a module implementing :class:`scc_fast.backends._protocol.Backend`:
``unavailable_reason()``, ``unsupported_reason(probs, target)``, ``loss(x, target, options)`` and
``correlation(probs, target, *, first_class, include_dc, magnitude_weight, phase_weight)``, the
per-pair correlation of docs/loss.md section 1. :func:`scc_fast.scc_loss` hands ``loss`` one
:class:`~scc_fast.backends._protocol.LossOptions`; what a backend does inside (the activation in
its kernels, checks in its first pass, class 0 derived from the others) it decides itself.
Backends live in their own modules, imported only when first used; "auto" picks the first that
runs of the measured dispatch table's ranking (:mod:`scc_fast.backends.dispatch`), then
:data:`AUTO_ORDER`. docs/architecture.md has the call path and how to add a backend.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import NamedTuple

import torch

from .. import _settings
from . import dispatch
from ._protocol import Backend

__all__ = ["BACKENDS", "BackendStatus", "available_backends", "select_backend", "explain_backend", "explain_shape"]

#: Backend name -> module implementing it. "reference" is the oracle, never chosen by "auto".
BACKENDS: dict[str, str] = {
    "reference": "scc_fast.backends.reference",
    "torch": "scc_fast.backends.torch_fft",
    "triton": "scc_fast.backends.triton_scc",
    "triton_fft": "scc_fast.backends.triton_fft",
    "native": "scc_fast.backends.native",
}

#: Order in which "auto" tries backends on each device type, fastest first, where the measured
#: dispatch table (:mod:`scc_fast.backends.dispatch`) has no row for the input.
AUTO_ORDER: dict[str, tuple[str, ...]] = {
    "cuda": ("triton", "triton_fft", "torch"),
    "cpu": ("native", "torch"),
}
_AUTO_FALLBACK = ("torch",)

ENV_VAR = _settings.BACKEND_ENV


class BackendStatus(NamedTuple):
    """Whether a backend can run in this process (``available``) and, if not, why (``reason``:
    a sentence saying what is missing; ``"available"`` when it runs)."""

    available: bool
    reason: str


def load(name: str) -> ModuleType:
    """Import and return the module of backend ``name``."""
    path = BACKENDS[name]
    # torch.compile cannot trace importlib.import_module, but runs a static import eagerly.
    if path == "scc_fast.backends.torch_fft":
        from . import torch_fft as module
    elif path == "scc_fast.backends.reference":
        from . import reference as module
    elif path == "scc_fast.backends.triton_scc":
        from . import triton_scc as module
    elif path == "scc_fast.backends.native":
        from . import native as module
    elif path == "scc_fast.backends.triton_fft":
        from . import triton_fft as module
    else:
        module = importlib.import_module(path)
    return module


def _unavailable_reason(name: str) -> str | None:
    try:
        module = load(name)
    except ImportError as exc:  # a backend whose dependency is missing
        return f"cannot import {BACKENDS[name]}: {exc}"
    return module.unavailable_reason()


def available_backends() -> dict[str, BackendStatus]:
    """Which backends work in this process; for those that don't, why.

    Returns:
        A dict from backend name to ``BackendStatus(available, reason)``.
    """
    out = {}
    for name in BACKENDS:
        reason = _unavailable_reason(name)
        out[name] = BackendStatus(reason is None, reason or "available")
    return out


def _check_name(name: str, source: str) -> None:
    if name != "auto" and name not in BACKENDS:
        choices = ", ".join(repr(n) for n in ("auto", *BACKENDS))
        raise ValueError(f"{source} must be one of {choices}, got {name!r}")


def _auto_candidates(device: torch.device) -> tuple[str, ...]:
    return AUTO_ORDER.get(device.type, _AUTO_FALLBACK)


def _ranked_candidates(device: torch.device, spatial: tuple[int, ...], card: str | None = None):
    """Candidates for "auto": the measured table's ranking, then the static order; and why."""
    static = _auto_candidates(device)
    ranking, note = dispatch.lookup(device, spatial, card=card)
    if ranking is None:
        return static, note
    ranked = tuple(n for n in ranking if n in BACKENDS and n != "reference")
    return ranked + tuple(n for n in static if n not in ranked), note


def _choose(backend: str, probs: torch.Tensor, target: torch.Tensor) -> tuple[str, list[str]]:
    """The backend to run and, for "auto", the lines explaining the choice."""
    _check_name(backend, "backend")
    notes: list[str] = []
    if backend == "auto":
        env = _settings.env_backend()
        if env:
            _check_name(env, f"the environment variable {ENV_VAR}")
            notes.append(f"{ENV_VAR}={env} overrides 'auto'")
            backend = env
    if backend != "auto":
        reason = _unavailable_reason(backend)
        if reason is None:
            reason = load(backend).unsupported_reason(probs, target)
        if reason is not None:
            raise RuntimeError(f"backend {backend!r} was asked for but cannot run: {reason}")
        return backend, notes
    candidates, table_note = _ranked_candidates(probs.device, tuple(probs.shape[2:]))
    notes.append(table_note)
    for name in candidates:
        reason = _unavailable_reason(name) or load(name).unsupported_reason(probs, target)
        if reason is None:
            notes.append(f"auto picked {name!r}, the first that runs of {list(candidates)}")
            return name, notes
        notes.append(f"skipped {name!r}: {reason}")
    raise RuntimeError("no backend can run this input: " + "; ".join(notes))


def select_backend(backend: str, probs: torch.Tensor, target: torch.Tensor) -> Backend:
    """Resolve ``backend`` ("auto" or a name) for this input; an unusable named backend is an error."""
    return load(_choose(backend, probs, target)[0])


def explain_backend(probs: torch.Tensor, target: torch.Tensor, backend: str = "auto") -> str:
    """Say which backend ``backend`` resolves to for these tensors, and why.

    Args:
        probs: the tensor the backend would get, B x C x spatial (logits or probabilities; only
            its shape, dtype and device matter).
        target: integer labels B x spatial or a float target B x C x spatial.
        backend: a backend name or ``"auto"``. Defaults to ``"auto"``.

    Returns:
        Lines of text: ``"backend: NAME"``, then why (the dispatch table's row or the static
        order, and the backends passed over).
    """
    name, notes = _choose(backend, probs, target)
    return "\n".join([f"backend: {name}", *notes])


def explain_shape(shape: tuple[int, ...], device: str = "cuda", backend: str = "auto", target: str = "labels") -> str:
    """Explain the backend choice for an input of ``shape`` (B, C, spatial...) on ``device``.

    When the device is usable here, allocates uninitialised tensors of that shape and returns
    :func:`explain_backend`. Otherwise it says so and reports what the
    dispatch table alone decides (availability of the backends is then not checked).
    """
    if len(shape) not in (4, 5):
        raise ValueError(f"shape must be B,C,H,W or B,C,D,H,W (4 or 5 sizes), got {','.join(map(str, shape))}")
    if target not in ("labels", "float"):
        raise ValueError(f"target must be 'labels' or 'float', got {target!r}")
    dev = torch.device(device)
    usable = dev.type == "cpu" or (dev.type == "cuda" and torch.cuda.is_available())
    if not usable:
        order, note = _ranked_candidates(dev, tuple(shape[2:]), card="")  # no card to prefer
        return "\n".join(
            [
                f"device {device} is not available in this process: backend availability not checked",
                note,
                f"auto would try, in order: {list(order)}",
            ]
        )
    probs = torch.empty(shape, device=dev)
    if target == "labels":
        tgt = torch.zeros((shape[0], *shape[2:]), dtype=torch.long, device=dev)
    else:
        tgt = torch.empty(shape, device=dev)
    return explain_backend(probs, tgt, backend)
