"""Faithfulness without masks: deletion and insertion curves (Petsiuk et al., 2018, RISE).

Pixels are moved from a *source* image to a *target* image in the order a map ranks them, most
relevant first, and the model's score is read after each step:

- deletion: source = the photo, target = a baseline (here the mean colour); a faithful map makes
  the score fall fast, so a *low* area under the curve is good;
- insertion: source = the baseline (here a blurred copy), target = the photo; a faithful map
  makes the score rise fast, so a *high* area is good.

The curve has `steps` + 1 points at the fractions 0, 1/steps, … 1 of the pixels (step k moves
round(k·P/steps) of the P pixels; every channel of a pixel moves together), and its area is
the trapezoid rule over [0, 1]. A random order is the reference a map has to beat.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import torch

from .metrics import FloatArray

__all__ = ["Score", "area", "curve", "order", "random_order"]

Score = Callable[[torch.Tensor], torch.Tensor]  # (B, C, H, W) inputs → (B,) scores
IntArray = npt.NDArray[np.int64]


def order(relevance: npt.ArrayLike) -> IntArray:
    """Pixel indices of a pooled map ``(H, W)``, most relevant first (ties in pixel order)."""
    flat = np.asarray(relevance, dtype=np.float64).ravel()
    ranked: IntArray = np.argsort(-flat, kind="stable").astype(np.int64)
    return ranked


def random_order(pixels: int, seed: int) -> IntArray:
    ranked: IntArray = np.random.default_rng(seed).permutation(pixels).astype(np.int64)
    return ranked


def curve(
    score: Score,
    source: torch.Tensor,
    target: torch.Tensor,
    ranked: npt.ArrayLike,
    steps: int,
    *,
    batch: int = 16,
) -> FloatArray:
    """Scores at the `steps` + 1 points as pixels move from `source` to `target` ``(C, H, W)``
    in the order `ranked` (a permutation of the H·W pixel indices)."""
    if source.shape != target.shape or source.ndim != 3:
        shapes = f"{tuple(source.shape)} and {tuple(target.shape)}"
        raise ValueError(f"need two (C, H, W) images of one shape, got {shapes}")
    _, height, width = source.shape
    pixels = height * width
    ranks = np.empty(pixels, dtype=np.int64)
    ranks[np.asarray(ranked, dtype=np.int64)] = np.arange(pixels)
    position = torch.from_numpy(ranks).view(1, 1, height, width)
    moved = torch.tensor([round(k * pixels / steps) for k in range(steps + 1)])
    values = []
    for counts in torch.split(moved, batch):
        taken = position < counts.view(-1, 1, 1, 1)  # (B, 1, H, W): this pixel has moved
        mixed = torch.where(taken, target.unsqueeze(0), source.unsqueeze(0))
        with torch.no_grad():
            values.append(score(mixed).double())
    result: FloatArray = torch.cat(values).numpy()
    return result


def area(values: npt.ArrayLike) -> float:
    """Trapezoid area of a curve sampled at equal steps over the fractions [0, 1]."""
    y = np.asarray(values, dtype=np.float64)
    if y.ndim != 1 or y.size < 2:
        raise ValueError(f"need a 1-D curve of at least two points, got shape {y.shape}")
    return float((y.sum() - (y[0] + y[-1]) / 2) / (y.size - 1))
