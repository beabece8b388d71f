"""Attribution → PNG heatmap: |attribution| summed over channels, robustly scaled, colour-mapped."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

__all__ = ["heatmap_png", "overlay_png"]

# A perceptually ordered dark → red → yellow → white ramp (positions and RGB stops).
_STOPS = np.array([0.0, 0.35, 0.7, 1.0])
_COLOURS = np.array([[0, 0, 4], [187, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float64)


def _intensity(attribution: torch.Tensor, percentile: float) -> np.ndarray:
    """(C, H, W) → (H, W) in [0, 1]; the top (100 − percentile)% saturate, so outliers don't."""
    magnitude = attribution.detach().float().abs().sum(dim=0).cpu().numpy()
    top = float(np.percentile(magnitude, percentile))
    if top <= 0.0:
        top = float(magnitude.max()) or 1.0
    return np.clip(magnitude / top, 0.0, 1.0)


def _colour(intensity: np.ndarray) -> np.ndarray:
    channels = [np.interp(intensity, _STOPS, _COLOURS[:, c]) for c in range(3)]
    return np.stack(channels, axis=-1).round().astype(np.uint8)


def _png(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def heatmap_png(attribution: torch.Tensor, percentile: float = 99.0) -> bytes:
    return _png(_colour(_intensity(attribution, percentile)))


def overlay_png(
    attribution: torch.Tensor, image_rgb: np.ndarray, percentile: float = 99.0, alpha: float = 0.6
) -> bytes:
    """The heatmap blended over the (H, W, 3) uint8 image it explains."""
    intensity = _intensity(attribution, percentile)[..., None]
    heat = _colour(intensity[..., 0]).astype(np.float64)
    blend = image_rgb.astype(np.float64) * (1 - alpha * intensity) + heat * alpha * intensity
    return _png(blend.round().clip(0, 255).astype(np.uint8))
