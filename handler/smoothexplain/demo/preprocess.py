"""Input normalisation shared by training and serving of the demo model."""

from __future__ import annotations

from typing import Final

import torch

__all__ = ["MEAN", "STD", "input_bounds", "normalize"]

# Per-channel statistics of the generated data (measured over 4096 images: mean ≈ 0.50,
# std ≈ 0.20 in every channel, since colours are drawn uniformly). Rounded so that the
# constants are easy to reproduce in other runtimes.
MEAN: Final[tuple[float, float, float]] = (0.5, 0.5, 0.5)
STD: Final[tuple[float, float, float]] = (0.2, 0.2, 0.2)


def _channel_view(values: tuple[float, ...], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=like.dtype, device=like.device).view(-1, 1, 1)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """Map ``(..., 3, H, W)`` images in ``[0, 1]`` to the model's input space."""
    return (images - _channel_view(MEAN, images)) / _channel_view(STD, images)


def input_bounds() -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel ``(low, high)`` of normalised inputs, i.e. the images of 0 and 1."""
    low = tuple((0.0 - m) / s for m, s in zip(MEAN, STD, strict=True))
    high = tuple((1.0 - m) / s for m, s in zip(MEAN, STD, strict=True))
    return low, high
