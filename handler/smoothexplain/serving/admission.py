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
huge request after a restart is already judged. A probe taken while other workers start can be
many times too slow, so a request is never refused on a probe alone: the data plane probes
again first (the lower figure is kept) and refuses only if the fresh estimate still says so.

A rate is kept per input size and precision: per-call overheads make small inputs dearer per
feature, so a rate learned on tiny tensors would overestimate (and wrongly refuse) large ones.
An input size never run borrows the rate of the nearest larger size measured (cheaper per
feature: it can only underestimate, and an underestimate is cut by the deadlines as before), a
precision never run borrows the fp32 rates halved; with neither, the cost is unknown and the
request runs. When packing a batch, costs are multiplied by `COST_MARGIN`: batches run a little
slower than the sum of their parts. A request is refused alone only when its plain estimate is
over its bound, so the cheapest admissible one of a batch always runs.

Work done once per request before any model call is costed apart, per noise sampling scheme,
as seconds per input feature: QMC builds a scrambled Sobol engine per 21 201 features (seconds
for a 224² image, whatever the rows), which learned as a rate per row would make every later
request of that size look many times dearer than it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["COST_MARGIN", "MAX_SIZES", "CostModel", "admit_cheapest_first"]

COST_MARGIN = 1.25
MAX_SIZES = 64  # input sizes remembered per precision (the oldest measured one is dropped)
_SMOOTHING = 0.3  # weight of the newest run in the average
_BORROWED_PRECISION = 0.5  # a precision never run: the fp32 rate times this
_REFERENCE = "fp32"


@dataclass
class _Rate:
    seconds_per_unit: float
    measured: bool  # False while the start-up probe is the only figure


@dataclass
class CostModel:
    """Seconds per row-feature (one row of one input feature through forward + backward), per
    precision and input size (features per row)."""

    rates: dict[str, dict[int, _Rate]] = field(default_factory=dict)
    setup: dict[str, float] = field(default_factory=dict)  # noise sampling -> s per feature

    def estimate(
        self, rows: int, features: int, precision: str, sampling: str = "iid"
    ) -> float | None:
        """Seconds for `rows` rows of an input with `features` features, plus the request's
        set-up under `sampling`; None while the rows' rate is unknown."""
        rate = _lookup(self.rates.get(precision, {}), features)
        if rate is None and precision != _REFERENCE:
            reference = _lookup(self.rates.get(_REFERENCE, {}), features)
            rate = None if reference is None else reference * _BORROWED_PRECISION
        if rate is None:
            return None
        return (rate * rows + self.setup.get(sampling, 0.0)) * features

    def measured(self, features: int, precision: str) -> bool:
        """Whether the rate `estimate` uses for this size and precision comes from a run (not
        only from a probe, nor borrowed from another precision)."""
        chosen = _chosen(self.rates.get(precision, {}), features)
        return chosen is not None and chosen.measured

    def observe_setup(self, sampling: str, features: int, seconds: float) -> None:
        """One request's set-up under `sampling` took `seconds` for `features` features."""
        if features <= 0 or seconds < 0:
            return
        rate, known = seconds / features, self.setup.get(sampling)
        self.setup[sampling] = (
            rate if known is None else (1 - _SMOOTHING) * known + _SMOOTHING * rate
        )

    def observe(
        self, rows: int, features: int, seconds: float, precision: str, probe: bool = False
    ) -> None:
        """`rows` rows of `features` features took `seconds`. A probe only seeds a size and
        precision never run; the first real run replaces it."""
        if rows <= 0 or features <= 0 or seconds <= 0:
            return
        rate = seconds / (rows * features)
        sizes = self.rates.setdefault(precision, {})
        known = sizes.get(features)
        if known is None:
            if len(sizes) >= MAX_SIZES:
                _forget_oldest(sizes)
            sizes[features] = _Rate(rate, measured=not probe)
        elif probe:  # a repeated probe: start-up contention only ever adds time
            if not known.measured:
                known.seconds_per_unit = min(known.seconds_per_unit, rate)
            return
        elif not known.measured:
            known.seconds_per_unit, known.measured = rate, True
        else:
            known.seconds_per_unit = (1 - _SMOOTHING) * known.seconds_per_unit + _SMOOTHING * rate


def _chosen(sizes: dict[int, _Rate], features: int) -> _Rate | None:
    """The rate kept for `features`, else for the nearest larger size known, else None."""
    if features in sizes:
        return sizes[features]
    larger = [size for size in sizes if size > features]
    return sizes[min(larger)] if larger else None


def _lookup(sizes: dict[int, _Rate], features: int) -> float | None:
    chosen = _chosen(sizes, features)
    return None if chosen is None else chosen.seconds_per_unit


def _forget_oldest(sizes: dict[int, _Rate]) -> None:
    """Drop the oldest measured size (a probe's seed is kept)."""
    oldest = next((size for size, rate in sizes.items() if rate.measured), next(iter(sizes)))
    del sizes[oldest]


def admit_cheapest_first(costs: Sequence[float | None], seconds: float) -> list[bool]:
    """Which requests run: cheapest first while the running total, with `COST_MARGIN`, stays
    within `seconds`; the cheapest one runs even when only its plain cost fits (its bound was
    checked alone). Unknown costs (None) always run and count as nothing."""
    admitted = [cost is None for cost in costs]
    total = 0.0
    known = sorted((cost, index) for index, cost in enumerate(costs) if cost is not None)
    for cost, index in known:
        fits = cost <= seconds if total == 0.0 else total + COST_MARGIN * cost <= seconds
        if not fits:
            break
        admitted[index], total = True, total + COST_MARGIN * cost
    return admitted
