"""Adaptive stopping: the relative standard error of a job's running mean attribution."""

from __future__ import annotations

import math

from .aggregate import Moments

__all__ = ["relative_standard_error"]


def relative_standard_error(moments: Moments) -> float | None:
    """‖SE of the mean‖₂ / ‖E[mean]‖₂ over all features, or None without second moments.

    SEᵢ² = s²ᵢ / n with the unbiased sample variance s²ᵢ; the ratio is the relative L2 error of
    the mean map that another run with the same n would typically show. ‖mean‖² overestimates
    ‖E[mean]‖² by Σ SEᵢ², so that is subtracted (without it a noisy map looks more precise than
    it is); inf while the signal cannot be told from the noise.
    """
    if moments.shift is None or moments.total is None or moments.total_sq is None:
        return None
    n = moments.count
    if n < 2:
        return math.inf
    offset = moments.total / n
    variance = (moments.total_sq / n - offset.square()).clamp(min=0.0) * (n / (n - 1))
    squared_error = float(variance.sum()) / n
    signal = float((moments.shift + offset).square().sum()) - squared_error
    if squared_error == 0.0:
        return 0.0
    if signal <= 0.0:
        return math.inf
    return math.sqrt(squared_error / signal)
