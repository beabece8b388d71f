"""Points and weights on [0, 1] for the integrated-gradients path integral."""

from __future__ import annotations

import numpy as np
import torch

from .spec import IgRule

__all__ = ["path_points"]


def path_points(rule: IgRule, n_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (alphas, weights), float64, with Σ weights = 1, so ∫₀¹ g(α)dα ≈ Σ wₖ g(αₖ)."""
    n = n_steps
    if rule is IgRule.GAUSSLEGENDRE:
        nodes, weights = np.polynomial.legendre.leggauss(n)
        return torch.from_numpy(0.5 * (1.0 + nodes)), torch.from_numpy(0.5 * weights)
    step = torch.full((n,), 1.0 / n, dtype=torch.float64)
    k = torch.arange(n, dtype=torch.float64)
    if rule is IgRule.RIEMANN_LEFT:
        return k / n, step
    if rule is IgRule.RIEMANN_RIGHT:
        return (k + 1) / n, step
    if rule is IgRule.RIEMANN_MIDDLE:
        return (k + 0.5) / n, step
    # A true trapezoid rule: n points spanning [0, 1], spacing 1/(n−1), halved end weights.
    # Captum 0.9 uses weight 1/n here, so its weights sum to (n−1)/n and its IG is short by that
    # factor (our parity test checks exactly this ratio).
    step = torch.full((n,), 1.0 / (n - 1), dtype=torch.float64)
    step[0] /= 2
    step[-1] /= 2
    return torch.linspace(0.0, 1.0, n, dtype=torch.float64), step
