"""Admission by cost: explanations are admitted by their estimated seconds, before any is computed.

TorchServe answers a batch when the whole batch is done, so one huge explanation holds every
batch-mate, and every request queued behind the batch, for as long as it runs. The data plane
therefore estimates each explanation's cost before computing anything:

    seconds ≈ rows × input features × (seconds per row-feature, measured on this worker)

and answers at once what cannot finish: a request whose cost alone is above the per-batch limit
(400 naming `options.nt_samples`), one that cannot end before its own client deadline (504),
and the dearest ones that do not fit beside their batch-mates (503 UNAVAILABLE: not computed,
safe to send again). The rate is measured on every engine run (an exponential average, so load
changes are followed within a few batches) and seeded at start-up by a short probe, so the first
huge request after a restart is already judged. When packing a batch, costs are multiplied by
`COST_MARGIN`: batches run a little slower than the sum of their parts (interleaved jobs, a
loaded machine). A request is refused alone only when its plain estimate is over its bound.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["COST_MARGIN", "CostModel", "admit_cheapest_first"]

COST_MARGIN = 1.25
_SMOOTHING = 0.3  # weight of the newest run in the average


@dataclass
class CostModel:
    """Seconds per row-feature (one row of one input feature through forward + backward), per
    precision; `measured` is False while the start-up probe is the only figure."""

    rate: dict[str, float] = field(default_factory=dict)
    measured: dict[str, bool] = field(default_factory=dict)

    def estimate(self, rows: int, features: int, precision: str) -> float | None:
        """Seconds for `rows` rows of an input with `features` features; None while unknown."""
        rate = self.rate.get(precision)
        return None if rate is None else rate * rows * features

    def observe(self, units: int, seconds: float, precision: str, probe: bool = False) -> None:
        """`units` row-features took `seconds`. A probe only seeds a precision never run."""
        if units <= 0 or seconds <= 0:
            return
        rate = seconds / units
        if probe:
            self.rate.setdefault(precision, rate)
            self.measured.setdefault(precision, False)
            return
        if not self.measured.get(precision, False):  # the first real run replaces the probe
            self.rate[precision], self.measured[precision] = rate, True
            return
        self.rate[precision] = (1 - _SMOOTHING) * self.rate[precision] + _SMOOTHING * rate


def admit_cheapest_first(costs: Sequence[float | None], seconds: float) -> list[bool]:
    """Which requests run: cheapest first while the running total, with `COST_MARGIN`, stays
    within `seconds`. Unknown costs (None) always run and count as nothing."""
    admitted = [cost is None for cost in costs]
    total = 0.0
    known = sorted((cost, index) for index, cost in enumerate(costs) if cost is not None)
    for cost, index in known:
        if total + COST_MARGIN * cost > seconds:
            break
        admitted[index], total = True, total + COST_MARGIN * cost
    return admitted
