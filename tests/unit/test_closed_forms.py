"""Attributions of separable analytic models against their closed forms.

Every model here is a sum over features, so the attribution of feature i is a scalar function g of
the noisy value x̃ᵢ = xᵢ + σᵢZ. Its moments E[g(x̃)ᵏ] are computed by Gauss–Hermite quadrature (exact
for the polynomial models) and each aggregate is checked within 5 standard errors of the estimator,
derived from those same moments — no loose constants.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch

from smoothexplain import explain
from smoothexplain.engine.quadrature import path_points
from smoothexplain.engine.spec import IgRule

from .analytic import PolyScores, ReluSquare

Z975 = 1.959963984540054  # √2·erfinv(0.95): the two-sided 95 % normal quantile
N_SAMPLES = 3000
LOW, HIGH = -1.0, 1.5


def _features() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    shape = (1, 2, 3, 3)
    x = LOW + (HIGH - LOW) * torch.rand(shape, generator=g, dtype=torch.float64)
    x.view(-1)[0] = LOW  # exactly at a bound: AdaptGrad must draw no noise there
    x.view(-1)[1] = HIGH
    a = torch.randn(shape[1:], generator=g, dtype=torch.float64)
    c = torch.randn(shape[1:], generator=g, dtype=torch.float64)
    return x, a, c


def _moments(
    g: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, sigma: torch.Tensor
) -> list[torch.Tensor]:
    nodes, weights = np.polynomial.hermite_e.hermegauss(150)
    z = torch.from_numpy(nodes)
    w = torch.from_numpy(weights) / math.sqrt(2 * math.pi)
    values = g(x.unsqueeze(-1) + sigma.unsqueeze(-1) * z)
    return [(values.pow(k) * w).sum(-1) for k in (1, 2, 3, 4)]


def _expected(nt_type: str, m: list[torch.Tensor], n: int) -> tuple[torch.Tensor, torch.Tensor]:
    m1, m2, m3, m4 = m
    if nt_type == "smoothgrad":
        return m1, ((m2 - m1**2).clamp(min=0) / n).sqrt()
    if nt_type == "smoothgrad_sq":
        return m2, ((m4 - m2**2).clamp(min=0) / n).sqrt()
    var = (m2 - m1**2).clamp(min=0)
    central4 = m4 - 4 * m3 * m1 + 6 * m2 * m1**2 - 3 * m1**4
    return var * (n - 1) / n, ((central4 - var**2).clamp(min=0) / n).sqrt()


def _sigma(noise: str, x: torch.Tensor, stdev: float) -> torch.Tensor:
    if noise == "adaptive":
        return torch.minimum((x - LOW).abs(), (x - HIGH).abs()) / Z975
    return torch.full_like(x, stdev)


def _case(
    method: str,
) -> tuple[torch.nn.Module, Callable[[torch.Tensor], torch.Tensor], dict[str, object]]:
    x, a, c = _features()
    del x, c
    if method == "gradient":
        return PolyScores(a, a), lambda t: 2 * a.unsqueeze(-1) * t, {}
    if method == "input_x_gradient":
        return PolyScores(a, a), lambda t: 2 * a.unsqueeze(-1) * t**2, {}
    if method == "integrated_gradients":
        alphas, weights = path_points(IgRule.GAUSSLEGENDRE, 4)
        q = float((alphas * weights).sum())
        return PolyScores(a, a), lambda t: 2 * q * a.unsqueeze(-1) * t**2, {"n_steps": 4}
    return ReluSquare(a), lambda t: 2 * a.clamp(min=0).unsqueeze(-1) * t.clamp(min=0), {}


METHODS = ["gradient", "input_x_gradient", "integrated_gradients", "guided_backprop"]


@pytest.mark.parametrize("noise", ["gaussian", "adaptive"])
@pytest.mark.parametrize("nt_type", ["none", "smoothgrad", "smoothgrad_sq", "vargrad"])
@pytest.mark.parametrize("method", METHODS)
def test_every_method_and_aggregate_matches_closed_form(
    method: str, nt_type: str, noise: str
) -> None:
    x, _, _ = _features()
    model, g, extra = _case(method)
    stdev = 0.3
    attr = explain(
        model.double(),
        x,
        0,
        method=method,
        nt_type=nt_type,
        noise=noise,
        nt_samples=N_SAMPLES,
        nt_samples_batch_size=4096,
        stdevs=stdev,
        bounds=(LOW, HIGH),
        seed=11,
        **extra,
    )  # type: ignore[arg-type]
    got = attr.double()[0]
    if nt_type == "none":
        expected, se = g(x.unsqueeze(-1)).squeeze(-1)[0], torch.zeros_like(x[0])
    else:
        expected, se = _expected(nt_type, _moments(g, x, _sigma(noise, x, stdev)), N_SAMPLES)
        expected, se = expected[0], se[0]
    slack = 1e-5 * expected.abs().clamp(min=1.0)  # float32 result rounding
    assert ((got - expected).abs() <= 5 * se + slack).all(), (got - expected).abs().max()


def test_smoothgrad_and_vargrad_of_quadratic() -> None:
    x, a, _ = _features()
    sigma = 0.25
    model = PolyScores(a, a).double()
    kw = {"nt_samples": 4000, "stdevs": sigma, "seed": 3}
    sg = explain(model, x, 0, nt_type="smoothgrad", **kw).double()  # type: ignore[arg-type]
    vg = explain(model, x, 0, nt_type="vargrad", **kw).double()  # type: ignore[arg-type]
    se_mean = (2 * a.abs() * sigma) / math.sqrt(4000)
    assert ((sg[0] - 2 * a * x[0]).abs() <= 5 * se_mean + 1e-6).all()
    var = 4 * a**2 * sigma**2
    assert ((vg[0] - var * 3999 / 4000).abs() <= 5 * var * math.sqrt(2 / 4000) + 1e-7).all()


def test_smoothgrad_of_cubic_is_3c_x2_plus_sigma2() -> None:
    x, _, c = _features()
    sigma, n = 0.4, 4000
    attr = explain(PolyScores(c, c).double(), x, 1, nt_samples=n, stdevs=sigma, seed=5)
    expected = 3 * c * (x[0] ** 2 + sigma**2)
    # Var(3c·x̃²) = 9c²(4x²σ² + 2σ⁴)
    se = (9 * c**2 * (4 * x[0] ** 2 * sigma**2 + 2 * sigma**4) / n).sqrt()
    assert ((attr.double()[0] - expected).abs() <= 5 * se + 1e-5).all()


@pytest.mark.parametrize("rule", ["gausslegendre", "riemann_middle", "riemann_trapezoid"])
def test_ig_of_quadratic_from_zero_is_a_x2(rule: str) -> None:
    x, a, _ = _features()
    attr = explain(
        PolyScores(a, a).double(),
        x,
        0,
        method="integrated_gradients",
        nt_type="none",
        n_steps=8,
        ig_rule=rule,
    )
    torch.testing.assert_close(attr.double(), a * x**2, rtol=1e-6, atol=1e-6)


def test_ig_riemann_left_and_right_bracket_the_integral() -> None:
    x, a, _ = _features()
    model = PolyScores(a.abs(), a).double()
    kw = {"method": "integrated_gradients", "nt_type": "none", "n_steps": 10}
    left = explain(model, x, 0, ig_rule="riemann_left", **kw).double()  # type: ignore[arg-type]
    right = explain(model, x, 0, ig_rule="riemann_right", **kw).double()  # type: ignore[arg-type]
    exact = a.abs() * x**2
    torch.testing.assert_close(left, exact * 0.9, rtol=1e-6, atol=1e-6)  # Σ k/n² = (n−1)/2n
    torch.testing.assert_close(right, exact * 1.1, rtol=1e-6, atol=1e-6)


def test_adaptgrad_draws_no_noise_at_a_bound() -> None:
    x, a, _ = _features()
    attr = explain(
        PolyScores(a, a).double(),
        x,
        0,
        nt_type="vargrad",
        noise="adaptive",
        bounds=(LOW, HIGH),
        nt_samples=50,
        seed=1,
    )
    assert attr.view(-1)[0].item() == 0.0
    assert attr.view(-1)[1].item() == 0.0
    assert (attr.view(-1)[2:] > 0).all()


def test_sigma_is_a_fraction_of_the_bounds_range() -> None:
    x, a, _ = _features()
    model = PolyScores(a, a).double()
    kw = {"nt_type": "vargrad", "nt_samples": 20, "seed": 9}
    by_fraction = explain(model, x, 0, sigma=0.2, bounds=(LOW, HIGH), **kw)  # type: ignore[arg-type]
    absolute = explain(model, x, 0, stdevs=0.2 * (HIGH - LOW), **kw)  # type: ignore[arg-type]
    torch.testing.assert_close(by_fraction, absolute)


def test_sigma_without_bounds_uses_each_inputs_own_range() -> None:
    x, a, _ = _features()
    x2 = torch.cat([x, 3 * x])
    model = PolyScores(a, a).double()
    kw = {"nt_type": "vargrad", "nt_samples": 20, "seed": 9}
    both = explain(model, x2, 0, sigma=0.1, **kw)  # type: ignore[arg-type]
    span = float(x.max() - x.min())
    first = explain(model, x, 0, stdevs=0.1 * span, **kw)  # type: ignore[arg-type]
    torch.testing.assert_close(both[:1], first)


def test_stdevs_wins_over_sigma() -> None:
    x, a, _ = _features()
    model = PolyScores(a, a).double()
    kw = {"nt_type": "vargrad", "nt_samples": 20, "seed": 9, "stdevs": 0.3}
    torch.testing.assert_close(
        explain(model, x, 0, sigma=0.01, **kw),  # type: ignore[arg-type]
        explain(model, x, 0, sigma=0.5, **kw),
    )  # type: ignore[arg-type]


def test_vargrad_is_never_negative_where_float32_moments_cancel() -> None:
    # A large mean with a tiny spread: E[M²] − E[M]² in float32 loses everything.
    x = torch.full((1, 1, 4, 4), 1000.0)
    a = torch.ones(1, 4, 4)
    attr = explain(PolyScores(a, a), x, 0, nt_type="vargrad", stdevs=1e-3, nt_samples=64, seed=0)
    assert (attr >= 0).all()
    expected = 4 * (1e-3) ** 2 * 63 / 64
    assert ((attr - expected).abs() <= 5 * expected * math.sqrt(2 / 64)).all()
