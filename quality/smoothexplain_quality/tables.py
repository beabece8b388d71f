"""Summaries of the per-image results: the numbers the report's tables and findings quote."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from .stats import Estimate, mean_ci, paired_difference

__all__ = [
    "Comparison",
    "compare",
    "error_constant",
    "error_slope",
    "markdown_table",
    "needed_samples",
    "noise_quantile",
]

Values = Sequence[float]


@dataclass(frozen=True)
class Comparison:
    """first − second, paired per image: the mean difference, its interval and the win share."""

    difference: Estimate
    wins: float

    @property
    def verdict(self) -> str:
        if not self.difference.excludes_zero():
            return "tie"
        return "higher" if self.difference.mean > 0 else "lower"

    def format(self, digits: int = 3) -> str:
        return f"{self.difference.mean:+.{digits}f} [{self.difference.low:+.{digits}f}, " + (
            f"{self.difference.high:+.{digits}f}] ({100 * self.wins:.0f} %)"
        )


def compare(first: Values, second: Values) -> Comparison:
    difference, wins = paired_difference(first, second)
    return Comparison(difference, wins)


def error_constant(errors: Mapping[str, Values], reference: int) -> float:
    """k in: mean relative error of an n-sample estimate ≈ k·√(1/n + 1/reference).

    The error is measured against an independent `reference`-sample estimate, so it holds two
    independent Monte-Carlo errors; k is averaged over n ≥ 4, where the mean of the error is
    close to its root-mean-square.
    """
    ks = [
        mean_ci(values).mean / math.sqrt(1 / int(n) + 1 / reference)
        for n, values in errors.items()
        if int(n) >= 4
    ]
    if not ks:
        raise ValueError("need errors measured at nt_samples >= 4")
    return sum(ks) / len(ks)


def error_slope(errors: Mapping[str, Sequence[float]], reference: int) -> float:
    """Least-squares slope of log(mean error) against log(n) over 4 ≤ n ≤ reference/8, where
    the reference's own error adds at most 6 % (all n when that leaves fewer than two)."""
    points = {int(n): math.log(mean_ci(v).mean) for n, v in errors.items()}
    chosen = [n for n in points if 4 <= n <= reference // 8]
    chosen = chosen if len(chosen) >= 2 else list(points)
    if len(chosen) < 2:
        return float("nan")
    x = np.log(np.array(chosen, dtype=np.float64))
    y = np.array([points[n] for n in chosen])
    return float(np.polyfit(x, y, 1)[0])


def needed_samples(
    errors: Mapping[str, Values], reference: int, targets: Sequence[float]
) -> list[int]:
    """nt_samples at which the mean relative error falls to each target (k²/target²)."""
    k = error_constant(errors, reference)
    return [math.ceil((k / target) ** 2) for target in targets]


def noise_quantile(confidence: float) -> float:
    """√2·erfinv(c), AdaptGrad's divisor: the two-sided standard-normal quantile of c."""
    return NormalDist().inv_cdf((1 + confidence) / 2)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
