"""``nn.Module`` wrappers: :class:`SCCLoss`, :class:`SpatialSpectralLoss`, :class:`DiceCESCCLoss`."""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .functional import _check_choice, _REDUCTIONS, scc_loss

__all__ = ["SCCLoss", "SpatialSpectralLoss", "DiceCESCCLoss", "DEFAULT_LAMBDA_SPECTRAL"]

#: Default lambda in L = L_spatial + lambda * (1 - SCC). Both terms lie in [0, 2]; 0.5 lets the
#: spatial loss lead (it fixes overlap and calibration) while the spectral term still moves
#: shape and location, the balance the paper describes. Tune it per task.
DEFAULT_LAMBDA_SPECTRAL = 0.5


class SCCLoss(nn.Module):
    """Module form of :func:`scc_fast.scc_loss`; takes its keyword arguments, with its defaults
    (``softmax``, ``sigmoid``, ``include_background``, ``include_dc``, ``magnitude_weight``,
    ``phase_weight``, ``weight``, ``ignore_index``, ``reduction``, ``validate``, ``backend``).

    Shapes:
        input: B x C x H x W or B x C x D x H x W.
        target: labels B x spatial / B x 1 x spatial, or float B x C x spatial.
        output: scalar, or B x C' for ``reduction="none"``.

    Example::

        loss_fn = SCCLoss(softmax=True)
        loss = loss_fn(logits, labels)
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        # Validate the choice arguments now rather than at the first forward.
        _check_choice("reduction", kwargs.get("reduction", "mean"), _REDUCTIONS)
        unknown = set(kwargs) - set(scc_loss.__kwdefaults__)
        if unknown:
            raise TypeError(f"SCCLoss got unexpected keyword argument(s): {', '.join(sorted(unknown))}")
        self.kwargs = kwargs

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return scc_loss(input, target, **self.kwargs)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())


class SpatialSpectralLoss(nn.Module):
    """``L = spatial(input, target) + lambda_spectral * spectral(input, target)``.

    Wraps any spatial loss module, for example MONAI's ``DiceCELoss(to_onehot_y=True,
    softmax=True)``, with the spectral term (by default ``SCCLoss(softmax=True)``, which takes
    logits and integer labels B x 1 x spatial as MONAI does).

    Args:
        spatial: a module or callable ``(input, target) -> scalar``.
        spectral: the spectral loss module. Defaults to ``SCCLoss(softmax=True)``.
        lambda_spectral: weight of the spectral term, >= 0. Defaults to ``DEFAULT_LAMBDA_SPECTRAL``
            (0.5).
    """

    def __init__(
        self, spatial: nn.Module, spectral: nn.Module | None = None, lambda_spectral: float = DEFAULT_LAMBDA_SPECTRAL
    ) -> None:
        super().__init__()
        if not callable(spatial):
            raise TypeError(f"spatial must be a loss module or callable, got {type(spatial).__name__}")
        if not (lambda_spectral >= 0):
            raise ValueError(f"lambda_spectral must be >= 0, got {lambda_spectral!r}")
        self.spatial = spatial
        self.spectral = spectral if spectral is not None else SCCLoss(softmax=True)
        self.lambda_spectral = float(lambda_spectral)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.spatial(input, target) + self.lambda_spectral * self.spectral(input, target)


class DiceCESCCLoss(nn.Module):
    """The paper's recipe: soft Dice + cross-entropy + lambda * (1 - SCC), no MONAI needed.

    Takes logits; softmax over C (sigmoid with ``sigmoid=True`` for multi-label float
    targets). Dice and cross-entropy follow MONAI's ``DiceCELoss`` conventions: Dice per
    (image, class) with smoothing ``smooth_nr``/``smooth_dr`` then averaged, CE averaged over
    voxels.

    Args:
        include_background: keep channel 0 in the Dice and SCC terms (CE always uses it).
            Defaults to True.
        sigmoid: a sigmoid per channel and binary CE instead of softmax and CE. Defaults to False.
        lambda_dice: weight of the Dice term, >= 0. Defaults to 1.0.
        lambda_ce: weight of the cross-entropy term, >= 0. Defaults to 1.0.
        lambda_spectral: weight of the spectral term, >= 0. Defaults to ``DEFAULT_LAMBDA_SPECTRAL``
            (0.5).
        smooth_nr: Dice numerator smoothing. Defaults to 1e-5.
        smooth_dr: Dice denominator smoothing. Defaults to 1e-5.
        ignore_index: a label left out of all three terms. Defaults to None.
        **scc_kwargs: passed to :func:`scc_fast.scc_loss` (``include_dc``, ``magnitude_weight``,
            ``phase_weight``, ``weight``, ``backend``, ``validate``).

    Shapes:
        input: B x C x spatial logits; target: labels B x spatial / B x 1 x spatial, or float
        B x C x spatial. Output: scalar.
    """

    def __init__(
        self,
        *,
        include_background: bool = True,
        sigmoid: bool = False,
        lambda_dice: float = 1.0,
        lambda_ce: float = 1.0,
        lambda_spectral: float = DEFAULT_LAMBDA_SPECTRAL,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        ignore_index: int | None = None,
        **scc_kwargs: Any,
    ) -> None:
        super().__init__()
        for name, value in (("lambda_dice", lambda_dice), ("lambda_ce", lambda_ce), ("lambda_spectral", lambda_spectral)):
            if not (value >= 0):
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        forbidden = {"softmax", "sigmoid", "include_background", "ignore_index", "reduction"} & set(scc_kwargs)
        if forbidden:
            raise TypeError(f"DiceCESCCLoss sets {', '.join(sorted(forbidden))} itself; pass them as its own arguments")
        self.include_background = include_background
        self.sigmoid = sigmoid
        self.lambda_dice, self.lambda_ce, self.lambda_spectral = lambda_dice, lambda_ce, lambda_spectral
        self.smooth_nr, self.smooth_dr = smooth_nr, smooth_dr
        self.ignore_index = ignore_index
        self.scc = SCCLoss(
            softmax=not sigmoid,
            sigmoid=sigmoid,
            include_background=include_background,
            ignore_index=ignore_index,
            **scc_kwargs,
        )

    def _dense(self, input: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(float target B x C x spatial, labels or None, keep mask B x 1 x spatial)."""
        if target.is_floating_point():
            return target.to(torch.float32), None, torch.ones_like(input[:, :1], dtype=torch.float32)
        labels = target.squeeze(1) if target.dim() == input.dim() else target
        keep = (labels != self.ignore_index) if self.ignore_index is not None else torch.ones_like(labels, dtype=torch.bool)
        n_chan = input.shape[1]
        safe = torch.where(keep, labels, torch.zeros_like(labels)).clamp(0, max(n_chan, 2) - 1)
        if n_chan == 1:
            dense = (safe == 1).unsqueeze(1)
        else:
            dense = F.one_hot(safe, n_chan).movedim(-1, 1)
        return dense.to(torch.float32), labels, keep.unsqueeze(1).to(torch.float32)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        spectral = self.scc(input, target)  # validates shapes, labels and values first
        x = input.float()
        y, labels, keep = self._dense(x, target)
        probs = torch.sigmoid(x) if self.sigmoid else torch.softmax(x, dim=1)
        if self.sigmoid or labels is None:
            ce_map = (
                F.binary_cross_entropy_with_logits(x, y, reduction="none")
                if self.sigmoid
                else -(y * F.log_softmax(x, dim=1))
            ).sum(1, keepdim=True)
            ce = (ce_map * keep).sum() / keep.sum().clamp_min(1)
        else:
            ce_labels = torch.where(keep[:, 0].bool(), labels, torch.full_like(labels, -100))
            # Mean over kept voxels, 0 if none; no data-dependent branch (torch.compile fullgraph).
            ce = F.cross_entropy(x, ce_labels, ignore_index=-100, reduction="sum") / keep.sum().clamp_min(1)
        p, y = probs * keep, y * keep
        if not self.include_background and x.shape[1] > 1:
            p, y = p[:, 1:], y[:, 1:]
        dims = tuple(range(2, x.dim()))
        inter = (p * y).sum(dims)
        denom = p.sum(dims) + y.sum(dims)
        dice = (1.0 - (2.0 * inter + self.smooth_nr) / (denom + self.smooth_dr)).mean()
        return self.lambda_dice * dice + self.lambda_ce * ce + self.lambda_spectral * spectral
