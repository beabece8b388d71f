"""The report's own metrics on inputs whose answers can be worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from smoothexplain.engine.noise import adaptive_sigma
from smoothexplain_quality.metrics import (
    out_of_range,
    pointing_game,
    pool,
    rank_average,
    relative_error,
    relevance_mass,
    relevance_rank,
    spearman,
)

# One 2×3 image: the mask is the left column.
MASK = np.array([[[True, False, False], [True, False, False]]])


def test_pool_sums_absolute_values_over_channels() -> None:
    attributions = np.array([[[[1.0, -2.0]], [[-3.0, 0.5]]]])  # (1, 2, 1, 2)
    np.testing.assert_array_equal(pool(attributions), [[[4.0, 2.5]]])


def test_pool_rejects_unbatched_maps() -> None:
    with pytest.raises(ValueError, match="N, C, H, W"):
        pool(np.zeros((3, 4, 4)))


def test_relevance_mass_is_share_inside_mask() -> None:
    maps = np.array([[[3.0, 1.0, 0.0], [1.0, 0.0, 5.0]]])
    # inside: 3 + 1 = 4 of a total 10
    np.testing.assert_allclose(relevance_mass(maps, MASK), [0.4])


def test_relevance_mass_of_uniform_map_is_mask_area() -> None:
    np.testing.assert_allclose(relevance_mass(np.ones((1, 2, 3)), MASK), [2 / 6])


def test_relevance_mass_is_nan_for_zero_map_and_refuses_negative() -> None:
    assert np.isnan(relevance_mass(np.zeros((1, 2, 3)), MASK)[0])
    with pytest.raises(ValueError, match="non-negative"):
        relevance_mass(-np.ones((1, 2, 3)), MASK)


def test_relevance_mass_checks_shapes() -> None:
    with pytest.raises(ValueError, match="one shape"):
        relevance_mass(np.ones((1, 3, 2)), MASK)


def test_relevance_rank_counts_top_k_inside() -> None:
    # K = 2; the two largest values are 9 (inside) and 7 (outside) → 1/2
    maps = np.array([[[9.0, 7.0, 0.0], [1.0, 0.0, 2.0]]])
    np.testing.assert_allclose(relevance_rank(maps, MASK), [0.5])
    perfect = np.array([[[9.0, 1.0, 0.0], [8.0, 0.0, 2.0]]])
    np.testing.assert_allclose(relevance_rank(perfect, MASK), [1.0])


def test_relevance_rank_is_nan_for_empty_mask() -> None:
    assert np.isnan(relevance_rank(np.ones((1, 2, 3)), np.zeros((1, 2, 3), bool))[0])


def test_pointing_game_per_image() -> None:
    maps = np.array(
        [
            [[0.0, 0.0, 0.0], [5.0, 1.0, 0.0]],  # max at a mask pixel
            [[1.0, 0.0, 3.0], [0.0, 0.0, 0.0]],  # max outside
        ]
    )
    np.testing.assert_array_equal(pointing_game(maps, np.repeat(MASK, 2, axis=0)), [1.0, 0.0])


def test_rank_average_shares_ranks_among_ties() -> None:
    np.testing.assert_array_equal(rank_average([10, 20, 20, 5]), [2.0, 3.5, 3.5, 1.0])


def test_spearman_hand_values() -> None:
    a = np.array([[1.0, 2.0, 3.0, 4.0]])
    np.testing.assert_allclose(spearman(a, a**3), [1.0])  # monotone → 1
    np.testing.assert_allclose(spearman(a, -a), [-1.0])
    # ranks [1,2,3,4] vs [2,1,4,3]: d² = 1+1+1+1 = 4, ρ = 1 − 6·4 / (4·15) = 0.6
    np.testing.assert_allclose(spearman(a, np.array([[2.0, 1.0, 4.0, 3.0]])), [0.6])


def test_spearman_with_ties_matches_pearson_on_average_ranks() -> None:
    a, b = np.array([[1.0, 1.0, 2.0, 3.0]]), np.array([[1.0, 2.0, 3.0, 3.0]])
    ra, rb = np.array([1.5, 1.5, 3.0, 4.0]), np.array([1.0, 2.0, 3.5, 3.5])
    np.testing.assert_allclose(spearman(a, b), [np.corrcoef(ra, rb)[0, 1]])


def test_spearman_of_constant_map_is_nan() -> None:
    assert np.isnan(spearman(np.ones((1, 4)), np.array([[1.0, 2.0, 3.0, 4.0]]))[0])


def test_relative_error() -> None:
    ref = np.array([[3.0, 4.0], [0.0, 0.0]])
    est = np.array([[3.0, 5.0], [1.0, 0.0]])
    out = relative_error(est, ref)
    np.testing.assert_allclose(out[0], 1 / 5)
    assert np.isnan(out[1])


def test_out_of_range_closed_form() -> None:
    low, high = torch.tensor(0.0), torch.tensor(1.0)
    x = torch.tensor([[0.5, 0.0], [1.0, 0.25]])
    # σ = 0.25: 0.5 is 2σ from each bound → 2·Φ(−2); a bound value leaves half the time (+ Φ(−4))
    out = out_of_range(x, torch.tensor(0.25), low, high)
    phi = torch.special.ndtr
    expected0 = (2 * phi(torch.tensor(-2.0)) + 0.5 + phi(torch.tensor(-4.0))) / 2
    expected1 = (
        0.5 + phi(torch.tensor(-4.0)) + phi(torch.tensor(-1.0)) + phi(torch.tensor(-3.0))
    ) / 2
    np.testing.assert_allclose(out, [float(expected0), float(expected1)], rtol=1e-6)


def test_out_of_range_of_adaptgrad_is_at_most_one_minus_c() -> None:
    low, high = torch.tensor(-1.0), torch.tensor(1.0)
    x = torch.linspace(-1.0, 1.0, 101).view(1, -1)
    sigma = adaptive_sigma(x, low, high, 0.95)
    # The nearer bound alone is left with probability (1 − c)/2, the far one adds a little.
    share = out_of_range(x, sigma, low, high)
    assert 0.0 < share[0] <= 0.05
    assert out_of_range(torch.tensor([[1.0]]), torch.tensor(0.0), low, high)[0] == 0.0
