"""Means with 95 % percentile-bootstrap confidence intervals, plain and paired.

Percentile bootstrap (Efron): resample the per-image values with replacement, take the mean of
each resample, and report the 2.5 % and 97.5 % quantiles of those means. It needs no normality
assumption, which matters for bounded scores such as the pointing game (0/1 per image). The
resampling generator is seeded, so a report is reproducible to the last digit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["Estimate", "mean_ci", "paired_difference"]

RESAMPLES = 4000


@dataclass(frozen=True)
class Estimate:
    """A mean, its confidence interval [low, high] and the number of values it rests on."""

    mean: float
    low: float
    high: float
    count: int

    def format(self, digits: int = 3) -> str:
        """``0.512 [0.498, 0.526]``."""
        if self.count == 0:
            return "n/a"
        return f"{self.mean:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"

    def excludes_zero(self) -> bool:
        return self.count > 0 and (self.low > 0 or self.high < 0)


def mean_ci(
    values: npt.ArrayLike, *, level: float = 0.95, resamples: int = RESAMPLES, seed: int = 0
) -> Estimate:
    """Mean of the finite values and its percentile-bootstrap interval at `level`."""
    if not 0 < level < 1 or resamples < 1:
        raise ValueError(f"need 0 < level < 1 and resamples >= 1, got {level}, {resamples}")
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    if x.size == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return Estimate(float(x.mean()), float(low), float(high), int(x.size))


def paired_difference(
    first: npt.ArrayLike, second: npt.ArrayLike, *, level: float = 0.95, seed: int = 0
) -> tuple[Estimate, float]:
    """Mean of first − second over images where both are finite, and the share where first wins.

    Pairing removes the between-image spread, which is far larger than the method effect.
    """
    a, b = np.asarray(first, dtype=np.float64).ravel(), np.asarray(second, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired values must have one shape, got {a.shape} and {b.shape}")
    both = np.isfinite(a) & np.isfinite(b)
    diff = a[both] - b[both]
    wins = float((diff > 0).mean()) if diff.size else float("nan")
    return mean_ci(diff, level=level, seed=seed), wins
