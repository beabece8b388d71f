"""Sparseness (Chalasani et al., 2020) as the Quantus package computes it — a peer's code, not ours.

Quantus 0.6's `Sparseness` is the Gini index of the attribution: with the n values sorted
ascending, a₍₁₎ ≤ … ≤ a₍ₙ₎ (after |·|, division by the maximum and adding 1e-7),

    G = Σᵢ (2i − n − 1)·a₍ᵢ₎ / (n·Σᵢ a₍ᵢ₎)

which is 0 for a constant map and (n − 1)/n when one pixel holds everything.

One quirk decides how we call it: its default normalisation divides by the maximum over the
*whole batch*, and the 1e-7 offset then makes an image's score depend on its batch-mates (a
map far weaker than the strongest in its batch is pushed towards uniform). We pass
``normalise_axes`` so that each map is divided by its own maximum, as a single-image call would.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from quantus.metrics.complexity.sparseness import Sparseness

from .metrics import FloatArray

__all__ = ["sparseness"]


def sparseness(maps: npt.ArrayLike) -> FloatArray:
    """Quantus Sparseness of each pooled map ``(N, H, W)``, one score per image."""
    values = np.array(maps, dtype=np.float32)  # a copy: Quantus adds its offset in place
    if values.ndim != 3:
        raise ValueError(f"maps must be (N, H, W), got shape {values.shape}")
    if values.shape[0] == 0:
        return np.zeros(0)
    batch = values[:, None]
    metric = Sparseness(
        abs=True,
        normalise=True,
        normalise_func_kwargs={"normalise_axes": (1, 2, 3)},
        disable_warnings=True,
    )
    # The maps stand in for x_batch: Sparseness reads only its shape, and never calls a model.
    scores = metric(
        model=None,
        x_batch=batch,
        y_batch=np.zeros(values.shape[0], dtype=np.int64),
        a_batch=batch.copy(),
        channel_first=True,
        batch_size=max(1, values.shape[0]),
    )
    return np.asarray(scores, dtype=np.float64)
