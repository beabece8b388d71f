"""Deletion / insertion curves against a linear score, whose curves are known in closed form.

With s(x) = Σᵢ wᵢ·xᵢ, an all-ones image, a zero baseline and wᵢ = P, P − 1, …, 1 (the map's
own order), deleting the k most relevant pixels leaves s = (P − k)(P − k + 1)/2, so with one
step per pixel the trapezoid area is (P + 1)(P + 2)/6 − (P + 1)/4. Insertion adds what
deletion removes, and a random order removes k/P of the score in expectation: area s/2.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from smoothexplain_quality.faithfulness import area, curve, order, random_order

HEIGHT, WIDTH = 2, 3
PIXELS = HEIGHT * WIDTH
WEIGHTS = torch.arange(PIXELS, 0, -1, dtype=torch.float64).view(1, HEIGHT, WIDTH)
IMAGE = torch.ones(2, HEIGHT, WIDTH, dtype=torch.float64)  # two channels move together
BASELINE = torch.zeros_like(IMAGE)
TOTAL = float(PIXELS * 2 * (PIXELS + 1) / 2)


def linear(batch: torch.Tensor) -> torch.Tensor:
    return (batch * WEIGHTS).flatten(1).sum(dim=1)


def test_deletion_of_a_linear_score_follows_the_closed_form() -> None:
    values = curve(linear, IMAGE, BASELINE, order(WEIGHTS[0].numpy()), PIXELS)
    expected = [2 * (PIXELS - k) * (PIXELS - k + 1) / 2 for k in range(PIXELS + 1)]
    np.testing.assert_allclose(values, expected)
    closed = 2 * ((PIXELS + 1) * (PIXELS + 2) / 6 - (PIXELS + 1) / 4)
    assert area(values) == pytest.approx(closed)


def test_insertion_adds_what_deletion_removes() -> None:
    ranked = order(WEIGHTS[0].numpy())
    deletion = curve(linear, IMAGE, BASELINE, ranked, PIXELS)
    insertion = curve(linear, BASELINE, IMAGE, ranked, PIXELS)
    np.testing.assert_allclose(deletion + insertion, TOTAL)
    assert area(insertion) == pytest.approx(TOTAL - area(deletion))


def test_a_random_order_deletes_half_the_area_in_expectation() -> None:
    areas = [
        area(curve(linear, IMAGE, BASELINE, random_order(PIXELS, seed), PIXELS))
        for seed in range(400)
    ]
    assert np.mean(areas) == pytest.approx(TOTAL / 2, rel=0.03)
    best = area(curve(linear, IMAGE, BASELINE, order(WEIGHTS[0].numpy()), PIXELS))
    assert best < min(areas) + 1e-9  # the true order is the fastest deletion of all


def test_fewer_steps_move_round_k_p_over_steps_pixels_and_batching_does_not_matter() -> None:
    ranked = order(WEIGHTS[0].numpy())
    coarse = curve(linear, IMAGE, BASELINE, ranked, 3, batch=1)
    np.testing.assert_allclose(coarse, [TOTAL, 2 * (4 + 3 + 2 + 1), 2 * (2 + 1), 0.0])
    np.testing.assert_array_equal(coarse, curve(linear, IMAGE, BASELINE, ranked, 3, batch=16))


def test_order_ranks_most_relevant_first_ties_in_pixel_order() -> None:
    assert order(np.array([[0.5, 2.0], [0.5, 1.0]])).tolist() == [1, 3, 0, 2]
    assert sorted(random_order(10, 3).tolist()) == list(range(10))


def test_area_of_a_constant_curve_is_the_constant_and_bad_curves_are_refused() -> None:
    assert area([0.25] * 7) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="1-D curve"):
        area([1.0])
    with pytest.raises(ValueError, match="one shape"):
        curve(linear, IMAGE, BASELINE[:1], order(WEIGHTS[0].numpy()), 2)
