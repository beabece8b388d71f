"""Attribution → PNG heatmap: |attribution| summed over channels, robustly scaled, colour-mapped.

Takes a numpy array or a torch tensor; needs numpy and Pillow only (the client uses it).
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["heatmap_png", "overlay_png"]

# A perceptually ordered dark → red → yellow → white ramp (positions and RGB stops).
_STOPS = np.array([0.0, 0.35, 0.7, 1.0])
_COLOURS = np.array([[0, 0, 4], [187, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float64)


def _as_array(attribution: Any) -> np.ndarray[Any, Any]:
    """A numpy array, or a torch tensor (detached, on the CPU), as float64 numpy."""
    if hasattr(attribution, "detach"):
        attribution = attribution.detach().float().cpu().numpy()
    return np.asarray(attribution, dtype=np.float64)


def _intensity(attribution: Any, percentile: float) -> np.ndarray[Any, Any]:
    """(C, H, W) → (H, W) in [0, 1]; the top (100 − percentile)% saturate, so outliers don't."""
    magnitude = np.abs(_as_array(attribution)).sum(axis=0)
    top = float(np.percentile(magnitude, percentile))
    if top <= 0.0:
        top = float(magnitude.max()) or 1.0
    scaled: np.ndarray[Any, Any] = np.clip(magnitude / top, 0.0, 1.0)
    return scaled


def _colour(intensity: np.ndarray) -> np.ndarray:
    channels = [np.interp(intensity, _STOPS, _COLOURS[:, c]) for c in range(3)]
    return np.stack(channels, axis=-1).round().astype(np.uint8)


def _png(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def heatmap_png(attribution: Any, percentile: float = 99.0) -> bytes:
    return _png(_colour(_intensity(attribution, percentile)))


def overlay_png(
    attribution: Any, image_rgb: np.ndarray[Any, Any], percentile: float = 99.0, alpha: float = 0.6
) -> bytes:
    """The heatmap blended over the (H, W, 3) uint8 image it explains."""
    intensity = _intensity(attribution, percentile)[..., None]
    heat = _colour(intensity[..., 0]).astype(np.float64)
    blend = image_rgb.astype(np.float64) * (1 - alpha * intensity) + heat * alpha * intensity
    return _png(blend.round().clip(0, 255).astype(np.uint8))
