"""A small UNet (2D or 3D), CPU-friendly: nnU-Net style blocks (conv, instance norm, leaky ReLU)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["UNet"]


class _Block(nn.Sequential):
    def __init__(self, dims: int, cin: int, cout: int) -> None:
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        norm = nn.InstanceNorm2d if dims == 2 else nn.InstanceNorm3d
        super().__init__(
            conv(cin, cout, 3, padding=1, bias=False), norm(cout, affine=True), nn.LeakyReLU(0.01, inplace=True),
            conv(cout, cout, 3, padding=1, bias=False), norm(cout, affine=True), nn.LeakyReLU(0.01, inplace=True),
        )


class UNet(nn.Module):
    """UNet with ``len(channels) - 1`` poolings.

    Any spatial size is accepted: the input is zero-padded to a multiple of
    ``2 ** (len(channels) - 1)`` and the logits cropped back.

    Args:
        dims: 2 or 3. in_channels, n_classes: input channels and output classes.
        channels: features per level, e.g. ``(8, 16, 32, 64)``.

    Shapes:
        input B x in_channels x spatial -> logits B x n_classes x spatial.
    """

    def __init__(self, dims: int = 2, in_channels: int = 1, n_classes: int = 4, channels: Sequence[int] = (8, 16, 32, 64)) -> None:
        super().__init__()
        if dims not in (2, 3):
            raise ValueError(f"dims must be 2 or 3, got {dims!r}")
        if len(channels) < 2:
            raise ValueError(f"channels needs at least two levels, got {tuple(channels)}")
        self.dims = dims
        self.factor = 2 ** (len(channels) - 1)
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        up = nn.ConvTranspose2d if dims == 2 else nn.ConvTranspose3d
        self.pool = nn.MaxPool2d(2) if dims == 2 else nn.MaxPool3d(2)
        self.down = nn.ModuleList([_Block(dims, in_channels, channels[0])])
        self.down.extend(_Block(dims, a, b) for a, b in zip(channels[:-1], channels[1:]))
        self.up = nn.ModuleList(up(b, a, 2, stride=2) for a, b in zip(channels[:-1], channels[1:]))
        self.dec = nn.ModuleList(_Block(dims, 2 * a, a) for a in channels[:-1])
        self.head = conv(channels[0], n_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != self.dims + 2:
            raise ValueError(f"UNet(dims={self.dims}) expects B x C x spatial with {self.dims + 2} dims, got {tuple(x.shape)}")
        size = x.shape[2:]
        pad: list[int] = []
        for s in reversed(size):
            pad += [0, (-s) % self.factor]
        if any(pad):
            x = F.pad(x, pad)
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for i in reversed(range(len(self.up))):
            x = self.dec[i](torch.cat([self.up[i](x), skips.pop()], dim=1))
        x = self.head(x)
        return x[(slice(None), slice(None)) + tuple(slice(0, s) for s in size)]
