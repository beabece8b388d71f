"""Explanation metrics we compute ourselves, as pure functions on numpy arrays.

Every map metric takes *pooled* maps: one non-negative relevance value per pixel, ``(N, H, W)``
(see :func:`pool`). Masks are boolean ``(N, H, W)``. Each function returns one value per image.

- relevance mass accuracy (Arras et al., 2022, CLEVR-XAI): the share of the map's total
  relevance that lies inside the mask; a map that ignores the mask scores the mask's area share;
- relevance rank accuracy (ibid.): the share of the K most relevant pixels that lie inside the
  mask, K = the mask's pixel count;
- pointing game (Zhang et al., 2018): 1 if the most relevant pixel lies inside the mask, else 0
  (no tolerance band: at 64×64 one pixel is already 1/64 of the width);
- Spearman rank correlation between two maps (Adebayo et al., 2018, sanity checks), ties
  ranked by their average rank;
- relative L2 error of a map against a reference (the Monte-Carlo convergence study);
- the share of noisy features that leave the input range (the AdaptGrad paper's "inherent
  noise"), in closed form: P(x + ε ∉ [low, high]) = Φ((low − x)/σ) + Φ((x − high)/σ).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch

__all__ = [
    "FloatArray",
    "out_of_range",
    "pointing_game",
    "pool",
    "rank_average",
    "relative_error",
    "relevance_mass",
    "relevance_rank",
    "spearman",
]

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


def pool(attributions: npt.ArrayLike) -> FloatArray:
    """``(N, C, H, W)`` attributions → ``(N, H, W)`` relevance: Σ_c |A_c|, as the heatmaps show."""
    values = np.asarray(attributions, dtype=np.float64)
    if values.ndim != 4:
        raise ValueError(f"attributions must be (N, C, H, W), got shape {values.shape}")
    pooled: FloatArray = np.abs(values).sum(axis=1)
    return pooled


def _flat(maps: npt.ArrayLike, masks: npt.ArrayLike) -> tuple[FloatArray, BoolArray]:
    relevance = np.asarray(maps, dtype=np.float64)
    inside = np.asarray(masks, dtype=np.bool_)
    if relevance.shape != inside.shape or relevance.ndim < 2:
        raise ValueError(
            f"maps and masks must both be (N, ...) of one shape, got {relevance.shape} and "
            f"{inside.shape}"
        )
    if bool((relevance < 0).any()):
        raise ValueError("maps must be non-negative (pool signed attributions first)")
    n = relevance.shape[0]
    return relevance.reshape(n, -1), inside.reshape(n, -1)


def relevance_mass(maps: npt.ArrayLike, masks: npt.ArrayLike) -> FloatArray:
    """Σ relevance inside the mask / Σ relevance, per image; NaN for an all-zero map."""
    relevance, inside = _flat(maps, masks)
    total = relevance.sum(axis=1)
    within = np.where(inside, relevance, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        share: FloatArray = np.where(total > 0, within / total, np.nan)
    return share


def relevance_rank(maps: npt.ArrayLike, masks: npt.ArrayLike) -> FloatArray:
    """Share of the top-K pixels (K = mask size) that are inside the mask, per image.

    Ties at the K-th value are broken by pixel order (a stable sort), so a constant map scores
    the share of the mask among the first K pixels rather than an undefined value.
    """
    relevance, inside = _flat(maps, masks)
    scores = np.empty(relevance.shape[0])
    for i, (row, mask) in enumerate(zip(relevance, inside, strict=True)):
        k = int(mask.sum())
        if k == 0:
            scores[i] = np.nan
            continue
        top = np.argsort(-row, kind="stable")[:k]
        scores[i] = mask[top].mean()
    return scores


def pointing_game(maps: npt.ArrayLike, masks: npt.ArrayLike) -> FloatArray:
    """1.0 where the maximum of the map (first one in pixel order) is inside the mask, else 0.0."""
    relevance, inside = _flat(maps, masks)
    hits: BoolArray = inside[np.arange(relevance.shape[0]), relevance.argmax(axis=1)]
    return hits.astype(np.float64)


def rank_average(values: npt.ArrayLike) -> FloatArray:
    """Ranks 1..n of a 1-D array, ties sharing the average of the ranks they span."""
    x = np.asarray(values, dtype=np.float64).ravel()
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    # Each run of equal values [start, end) gets the mean of ranks start+1 … end.
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], x.size]
    ranks = np.empty(x.size)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def spearman(first: npt.ArrayLike, second: npt.ArrayLike) -> FloatArray:
    """Spearman's ρ between matching maps ``(N, ...)``, per image; NaN where one is constant."""
    a, b = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    if a.shape != b.shape or a.ndim < 2:
        raise ValueError(f"maps must be (N, ...) of one shape, got {a.shape} and {b.shape}")
    scores = np.empty(a.shape[0])
    for i in range(a.shape[0]):
        ra, rb = rank_average(a[i]), rank_average(b[i])
        ra -= ra.mean()
        rb -= rb.mean()
        norm = float(np.sqrt((ra * ra).sum() * (rb * rb).sum()))
        scores[i] = float((ra * rb).sum()) / norm if norm > 0 else np.nan
    return scores


def relative_error(estimates: npt.ArrayLike, reference: npt.ArrayLike) -> FloatArray:
    """‖estimate − reference‖₂ / ‖reference‖₂ per image, over all remaining axes."""
    est, ref = np.asarray(estimates, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if est.shape != ref.shape or est.ndim < 2:
        raise ValueError(f"need matching (N, ...) arrays, got {est.shape} and {ref.shape}")
    n = est.shape[0]
    diff = np.linalg.norm((est - ref).reshape(n, -1), axis=1)
    scale = np.linalg.norm(ref.reshape(n, -1), axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        error: FloatArray = np.where(scale > 0, diff / scale, np.nan)
    return error


def out_of_range(
    inputs: torch.Tensor, sigma: torch.Tensor, low: torch.Tensor, high: torch.Tensor
) -> FloatArray:
    """Mean over features of P(xᵢ + εᵢ ∉ [low, high]), εᵢ ~ N(0, σᵢ²), per input ``(N, ...)``.

    Features with σᵢ = 0 never leave the range (inputs are assumed inside it).
    """
    x = inputs.double()
    scale = torch.as_tensor(sigma, dtype=torch.float64).expand_as(x)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    below = torch.special.ndtr((low.double() - x) / safe)
    above = torch.special.ndtr((x - high.double()) / safe)
    share = torch.where(scale > 0, below + above, torch.zeros_like(x))
    result: FloatArray = share.flatten(1).mean(dim=1).numpy()
    return result
