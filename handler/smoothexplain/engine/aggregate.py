"""Streaming aggregation of per-sample attributions: O(input) memory, float64, variance >= 0."""

from __future__ import annotations

import torch

from ..spec import NtType

__all__ = ["Moments"]


class Moments:
    """Running mean and sum of squared deviations (Welford / Chan merge) in float64.

    E[M²] − E[M]² in float32 (Captum's VarGrad) cancels catastrophically and can go negative;
    the centred sum of squares here cannot.
    """

    def __init__(self, second_moment: bool = True) -> None:
        self.second_moment = second_moment  # False: only the mean is needed (smoothgrad)
        self.count = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None

    def add(self, samples: torch.Tensor) -> None:
        """Merge a batch of samples stacked on dim 0."""
        n_b = samples.shape[0]
        mean_b = samples.sum(dim=0, dtype=torch.float64) / n_b
        if not self.second_moment:
            m2_b = torch.zeros((), dtype=torch.float64, device=samples.device)
        else:
            centred = samples.to(torch.float64) - mean_b
            # One refinement pass: the batch mean becomes exact enough that identical samples
            # (AdaptGrad at a bound) give a variance of exactly 0.
            correction = centred.mean(dim=0)
            mean_b, centred = mean_b + correction, centred - correction
            m2_b = centred.square().sum(dim=0)
        if self.mean is None or self.m2 is None:
            self.count, self.mean, self.m2 = n_b, mean_b, m2_b
            return
        total = self.count + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / total)
        if self.second_moment:
            self.m2 = self.m2 + m2_b + delta.square() * (self.count * n_b / total)
        self.count = total

    def result(self, nt_type: NtType) -> torch.Tensor:
        if self.mean is None or self.m2 is None:
            raise RuntimeError("no samples were aggregated")
        if nt_type in (NtType.SMOOTHGRAD_SQ, NtType.VARGRAD) and not self.second_moment:
            raise RuntimeError(f"{nt_type} needs Moments(second_moment=True)")
        variance = self.m2 / self.count
        if nt_type is NtType.VARGRAD:
            return variance
        if nt_type is NtType.SMOOTHGRAD_SQ:
            return variance + self.mean.square()
        return self.mean
