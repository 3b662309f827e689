"""scc_fast: a fast Spectral Correlation Coefficient (SCC) loss for medical image segmentation.

Public API::

    scc_loss(input, target, ...)              # the loss, 1 - SCC, reduced
    spectral_correlation(probs, target, ...)  # the per-pair correlation, a metric
    SCCLoss, SpatialSpectralLoss, DiceCESCCLoss  # nn.Module wrappers
    available_backends(), explain_backend(...)
"""

from .backends import BackendStatus, available_backends, explain_backend
from .functional import scc_loss, spectral_correlation
from .losses import DiceCESCCLoss, SCCLoss, SpatialSpectralLoss

__version__ = "0.1.0"

__all__ = [
    "scc_loss",
    "spectral_correlation",
    "SCCLoss",
    "SpatialSpectralLoss",
    "DiceCESCCLoss",
    "available_backends",
    "explain_backend",
    "BackendStatus",
    "__version__",
]
