"""Rows per model call chosen by measured speed: the tuner's choices, and a tuned scheduler's
answers equal the untuned ones."""

from __future__ import annotations

import time
from collections import Counter

import pytest
import torch
from torch import nn

from smoothexplain import ExplainJob, Scheduler, make_spec
from smoothexplain.engine.pass_tuning import REVISIT_EVERY, TRIALS, PassTuner

from .analytic import small_cnn


def test_candidates_are_the_cap_and_its_halvings() -> None:
    assert PassTuner.candidates(32) == [32, 16, 8, 4]
    assert PassTuner.candidates(3) == [3, 1]
    assert PassTuner.candidates(1) == [1]


def _feed(tuner: PassTuner, cost: dict[int, float], calls: int, cap: int = 32) -> list[int]:
    """Run `calls` choices, each timed as rows × cost[rows] seconds; the sizes chosen."""
    chosen = []
    for _ in range(calls):
        rows = tuner.choose("kind", cap)
        tuner.record("kind", rows, rows * cost[rows])
        chosen.append(rows)
    return chosen


def test_every_candidate_is_tried_then_the_fastest_per_row_wins() -> None:
    tuner = PassTuner()
    cost = {32: 3.0, 16: 2.0, 8: 1.0, 4: 1.5}  # seconds per row
    chosen = _feed(tuner, cost, 4 * TRIALS + 20)
    assert chosen[: 4 * TRIALS] == [32] * TRIALS + [16] * TRIALS + [8] * TRIALS + [4] * TRIALS
    assert Counter(chosen[4 * TRIALS :]).most_common(1)[0][0] == 8
    assert tuner.seconds_per_row("kind", 8) == 1.0
    assert tuner.seconds_per_row("kind", 5) == float("inf")


def test_the_others_are_measured_again_now_and_then() -> None:
    tuner = PassTuner()
    cost = {32: 1.0, 16: 2.0, 8: 2.0, 4: 2.0}
    chosen = _feed(tuner, cost, 4 * TRIALS + 3 * REVISIT_EVERY)
    revisits = [rows for rows in chosen[4 * TRIALS :] if rows != 32]
    assert 2 <= len(revisits) <= 3  # one every REVISIT_EVERY calls
    # The machine changes and 8-row calls become the fastest: only the revisits can see it.
    cost[8] = 0.5
    later = _feed(tuner, cost, 20 * REVISIT_EVERY)
    assert Counter(later[-REVISIT_EVERY:]).most_common(1)[0][0] == 8


def test_kinds_are_tuned_separately() -> None:
    tuner = PassTuner()
    for _ in range(4 * TRIALS):
        for kind, best in (("small images", 32), ("large images", 4)):
            rows = tuner.choose(kind, 32)
            tuner.record(kind, rows, rows * (1.0 if rows == best else 2.0))
    assert tuner.choose("small images", 32) == 32
    assert tuner.choose("large images", 32) == 4


class _Slow(nn.Module):
    """small_cnn that sleeps rows² × 1.5 ms a call: per row, smaller calls are faster (by more
    than the per-call overhead of a forward + backward, which favours larger calls)."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = small_cnn()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(1.5e-3 * x.shape[0] ** 2)
        out: torch.Tensor = self.inner(x)
        return out


def test_a_tuned_scheduler_moves_to_the_faster_calls_and_answers_the_same() -> None:
    model = _Slow()
    x = torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(0))
    jobs = [ExplainJob(x, t, make_spec(nt_samples=120, stdevs=0.2), seed=t) for t in range(3)]
    plain = Scheduler(model, chunk_rows=16).run(jobs)
    tuned_scheduler = Scheduler(model, chunk_rows=16, tune_pass_rows=True)
    tuned = tuned_scheduler.run(jobs)
    calls = tuned_scheduler.stats.chunk_rows
    assert sum(calls) == 360 and set(calls) <= {16, 8, 4, 2}
    assert Counter(calls[4 * TRIALS :]).most_common(1)[0][0] == 2
    for a, b in zip(plain, tuned, strict=True):
        torch.testing.assert_close(a.attribution, b.attribution, rtol=1e-6, atol=1e-9)
        assert a.samples == b.samples == 120


def test_a_short_pass_is_tuned_among_the_sizes_it_can_fill() -> None:
    tuner = PassTuner()
    cost = {8: 2.0, 4: 1.0, 6: 9.0}
    assert _feed_left(tuner, cost, 2 * TRIALS + 4, rows_left=8)[-4:] == [4] * 4
    assert tuner.choose("kind", 32, rows_left=6) == 4
    assert tuner.choose("kind", 32, rows_left=3) == 3  # smaller than every candidate


def _feed_left(tuner: PassTuner, cost: dict[int, float], calls: int, rows_left: int) -> list[int]:
    chosen = []
    for _ in range(calls):
        rows = tuner.choose("kind", 32, rows_left)
        tuner.record("kind", rows, rows * cost[rows])
        chosen.append(rows)
    return chosen


def test_serving_tunes_only_when_the_config_asks() -> None:
    from smoothexplain.protocol.errors import InvalidArgument
    from smoothexplain.serving.config import parse_config
    from smoothexplain.serving.service import ExplainService

    base = {
        "model_class": "tests.unit.analytic:small_cnn",
        "preprocess": {"size": 8, "resize": 8, "mean": [0.5] * 3, "std": [0.25] * 3},
    }
    cpu = torch.device("cpu")
    plain = ExplainService(small_cnn(), parse_config(base), {}, cpu, "tiny")
    assert plain.scheduler.tuner is None  # default: bit-identical answers to repeated requests
    tuned_config = parse_config({**base, "tune_pass_rows": True})
    assert ExplainService(small_cnn(), tuned_config, {}, cpu, "tiny").scheduler.tuner is not None
    with pytest.raises(InvalidArgument, match="tune_pass_rows' must be a bool") as err:
        parse_config({**base, "tune_pass_rows": "yes"})
    assert err.value.field == "tune_pass_rows"


def test_tuned_calls_stay_within_a_memory_budget() -> None:
    x = torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(2))
    scheduler = Scheduler(small_cnn(), chunk_rows=64, memory_budget=40_000, tune_pass_rows=True)
    job = ExplainJob(x, 0, make_spec(nt_samples=200), seed=0)
    for _ in range(3):
        (result,) = scheduler.run([job])
        assert result.samples == 200
    (per_row,) = scheduler.row_bytes.values()
    limit = 40_000 // per_row
    assert 1 <= limit < 64 and max(scheduler.stats.chunk_rows) <= limit
