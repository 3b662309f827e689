"""Evaluation: Dice per class, expected calibration error, and the test-time perturbations."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["dice_per_class", "expected_calibration_error", "gaussian_noise", "gamma_contrast", "bias_field", "PERTURBATIONS"]


def dice_per_class(pred: torch.Tensor, target: torch.Tensor, n_classes: int) -> np.ndarray:
    """Dice of each class over all voxels together (the whole test set as one volume).

    Args: pred, target: integer labels of one shape. Returns a float64 array of length
    ``n_classes``; a class absent from both is NaN.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have one shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    out = np.empty(n_classes)
    for c in range(n_classes):
        p, t = pred == c, target == c
        denom = int(p.sum()) + int(t.sum())
        out[c] = 2.0 * int((p & t).sum()) / denom if denom else float("nan")
    return out


def expected_calibration_error(probs: torch.Tensor, target: torch.Tensor, n_bins: int = 15, mask: torch.Tensor | None = None) -> float:
    """Top-label ECE: sum over equal-width confidence bins of |bin| / N * |accuracy - mean confidence|.

    Args:
        probs: N x C x spatial class probabilities. target: N x spatial labels.
        mask: optional N x spatial bool, the voxels to score (e.g. the brain).
    """
    if probs.dim() != target.dim() + 1 or probs.shape[0] != target.shape[0] or probs.shape[2:] != target.shape[1:]:
        raise ValueError(f"probs must be N x C x spatial for target N x spatial, got {tuple(probs.shape)} and {tuple(target.shape)}")
    conf, pred = probs.max(dim=1)
    correct = (pred == target).double()
    conf = conf.double()
    if mask is not None:
        conf, correct = conf[mask], correct[mask]
    conf, correct = conf.reshape(-1), correct.reshape(-1)
    if conf.numel() == 0:
        return float("nan")
    # Bin b holds confidences in (b/n, (b+1)/n]; a confidence of exactly 0 joins the first bin.
    bins = (torch.ceil(conf * n_bins).long() - 1).clamp(0, n_bins - 1)
    count = torch.bincount(bins, minlength=n_bins).double()
    gap = (torch.bincount(bins, weights=correct, minlength=n_bins) - torch.bincount(bins, weights=conf, minlength=n_bins)).abs()
    return float(gap.sum() / count.sum())


# ---- test-time perturbations; images are B x 1 x spatial in [0, ~1] --------------------------


def gaussian_noise(x: torch.Tensor, sigma: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Add i.i.d. N(0, sigma^2) noise to every voxel (sigma in units of the image's 0..1 range)."""
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    if sigma == 0:
        return x.clone()
    return x + sigma * torch.randn(x.shape, generator=generator, dtype=x.dtype)


def gamma_contrast(x: torch.Tensor, gamma: float) -> torch.Tensor:
    """Contrast change ``x -> x ** gamma`` on the clipped-at-0 image (gamma < 1 brightens)."""
    if gamma <= 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    return x.clamp_min(0) ** gamma


def bias_field(x: torch.Tensor, strength: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Multiply by a smooth MRI-like bias field ``exp(strength * f)``, ``f`` a random polynomial of
    degree 2 in the normalised coordinates with max |f| = 1, one field per image.

    So ``x * exp(-strength) <= out <= x * exp(strength)`` for x >= 0.
    """
    if strength < 0:
        raise ValueError(f"strength must be >= 0, got {strength}")
    if strength == 0:
        return x.clone()
    spatial = x.shape[2:]
    axes = torch.meshgrid(*[torch.linspace(-1, 1, s, dtype=x.dtype) for s in spatial], indexing="ij")
    terms = [torch.ones_like(axes[0])] + list(axes) + [a * b for i, a in enumerate(axes) for b in axes[i:]]
    basis = torch.stack(terms)  # T x spatial
    coef = torch.randn((x.shape[0], basis.shape[0]), generator=generator, dtype=x.dtype)
    f = torch.einsum("bt,t...->b...", coef, basis)
    f = f - f.flatten(1).mean(1).view(-1, *([1] * len(spatial)))
    f = f / f.flatten(1).abs().amax(1).clamp_min(1e-12).view(-1, *([1] * len(spatial)))
    return x * torch.exp(strength * f).unsqueeze(1)


#: name -> (function(x, level, generator) -> perturbed x, axis label for plots)
PERTURBATIONS = {
    "noise": (lambda x, s, g: gaussian_noise(x, s, g), "Gaussian noise sigma"),
    "gamma": (lambda x, s, g: gamma_contrast(x, s), "contrast gamma (x ** gamma)"),
    "bias": (lambda x, s, g: bias_field(x, s, g), "bias field strength (log-amplitude)"),
}
