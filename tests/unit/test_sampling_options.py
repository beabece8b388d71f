"""Noise sampling schemes, adaptive stopping, mixed precision and memory-budget chunking."""

from __future__ import annotations

import math

import pytest
import torch

from smoothexplain import ExplainJob, InvalidArgument, Scheduler, explain, make_spec
from smoothexplain.engine.aggregate import Moments
from smoothexplain.engine.noise import NoiseStream, make_generator
from smoothexplain.engine.spec import NoiseSampling
from smoothexplain.engine.stopping import relative_standard_error

from .analytic import PolyScores, small_cnn


def _x(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def _draws(scheme: NoiseSampling, count: int, shape: tuple[int, ...] = (3, 8, 8)) -> torch.Tensor:
    stream = NoiseStream(
        torch.Size(shape),
        scheme,
        make_generator(3, torch.device("cpu")),
        torch.float32,
        torch.device("cpu"),
    )
    return torch.stack([stream.fill(torch.empty(shape)) for _ in range(count)])


def test_antithetic_samples_come_in_opposite_pairs() -> None:
    draws = _draws(NoiseSampling.ANTITHETIC, 6)
    assert torch.equal(draws[1], -draws[0]) and torch.equal(draws[5], -draws[4])
    assert not torch.equal(draws[2].abs(), draws[0].abs())


def test_qmc_draws_are_standard_normal_and_better_balanced_than_iid() -> None:
    qmc, iid = _draws(NoiseSampling.QMC, 256), _draws(NoiseSampling.IID, 256)
    assert abs(float(qmc.mean())) < 0.01 and abs(float(qmc.std()) - 1) < 0.02
    # Per-feature sample means: low-discrepancy points sit far closer to 0 than iid ones.
    assert float(qmc.mean(0).abs().mean()) < 0.5 * float(iid.mean(0).abs().mean())


def test_qmc_spans_inputs_wider_than_one_sobol_engine() -> None:
    draws = _draws(NoiseSampling.QMC, 4, shape=(3, 100, 100))  # 30 000 > 21 201 dimensions
    assert draws.shape == (4, 3, 100, 100) and bool(torch.isfinite(draws).all())


@pytest.mark.parametrize("scheme", ["iid", "antithetic", "qmc"])
def test_every_scheme_is_seeded_and_chunk_invariant(scheme: str) -> None:
    model, x = small_cnn(), _x()
    kw = {"noise_sampling": scheme, "nt_samples": 6, "seed": 4, "nt_type": "vargrad"}
    first = explain(model, x, 1, nt_samples_batch_size=1, **kw)  # type: ignore[arg-type]
    torch.testing.assert_close(
        explain(model, x, 1, nt_samples_batch_size=5, **kw),  # type: ignore[arg-type]
        first,
        rtol=1e-6,
        atol=1e-9,
    )


@pytest.mark.parametrize("scheme", ["antithetic", "qmc"])
def test_schemes_estimate_the_same_smoothgrad(scheme: str) -> None:
    # Linear-in-noise parts cancel exactly for antithetic pairs: on F = Σ a·x² the gradient
    # 2a·x̃ is linear, so the pair mean is the exact SmoothGrad 2a·x.
    g = torch.Generator().manual_seed(1)
    x, a = torch.randn(1, 1, 4, 4, generator=g), torch.randn(1, 4, 4, generator=g)
    attr = explain(
        PolyScores(a, a).double(),
        x.double(),
        0,
        noise_sampling=scheme,
        nt_samples=64,
        stdevs=0.3,
        seed=2,
    )
    exact = 2 * a * x[0]
    tolerance = 1e-5 if scheme == "antithetic" else 0.05
    torch.testing.assert_close(attr[0].double(), exact.double(), rtol=0, atol=tolerance)


def test_a_tolerance_stops_early_and_reports_samples_and_error() -> None:
    model, x = small_cnn(), _x(1)
    spec = make_spec(nt_samples=400, stdevs=0.05, tolerance=0.05)
    job = ExplainJob(inputs=x[0], target=0, spec=spec, seed=1)
    (result,) = Scheduler(model, chunk_rows=8).run([job])
    assert 8 <= result.samples < 400 and result.rows == result.samples
    assert result.relative_error is not None and result.relative_error <= 0.05
    (full,) = Scheduler(model, chunk_rows=8).run(
        [ExplainJob(inputs=x[0], target=0, spec=make_spec(nt_samples=400, stdevs=0.05), seed=1)]
    )
    assert full.samples == 400
    relative = float((result.attribution - full.attribution).norm() / full.attribution.norm())
    assert relative < 3 * 0.05  # within a few of the promised standard errors


def test_an_unreachable_tolerance_uses_every_sample() -> None:
    spec = make_spec(nt_samples=16, stdevs=1.0, tolerance=1e-6)
    (result,) = Scheduler(small_cnn(), chunk_rows=4).run(
        [ExplainJob(inputs=_x(1)[0], target=0, spec=spec, seed=1)]
    )
    assert result.samples == 16


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_stays_close_to_fp32(precision: str) -> None:
    model, x = small_cnn(), _x()
    kw = {"nt_samples": 4, "seed": 3}
    exact = explain(model, x, 2, **kw)  # type: ignore[arg-type]
    low = explain(model, x, 2, precision=precision, **kw)  # type: ignore[arg-type]
    assert low.dtype == torch.float32
    assert float((low - exact).norm() / exact.norm()) < 0.05
    assert not torch.equal(low, exact)  # autocast really ran


def test_a_memory_budget_bounds_the_rows_per_call() -> None:
    calls: list[int] = []
    model = small_cnn()
    model.register_forward_hook(lambda _m, inp, _o: calls.append(inp[0].shape[0]))
    scheduler = Scheduler(model, chunk_rows=64, memory_budget=40_000)
    job = ExplainJob(inputs=_x(1)[0], target=0, spec=make_spec(nt_samples=30), seed=0)
    scheduler.run([job])
    (per_row,) = scheduler.row_bytes.values()
    assert per_row > 4 * 3 * 8 * 8 * 4  # activations on top of row, grad and noise
    limit = 40_000 // per_row
    assert 1 <= limit < 30
    grad_calls = [c for c in calls if c not in (1, 2)]  # the probe runs 1 and 2 rows
    assert max(calls[2:]) == limit and sum(calls[2:]) == 30, grad_calls


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"noise_sampling": "sobol"}, "noise_sampling"),
        ({"tolerance": 0.0}, "tolerance"),
        ({"tolerance": 1.5}, "tolerance"),
        ({"precision": "int8"}, "precision"),
        ({"memory_budget": 0}, "memory_budget"),
    ],
)
def test_new_arguments_are_validated(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        explain(small_cnn(), _x(), 0, **kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


def test_relative_standard_error_by_hand() -> None:
    # Samples 1 and 3: mean 2, s² = 2, SE² = 1; ‖E[mean]‖² is estimated as 2² − SE² = 3.
    moments = Moments()
    moments.add(torch.tensor([[1.0], [3.0]]))
    assert relative_standard_error(moments) == pytest.approx(math.sqrt(1 / 3))
    constant = Moments()
    constant.add(torch.full((4, 2), 5.0))
    assert relative_standard_error(constant) == 0.0
    noise_only = Moments()
    noise_only.add(torch.tensor([[-1.0], [1.0]]))
    assert relative_standard_error(noise_only) == math.inf
