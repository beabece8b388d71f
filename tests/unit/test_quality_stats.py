"""Bootstrap means and paired differences, and Quantus Sparseness on hand-checkable maps."""

from __future__ import annotations

import math

import numpy as np
import pytest

from smoothexplain_quality.sparseness import sparseness
from smoothexplain_quality.stats import Estimate, mean_ci, paired_difference
from smoothexplain_quality.tables import (
    compare,
    error_constant,
    error_slope,
    markdown_table,
    needed_samples,
)


def test_constant_values_have_a_degenerate_interval() -> None:
    assert mean_ci([2.0] * 10) == Estimate(2.0, 2.0, 2.0, 10)


def test_interval_matches_normal_theory_for_many_values() -> None:
    values = np.random.default_rng(1).normal(5.0, 2.0, size=400)
    estimate = mean_ci(values)
    half = 1.96 * values.std(ddof=1) / np.sqrt(values.size)
    assert estimate.mean == pytest.approx(values.mean())
    assert estimate.low == pytest.approx(values.mean() - half, abs=0.25 * half)
    assert estimate.high == pytest.approx(values.mean() + half, abs=0.25 * half)


def test_nan_values_are_dropped_and_empty_gives_nan() -> None:
    assert mean_ci([1.0, np.nan, 3.0]).count == 2
    assert mean_ci([1.0, np.nan, 3.0]).mean == 2.0
    empty = mean_ci([np.nan])
    assert empty.count == 0 and np.isnan(empty.mean) and empty.format() == "n/a"


def test_interval_is_reproducible_and_formatted() -> None:
    assert mean_ci([0.0, 1.0, 1.0, 0.0]) == mean_ci([0.0, 1.0, 1.0, 0.0])
    assert Estimate(0.5, 0.25, 0.75, 4).format(2) == "0.50 [0.25, 0.75]"


def test_paired_difference_and_win_share() -> None:
    first, second = [1.0, 2.0, 3.0, np.nan], [0.5, 2.5, 1.0, 7.0]
    difference, wins = paired_difference(first, second)
    assert difference.count == 3
    assert difference.mean == pytest.approx((0.5 - 0.5 + 2.0) / 3)
    assert wins == pytest.approx(2 / 3)


def test_excludes_zero() -> None:
    assert Estimate(1.0, 0.1, 2.0, 5).excludes_zero()
    assert not Estimate(1.0, -0.1, 2.0, 5).excludes_zero()


def test_bad_level_is_refused() -> None:
    with pytest.raises(ValueError, match="level"):
        mean_ci([1.0], level=1.0)


def test_sparseness_gini_hand_values() -> None:
    maps = np.zeros((3, 2, 2))
    maps[0, 0, 0] = 1.0  # one pixel holds all: (n − 1)/n = 0.75
    maps[1] = [[1.0, 2.0], [3.0, 4.0]]  # Σ(2i − n − 1)aᵢ / (n Σa) = 10 / 40
    maps[2] = -maps[1] * 1e-6  # |·| and per-image scaling: same as image 1
    np.testing.assert_allclose(sparseness(maps), [0.75, 0.25, 0.25], atol=1e-5)


def test_sparseness_does_not_depend_on_batch_mates() -> None:
    maps = np.random.default_rng(0).random((3, 8, 8))
    maps[1] *= 1e-5
    together = sparseness(maps)
    alone = np.concatenate([sparseness(maps[i : i + 1]) for i in range(3)])
    np.testing.assert_allclose(together, alone, rtol=1e-6)


def test_sparseness_leaves_its_input_alone_and_checks_shape() -> None:
    maps = np.random.default_rng(0).random((2, 4, 4))
    before = maps.copy()
    sparseness(maps)
    np.testing.assert_array_equal(maps, before)
    with pytest.raises(ValueError, match="N, H, W"):
        sparseness(np.ones((4, 4)))


def test_error_constant_and_needed_samples_follow_one_over_root_n() -> None:
    # errors exactly k·√(1/n + 1/reference) with k = 2
    reference = 1000
    errors = {str(n): [2.0 * math.sqrt(1 / n + 1 / reference)] * 3 for n in (1, 4, 16, 64)}
    assert error_constant(errors, reference) == pytest.approx(2.0)
    assert needed_samples(errors, reference, (0.2, 0.1)) == [100, 400]
    with pytest.raises(ValueError, match="nt_samples >= 4"):
        error_constant({"1": [1.0]}, reference)


def test_compare_verdicts_and_table() -> None:
    assert compare([1.0, 2.0, 3.0], [0.0, 1.0, 2.0]).verdict == "higher"
    assert compare([0.0, 1.0, 2.0], [1.0, 2.0, 3.0]).verdict == "lower"
    assert compare([1.0, -1.0, 1.0, -1.0], [0.0, 0.0, 0.0, 0.0]).verdict == "tie"
    assert compare([1.0, 2.0], [0.5, 1.5]).format(1) == "+0.5 [+0.5, +0.5] (100 %)"
    assert markdown_table(["a", "b"], [["1", "2"]]) == "| a | b |\n|---|---|\n| 1 | 2 |"


def test_convergence_slope_of_an_exact_monte_carlo_curve() -> None:
    errors = {str(n): [3.0 / math.sqrt(n)] * 2 for n in (1, 4, 16, 64, 256)}
    assert error_slope(errors, reference=1024) == pytest.approx(-0.5)
    assert math.isnan(error_slope({"4": [1.0]}, reference=8))
