"""Streaming aggregation of per-sample attributions: O(input) memory, float64, variance >= 0."""

from __future__ import annotations

import torch

from ..spec import NtType

__all__ = ["Moments"]


class Moments:
    """Running sums in float64, one sample at a time in sample order.

    Second moments use sums shifted by the first sample, Σ(M − M₀) and Σ(M − M₀)², so that
    the variance never suffers the cancellation of Captum's float32 E[M²] − E[M]², and identical
    samples (AdaptGrad at a bound) give exactly 0. Because samples are added one by one in
    their own order, the result is bit-identical whatever chunks they arrived in.
    """

    def __init__(self, second_moment: bool = True) -> None:
        self.second_moment = second_moment  # False: only the mean is needed (smoothgrad)
        self.count = 0
        self.shift: torch.Tensor | None = None
        self.total: torch.Tensor | None = None
        self.total_sq: torch.Tensor | None = None

    def add(self, samples: torch.Tensor) -> None:
        """Add a batch of samples stacked on dim 0, in order."""
        for sample in samples:
            self._add_one(sample)

    def _add_one(self, sample: torch.Tensor) -> None:
        if self.total is None:
            self.total = torch.zeros(sample.shape, dtype=torch.float64, device=sample.device)
            if self.second_moment:
                self.shift = sample.to(torch.float64)
                self.total_sq = torch.zeros_like(self.total)
        self.count += 1
        if self.shift is None or self.total_sq is None:
            self.total.add_(sample)
            return
        deviation = sample - self.shift  # promoted to float64
        self.total.add_(deviation)
        self.total_sq.addcmul_(deviation, deviation)

    def result(self, nt_type: NtType) -> torch.Tensor:
        if self.total is None:
            raise RuntimeError("no samples were aggregated")
        mean_offset = self.total / self.count
        if self.shift is None or self.total_sq is None:
            if nt_type in (NtType.SMOOTHGRAD_SQ, NtType.VARGRAD):
                raise RuntimeError(f"{nt_type} needs Moments(second_moment=True)")
            return mean_offset
        # Rounding can leave −1e−17-sized values where the spread is 0: variance is ≥ 0.
        variance = (self.total_sq / self.count - mean_offset.square()).clamp(min=0.0)
        if nt_type is NtType.VARGRAD:
            return variance
        mean = self.shift + mean_offset
        if nt_type is NtType.SMOOTHGRAD_SQ:
            return variance + mean.square()
        return mean
