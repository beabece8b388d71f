"""Adaptive stopping: the relative standard error of a job's running mean attribution."""

from __future__ import annotations

import math

from .aggregate import Moments

__all__ = ["relative_standard_error"]


def relative_standard_error(moments: Moments) -> float | None:
    """‖SE of the mean‖₂ / ‖mean‖₂ over all features, or None without second moments.

    SEᵢ² = s²ᵢ / n with the unbiased sample variance s²ᵢ; the ratio of L2 norms is the relative
    L2 error of the mean map that another run with the same n would typically show.
    """
    if moments.shift is None or moments.total is None or moments.total_sq is None:
        return None
    n = moments.count
    if n < 2:
        return math.inf
    offset = moments.total / n
    variance = (moments.total_sq / n - offset.square()).clamp(min=0.0) * (n / (n - 1))
    mean_norm = float((moments.shift + offset).norm())
    if mean_norm == 0.0:
        return 0.0 if float(variance.sum()) == 0.0 else math.inf
    return math.sqrt(float(variance.sum()) / n) / mean_norm
