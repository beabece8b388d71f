"""Joint (noise, α) sampling for smoothed integrated gradients (engine/joint.py).

Closed forms: on separable polynomial scores the one-point value of feature i is a polynomial
g(x̃ᵢ, α), so every expectation below is computed exactly by Gauss–Hermite (noise) × Gauss–Legendre
(α) quadrature, and each estimate is checked within 5 standard errors of its estimator. Stratified
α never raises the variance of a mean above the i.i.d. value (and a Latin-hypercube pair by at most
n/(n−1)), so the i.i.d. standard errors used here are safe upper bounds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from smoothexplain import ExplainJob, InvalidArgument, Scheduler, explain, make_spec
from smoothexplain._proto.smoothexplain.v1 import explain_pb2 as pb
from smoothexplain.client.cli import main
from smoothexplain.client.remote import SmoothExplainClient
from smoothexplain.engine.joint import joint_alphas
from smoothexplain.serving.codec import tensor_to_message
from smoothexplain.serving.service import ExplainService, Incoming

from .analytic import PolyScores, small_cnn

N = 4000
SIGMA = 0.3
Point = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # g(x̃, α) per feature


def _features() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    x = torch.rand(1, 2, 3, 3, generator=g, dtype=torch.float64) * 2 - 1
    a = torch.randn(2, 3, 3, generator=g, dtype=torch.float64)
    c = torch.randn(2, 3, 3, generator=g, dtype=torch.float64)
    return x, a, c


def _point(target: int, a: torch.Tensor, c: torch.Tensor, base: float) -> Point:
    """(x̃ − x')·∂F/∂x at x' + α(x̃ − x'): F₀ = Σ a·x², F₁ = Σ c·x³."""
    if target == 0:
        return lambda t, al: (t - base) * 2 * a[..., None, None, None] * (base + al * (t - base))
    return lambda t, al: (t - base) * 3 * c[..., None, None, None] * (base + al * (t - base)) ** 2


def _grid(x: torch.Tensor, g: Point) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """g at every (z, α₁) node and at (z, α₂), with the product weights: shapes (..., Z, A, A)."""
    z, wz = np.polynomial.hermite_e.hermegauss(60)
    al, wa = np.polynomial.legendre.leggauss(6)
    zt = torch.from_numpy(z).view(-1, 1, 1)
    a1 = torch.from_numpy(0.5 * (al + 1)).view(1, -1, 1)
    a2 = a1.view(1, 1, -1)
    t = x[..., None, None, None] + SIGMA * zt
    weights = (
        torch.from_numpy(wz / math.sqrt(2 * math.pi)).view(-1, 1, 1)
        * torch.from_numpy(0.5 * wa).view(1, -1, 1)
        * torch.from_numpy(0.5 * wa).view(1, 1, -1)
    )
    return g(t, a1).expand(*t.shape[:-2], 6, 6), g(t, a2).expand(*t.shape[:-2], 6, 6), weights


def _expected(nt_type: str, x: torch.Tensor, g: Point) -> tuple[torch.Tensor, torch.Tensor]:
    """Expectation of the joint estimator with N samples, and its standard error."""
    g1, g2, w = _grid(x, g)

    def mean(values: torch.Tensor) -> torch.Tensor:
        return (values * w).sum(dim=(-3, -2, -1))

    mu = mean(g1)
    if nt_type == "smoothgrad":
        return mu, ((mean(g1**2) - mu**2) / N).sqrt()
    product = g1 * g2
    m2 = mean(product)
    if nt_type == "smoothgrad_sq":
        return m2, ((mean(product**2) - m2**2) / (N - 1)).sqrt()
    psi = product - mu[..., None, None, None] * (g1 + g2)  # influence of mean(ab) − mean(a)mean(b)
    spread = (mean(psi**2) - mean(psi) ** 2).clamp(min=0)
    return (m2 - mu**2) * (N - 1) / N, (spread / (N - 1)).sqrt()


def _joint(model: torch.nn.Module, x: torch.Tensor, target: int, **kw: Any) -> torch.Tensor:
    kw = {"nt_samples": N, "stdevs": SIGMA, "nt_samples_batch_size": 4096, "seed": 17, **kw}
    attr = explain(model, x, target, method="integrated_gradients", ig_sampling="joint", **kw)
    assert isinstance(attr, torch.Tensor)
    return attr.double()


@pytest.mark.parametrize("nt_type", ["smoothgrad", "smoothgrad_sq", "vargrad"])
@pytest.mark.parametrize(("target", "base"), [(0, 0.0), (1, 0.0), (0, 0.5), (1, -0.4)])
def test_joint_estimators_match_closed_forms(nt_type: str, target: int, base: float) -> None:
    x, a, c = _features()
    got = _joint(PolyScores(a, c).double(), x, target, nt_type=nt_type, baselines=base)
    expected, se = _expected(nt_type, x, _point(target, a, c, base))
    assert ((got - expected).abs() <= 5 * se + 1e-5 * expected.abs().clamp(min=1)).all()


def test_quadratic_from_zero_in_closed_form() -> None:
    """F = Σ a·x², x' = 0: M(x̃) = a·x̃², so E[M] = a(x² + σ²), E[M²] = a²(x⁴ + 6x²σ² + 3σ⁴),
    and vargrad's expectation is (N − 1)/N · a²(4x²σ² + 2σ⁴)."""
    x, a, _ = _features()
    model, s2 = PolyScores(a, a).double(), SIGMA**2
    sg = _joint(model, x, 0)
    sq = _joint(model, x, 0, nt_type="smoothgrad_sq")
    vg = _joint(model, x, 0, nt_type="vargrad")
    formulas = {
        "smoothgrad": (sg, a * (x**2 + s2)),
        "smoothgrad_sq": (sq, a**2 * (x**4 + 6 * x**2 * s2 + 3 * s2**2)),
        "vargrad": (vg, a**2 * (4 * x**2 * s2 + 2 * s2**2) * (N - 1) / N),
    }
    for nt_type, (got, closed) in formulas.items():
        _, se = _expected(nt_type, x, _point(0, a, a, 0.0))
        assert ((got - closed).abs() <= 5 * se + 1e-6).all(), nt_type


def test_joint_uses_one_row_per_sample_or_two_for_products() -> None:
    x, a, _ = _features()
    model = PolyScores(a, a).double()
    for nt_type, rows in [("smoothgrad", 7), ("smoothgrad_sq", 14), ("vargrad", 14)]:
        spec = make_spec(
            method="integrated_gradients", nt_type=nt_type, nt_samples=7, ig_sampling="joint"
        )
        assert spec.rows == rows
        (result,) = Scheduler(model).run([ExplainJob(x[0], 0, spec, seed=1)])
        assert result.rows == rows and result.samples == 7
    assert make_spec(method="integrated_gradients", nt_samples=7, n_steps=5).rows == 35


def test_alpha_strata_cover_the_path_once_per_stream() -> None:
    alphas = joint_alphas(seed=5, samples=50, streams=2)
    assert alphas.shape == (50, 2) and alphas.dtype == torch.float64
    assert bool(((alphas >= 0) & (alphas < 1)).all())
    for stream in alphas.T:
        assert sorted((stream * 50).floor().long().tolist()) == list(range(50))
    assert not torch.equal(alphas[:, 0], alphas[:, 1])
    assert torch.equal(alphas, joint_alphas(seed=5, samples=50, streams=2))


def _replicates(model: torch.nn.Module, x: torch.Tensor, specs: list[Any]) -> list[torch.Tensor]:
    """Each spec run under 8 seeds in one scheduler call: (8, ...) stacks of estimates."""
    jobs = [ExplainJob(x, 2, spec, seed=1000 + i) for spec in specs for i in range(8)]
    results = Scheduler(model, chunk_rows=512).run(jobs)
    maps = torch.stack([r.attribution.double() for r in results])
    return list(maps.view(len(specs), 8, *x.shape))


@pytest.mark.parametrize("nt_type", ["smoothgrad", "smoothgrad_sq", "vargrad"])
def test_joint_agrees_with_the_grid_on_a_cnn(nt_type: str) -> None:
    """Both rules estimate the same expectation: over 8 seeds each, the per-feature difference of
    their means is noise (mean t² near 1; a bias of a fraction of the noise level would show)."""
    model = small_cnn()
    x = torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(4))
    common = {"method": "integrated_gradients", "nt_type": nt_type, "stdevs": 0.5}
    joint, grid = _replicates(
        model,
        x,
        [
            make_spec(nt_samples=256, ig_sampling="joint", **common),
            make_spec(nt_samples=32, n_steps=8, **common),
        ],
    )
    if nt_type == "vargrad":  # both carry their own population-variance factor (n − 1)/n
        joint, grid = joint * 256 / 255, grid * 32 / 31
    se2 = joint.var(dim=0) / 8 + grid.var(dim=0) / 8
    t2 = (joint.mean(dim=0) - grid.mean(dim=0)) ** 2 / se2.clamp(min=1e-30)
    assert float(t2.mean()) < 2.0  # E[t²] ≈ 14/12 for 14 degrees of freedom
    # The check has power: the one-node grid's quadrature bias is caught (mean t² above 30).
    (coarse,) = _replicates(model, x, [make_spec(nt_samples=256, n_steps=1, **common)])
    if nt_type == "vargrad":
        coarse = coarse * 256 / 255
    se2 = joint.var(dim=0) / 8 + coarse.var(dim=0) / 8
    t2 = (joint.mean(dim=0) - coarse.mean(dim=0)) ** 2 / se2.clamp(min=1e-30)
    assert float(t2.mean()) > 4.0


@pytest.mark.parametrize("nt_type", ["smoothgrad", "smoothgrad_sq", "vargrad"])
def test_joint_result_does_not_depend_on_chunk_size(nt_type: str) -> None:
    model = small_cnn()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    kw = {"method": "integrated_gradients", "nt_type": nt_type, "ig_sampling": "joint"}
    kw |= {"nt_samples": 5, "seed": 42, "stdevs": 0.3, "return_convergence_delta": True}
    results = [  # odd sizes cut the (a, b) pairs of smoothgrad_sq and vargrad between chunks
        explain(model, x, [1, 2], nt_samples_batch_size=size, **kw)  # type: ignore[arg-type]
        for size in (1, 3, 4, None)
    ]
    for attr, delta in results[1:]:
        torch.testing.assert_close(attr, results[0][0], rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(delta, results[0][1], rtol=1e-5, atol=1e-7)


def test_joint_seeds_and_batch_mates() -> None:
    model = small_cnn()
    x = torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(1))
    joint = make_spec(method="integrated_gradients", nt_type="vargrad", ig_sampling="joint")
    grid = make_spec(method="integrated_gradients", nt_samples=3, n_steps=4)
    jobs = [ExplainJob(x, 0, joint, seed=5), ExplainJob(x, 1, grid, seed=6)]
    together = Scheduler(model, chunk_rows=5).run(jobs)
    for job, mixed in zip(jobs, together, strict=True):
        (alone,) = Scheduler(model, chunk_rows=3).run([job])
        torch.testing.assert_close(mixed.attribution, alone.attribution, rtol=1e-6, atol=1e-9)
    (same,) = Scheduler(model).run([jobs[0]])
    (other,) = Scheduler(model).run([ExplainJob(x, 0, joint, seed=7)])
    torch.testing.assert_close(same.attribution, together[0].attribution, rtol=1e-6, atol=1e-9)
    assert not torch.allclose(other.attribution, same.attribution)


def test_joint_ignores_the_quadrature_and_plain_ig_ignores_joint() -> None:
    model = small_cnn()
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    kw = {"method": "integrated_gradients", "seed": 3, "nt_samples": 5}
    first = explain(model, x, 0, ig_sampling="joint", n_steps=50, **kw)  # type: ignore[arg-type]
    second = explain(model, x, 0, ig_sampling="joint", n_steps=3, ig_rule="riemann_left", **kw)  # type: ignore[arg-type]
    assert torch.equal(first, second)
    plain = {"method": "integrated_gradients", "nt_type": "none", "n_steps": 8}
    assert torch.equal(
        explain(model, x, 0, ig_sampling="joint", **plain),  # type: ignore[arg-type]
        explain(model, x, 0, ig_sampling="grid", **plain),  # type: ignore[arg-type]
    )
    assert not make_spec(
        method="integrated_gradients", nt_type="none", ig_sampling="joint"
    ).joint_ig


def test_convergence_delta_under_joint_is_an_unbiased_completeness_residual() -> None:
    """Σᵢ attrᵢ − (F(x̃) − F(x')) averaged over samples: for F = Σ a·x² from 0, a sample's residual
    is (2α − 1)·Σ a·x̃² (for a pair, (α₁ + α₂ − 1)·Σ a·x̃²): mean 0, variance ≤ E[(Σ a·x̃²)²]/3."""
    x, a, _ = _features()
    model, s2 = PolyScores(a, a).double(), SIGMA**2
    mean = float((a * (x[0] ** 2 + s2)).sum())
    variance = float((a**2 * (4 * x[0] ** 2 * s2 + 2 * s2**2)).sum())
    se = math.sqrt((variance + mean**2) / 3 / N)
    for nt_type in ("smoothgrad", "vargrad"):
        _, delta = explain(
            model,
            x,
            0,
            method="integrated_gradients",
            nt_type=nt_type,
            ig_sampling="joint",
            nt_samples=N,
            stdevs=SIGMA,
            seed=8,
            return_convergence_delta=True,
        )
        assert abs(float(delta[0])) <= 5 * se, (nt_type, float(delta[0]), se)
        assert float(delta[0]) != 0.0  # a Monte Carlo residual, not a quadrature error


@pytest.mark.parametrize("bad", ["nested", "JOINT", 1, None])
def test_ig_sampling_is_validated(bad: object) -> None:
    x = torch.zeros(1, 3, 8, 8)
    with pytest.raises(
        InvalidArgument, match=r"ig_sampling must be one of \['grid', 'joint'\]"
    ) as err:
        explain(small_cnn(), x, 0, method="integrated_gradients", ig_sampling=bad)  # type: ignore[arg-type]
    assert err.value.field == "ig_sampling"


def _service() -> ExplainService:
    from smoothexplain.serving.config import parse_config

    config = parse_config(
        {
            "model_class": "tests.unit.analytic:small_cnn",
            "preprocess": {"size": 8, "resize": 8, "mean": [0.5] * 3, "std": [0.25] * 3},
            "defaults": {"nt_samples": 4},
        }
    )
    return ExplainService(small_cnn(), config, {}, torch.device("cpu"), "tiny")


def test_service_runs_and_echoes_joint_sampling() -> None:
    service, x = _service(), torch.randn(3, 8, 8)
    options = pb.ExplainOptions(
        method=pb.METHOD_INTEGRATED_GRADIENTS,
        nt_type=pb.NT_TYPE_VARGRAD,
        ig_sampling=pb.IG_SAMPLING_JOINT,
        nt_samples=6,
        seed=4,
    )
    request = pb.Request(input=pb.Input(tensor=tensor_to_message(x)), explain=True, options=options)
    bad = pb.Request()
    bad.CopyFrom(request)
    bad.options.ig_sampling = 7  # type: ignore[assignment]
    answers = service.handle(
        [Incoming(r.SerializeToString(), from_grpc=True) for r in (request, bad)]
    )
    good, failed = (pb.Response.FromString(a.body) for a in answers)  # type: ignore[arg-type]
    assert good.rows == 12 and good.nt_samples == 6
    assert good.options.ig_sampling == pb.IG_SAMPLING_JOINT
    assert failed.error.field == "options.ig_sampling" and answers[1].status == 400
    expected = explain(
        small_cnn(),
        x[None],
        good.target,
        method="integrated_gradients",
        nt_type="vargrad",
        ig_sampling="joint",
        nt_samples=6,
        seed=4,
        sigma=0.15,
        bounds=service.bounds,
    )
    got = torch.frombuffer(bytearray(good.attribution.data), dtype=torch.float32).view(3, 8, 8)
    torch.testing.assert_close(got, expected[0])
    unset = pb.Request(input=request.input, explain=True)
    unset.options.method = pb.METHOD_INTEGRATED_GRADIENTS
    (default,) = service.handle([Incoming(unset.SerializeToString(), from_grpc=True)])
    applied = pb.Response.FromString(default.body).options  # type: ignore[arg-type]
    configured = str(service.config.defaults["ig_sampling"]).upper()
    assert applied.ig_sampling == pb.IgSampling.Value(f"IG_SAMPLING_{configured}")


def test_client_and_cli_send_ig_sampling(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[pb.Request] = []

    def request(self: SmoothExplainClient, model: str, message: pb.Request) -> pb.Response:
        sent.append(message)
        return pb.Response(attribution=tensor_to_message(torch.zeros(3, 2, 2)))

    monkeypatch.setattr(SmoothExplainClient, "request", request)
    with SmoothExplainClient(token="t") as client:
        client.explain("m", torch.zeros(3, 2, 2), ig_sampling="joint")
        with pytest.raises(InvalidArgument) as err:
            client.explain("m", torch.zeros(3, 2, 2), ig_sampling="nested")
    assert err.value.field == "options.ig_sampling"
    monkeypatch.setattr("smoothexplain.client.cli._read_image", lambda name: b"png")
    assert main(["explain", "x.png", "--model", "m", "--ig-sampling", "grid"]) == 0
    assert [r.options.ig_sampling for r in sent] == [pb.IG_SAMPLING_JOINT, pb.IG_SAMPLING_GRID]
