"""Rows per model call chosen by measured speed: the pass size with the lowest time per row.

Bigger passes are not always faster per row. A GPU wants them large; on a CPU a ResNet pass of
32 rows at 224² has activation blocks too large for malloc to reuse, page-faults them in on every
call and costs more per row than a pass of 8. The tuner
tries each candidate size (the cap, then halvings) a few times, then uses the fastest, and now
and then measures the others again so that it follows changes in load. Rows are independent of
each other, so answers change only by rounding (batched kernels round differently per call size).
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Hashable

__all__ = ["PassTuner"]

TRIALS = 3  # timed calls per candidate before it can be chosen
WINDOW = 5  # recent timings kept per candidate
REVISIT_EVERY = 100  # calls between re-measurements of the stalest other candidate (~1 % cost)
HALVINGS = 3  # candidates: cap, cap/2, cap/4, cap/8


class PassTuner:
    """Per kind of row (shape, dtype, device, …): timings per candidate pass size."""

    def __init__(self) -> None:
        self._timings: dict[tuple[Hashable, int], deque[float]] = {}
        self._calls: dict[Hashable, int] = {}
        self._last_used: dict[tuple[Hashable, int], int] = {}

    @staticmethod
    def candidates(cap: int) -> list[int]:
        """The cap and its halvings (at least one row), largest first, without repeats."""
        sizes = [max(1, cap >> shift) for shift in range(HALVINGS + 1)]
        return sorted(set(sizes), reverse=True)

    def choose(self, kind: Hashable, cap: int, rows_left: int | None = None) -> int:
        """Rows for the next call of this kind: a candidate for `cap` no larger than `rows_left`
        (the rest of the pass), or `rows_left` when even the smallest is larger."""
        sizes = [s for s in self.candidates(cap) if rows_left is None or s <= rows_left]
        if not sizes:
            assert rows_left is not None
            return rows_left
        calls = self._calls.get(kind, 0)
        for size in sizes:  # explore: every candidate gets its trials first
            if len(self._timings.get((kind, size), ())) < TRIALS:
                return size
        if calls and calls % REVISIT_EVERY == 0:
            return min(sizes, key=lambda s: self._last_used.get((kind, s), -1))
        return min(sizes, key=lambda s: self.seconds_per_row(kind, s))

    def record(self, kind: Hashable, rows: int, seconds: float) -> None:
        """The measured time of one call of `rows` rows."""
        calls = self._calls.get(kind, 0) + 1
        self._calls[kind] = calls
        timings = self._timings.setdefault((kind, rows), deque(maxlen=WINDOW))
        timings.append(seconds / rows)
        self._last_used[(kind, rows)] = calls

    def seconds_per_row(self, kind: Hashable, rows: int) -> float:
        """Median recent time per row of calls of `rows` rows (inf when never measured)."""
        timings = self._timings.get((kind, rows))
        return statistics.median(timings) if timings else float("inf")
