"""The report's second architecture: a small ResNet-style classifier for the 64×64 shapes.

It differs from the demo's VGG-style :class:`~smoothexplain.demo.ShapesNet` where it matters for
gradients: strided convolutions instead of max pooling, identity/projection shortcuts (gradients
reach the input along two paths) and non-inplace ReLUs.
"""

from __future__ import annotations

import torch
from torch import nn

from smoothexplain.demo.net import PooledClassifier, check_width

__all__ = ["ShapesResNet"]


def _conv_bn(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
    )


class _Block(nn.Module):
    """Two 3×3 convolutions plus a shortcut (1×1 projection where the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.first = _conv_bn(in_channels, out_channels, stride)
        self.second = _conv_bn(out_channels, out_channels, 1)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.second(self.relu(self.first(x)))
        out: torch.Tensor = self.relu(residual + self.shortcut(x))
        return out


class ShapesResNet(PooledClassifier):
    """Stem, three residual stages (64 → 32 → 16 → 8 pixels), global pooling, linear head."""

    def __init__(self, num_classes: int, width: int = 16) -> None:
        check_width(width)
        features = nn.Sequential(
            nn.Sequential(_conv_bn(3, width, 2), nn.ReLU()),  # stem
            _Block(width, 2 * width, 2),
            _Block(2 * width, 4 * width, 2),
            _Block(4 * width, 8 * width, 1),
        )
        super().__init__(features, 8 * width, num_classes)
