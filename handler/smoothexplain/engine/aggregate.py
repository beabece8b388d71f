"""Streaming aggregation of per-sample attributions: O(input) memory, float64, variance >= 0."""

from __future__ import annotations

import torch

from .spec import NtType

__all__ = ["Moments"]


class Moments:
    """Running sums in float64, one sample at a time in sample order.

    Second moments use sums shifted by the first sample, Σ(M − M₀) and Σ(M − M₀)², so that
    the variance never suffers the cancellation of Captum's float32 E[M²] − E[M]², and identical
    samples (AdaptGrad at a bound) give exactly 0. Because samples are added one by one in
    their own order, the result is bit-identical whatever chunks they arrived in.

    `add_pairs` feeds pairs (a, b) of independent, unbiased estimates of one sample's M (joint
    IG, engine/joint.py) instead: the sums above then run over m = (a + b)/2, and two more
    track Σ(a − M₀)(b − M₀) and Σ(a − b)/2, from which mean(a·b) and mean(a)·mean(b) follow
    exactly — the product estimators of E[M²] and of the variance.
    """

    def __init__(self, second_moment: bool = True) -> None:
        self.second_moment = second_moment  # False: only the mean is needed (smoothgrad)
        self.count = 0
        self.shift: torch.Tensor | None = None
        self.total: torch.Tensor | None = None
        self.total_sq: torch.Tensor | None = None
        self.cross: torch.Tensor | None = None  # pairs only: Σ(a − shift)(b − shift)
        self.half_diff: torch.Tensor | None = None  # pairs only: Σ(a − b)/2

    def add(self, samples: torch.Tensor) -> None:
        """Add a batch of samples stacked on dim 0, in order."""
        for sample in samples:
            self._add_one(sample)

    def add_pairs(self, first: torch.Tensor, second: torch.Tensor) -> None:
        """Add pairs (first[s], second[s]) of estimates of sample s's M, stacked on dim 0."""
        for a, b in zip(first, second, strict=True):
            self._add_pair(a.to(torch.float64), b.to(torch.float64))

    def _add_pair(self, a: torch.Tensor, b: torch.Tensor) -> None:
        if not self.second_moment or (self.count and self.cross is None):
            raise RuntimeError("pairs need Moments(second_moment=True) and no single samples")
        self._add_one((a + b) / 2)
        assert self.shift is not None
        if self.cross is None or self.half_diff is None:
            self.cross, self.half_diff = torch.zeros_like(self.shift), torch.zeros_like(self.shift)
        self.cross.addcmul_(a - self.shift, b - self.shift)
        self.half_diff.add_((a - b) / 2)

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
        if self.cross is not None and self.half_diff is not None:
            return self._pair_result(nt_type, mean_offset)
        # Rounding can leave −1e−17-sized values where the spread is 0: variance is ≥ 0.
        variance = (self.total_sq / self.count - mean_offset.square()).clamp(min=0.0)
        if nt_type is NtType.VARGRAD:
            return variance
        mean = self.shift + mean_offset
        if nt_type is NtType.SMOOTHGRAD_SQ:
            return variance + mean.square()
        return mean

    def _pair_result(self, nt_type: NtType, mean_offset: torch.Tensor) -> torch.Tensor:
        assert self.shift is not None and self.cross is not None and self.half_diff is not None
        half = self.half_diff / self.count  # (mean(a) − mean(b)) / 2
        mean = self.shift + mean_offset
        if nt_type is NtType.SMOOTHGRAD:
            return mean
        # mean((a − K)(b − K)) − mean(a − K)·mean(b − K), and mean(a)·mean(b) = mean² − half².
        covariance = self.cross / self.count - (mean_offset.square() - half.square())
        if nt_type is NtType.VARGRAD:
            return covariance.clamp(min=0.0)
        return (covariance + mean.square() - half.square()).clamp(min=0.0)
