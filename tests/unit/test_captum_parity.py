"""Parity with Captum: the same noise injected into both, agreement to 1e-5 relative."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from captum.attr import (
    GuidedBackprop,
    InputXGradient,
    IntegratedGradients,
    NoiseTunnel,
    Saliency,
)

from smoothexplain import explain
from smoothexplain.engine.noise import job_seed, make_generator

from .analytic import small_cnn

pytestmark = [  # Captum's own chatter, not ours
    pytest.mark.filterwarnings("ignore:Setting backward hooks on ReLU:UserWarning"),
    pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients"),
]

SEED, SAMPLES, STDEV = 123, 6, 0.4
NT_TYPES = ["smoothgrad", "smoothgrad_sq", "vargrad"]


def _our_noise(x: torch.Tensor) -> torch.Tensor:
    """The noise our engine draws for each input of a call seeded with SEED: (N, S, ...)."""
    per_input = []
    for i in range(x.shape[0]):
        g = make_generator(job_seed(SEED, i), x.device)
        per_input.append(
            torch.stack([torch.randn(x.shape[1:], generator=g) * STDEV for _ in range(SAMPLES)])
        )
    return torch.stack(per_input)


@pytest.fixture
def inject_noise(monkeypatch: pytest.MonkeyPatch) -> None:
    def add_noise(inputs: torch.Tensor, stdev: float, partition: int) -> torch.Tensor:
        assert partition == SAMPLES and stdev == STDEV
        noise = _our_noise(inputs).reshape(-1, *inputs.shape[1:])
        return inputs.repeat_interleave(partition, dim=0) + noise

    monkeypatch.setattr(NoiseTunnel, "_add_noise_to_input", staticmethod(add_noise))


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(3, 3, 8, 8, generator=g), torch.tensor([0, 3, 1])


def _relative(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    theirs = theirs.detach()
    return float((ours - theirs).norm() / theirs.norm())


CASES: list[tuple[str, Any, dict[str, Any], dict[str, Any]]] = [
    ("gradient", Saliency, {"abs": False}, {}),
    ("input_x_gradient", InputXGradient, {}, {}),
    ("guided_backprop", GuidedBackprop, {}, {}),
    (
        "integrated_gradients",
        IntegratedGradients,
        {"n_steps": 20, "method": "gausslegendre"},
        {"n_steps": 20, "ig_rule": "gausslegendre"},
    ),
    (
        "integrated_gradients",
        IntegratedGradients,
        {"n_steps": 20, "method": "riemann_left"},
        {"n_steps": 20, "ig_rule": "riemann_left"},
    ),
    (
        "integrated_gradients",
        IntegratedGradients,
        {"n_steps": 20, "method": "riemann_right"},
        {"n_steps": 20, "ig_rule": "riemann_right"},
    ),
    (
        "integrated_gradients",
        IntegratedGradients,
        {"n_steps": 20, "method": "riemann_middle"},
        {"n_steps": 20, "ig_rule": "riemann_middle"},
    ),
]


@pytest.mark.usefixtures("inject_noise")
@pytest.mark.parametrize("nt_type", NT_TYPES)
@pytest.mark.parametrize(("method", "captum_cls", "captum_kw", "our_kw"), CASES)
def test_noise_tunnel_parity(
    method: str, captum_cls: Any, captum_kw: dict[str, Any], our_kw: dict[str, Any], nt_type: str
) -> None:
    model = small_cnn()
    x, target = _inputs()
    theirs = NoiseTunnel(captum_cls(model)).attribute(
        x, nt_type=nt_type, nt_samples=SAMPLES, stdevs=STDEV, target=target, **captum_kw
    )
    ours = explain(
        model,
        x,
        target,
        method=method,
        nt_type=nt_type,
        nt_samples=SAMPLES,
        stdevs=STDEV,
        seed=SEED,
        nt_samples_batch_size=7,
        **our_kw,
    )
    assert _relative(ours, theirs) <= 1e-5


@pytest.mark.parametrize(("method", "captum_cls", "captum_kw", "our_kw"), CASES)
def test_plain_method_parity(
    method: str, captum_cls: Any, captum_kw: dict[str, Any], our_kw: dict[str, Any]
) -> None:
    model = small_cnn()
    x, target = _inputs()
    theirs = captum_cls(model).attribute(x, target=target, **captum_kw)
    ours = explain(model, x, target, method=method, nt_type="none", **our_kw)
    assert _relative(ours, theirs) <= 1e-5


def test_convergence_delta_matches_captum() -> None:
    model = small_cnn()
    x, target = _inputs()
    theirs, their_delta = IntegratedGradients(model).attribute(
        x, target=target, n_steps=30, return_convergence_delta=True
    )
    ours, our_delta = explain(
        model,
        x,
        target,
        method="integrated_gradients",
        nt_type="none",
        n_steps=30,
        return_convergence_delta=True,
    )
    assert our_delta.shape == (3,)
    torch.testing.assert_close(our_delta, their_delta.float(), rtol=1e-3, atol=1e-5)
    assert _relative(ours, theirs) <= 1e-5


@pytest.mark.usefixtures("inject_noise")
def test_smoothed_convergence_delta_is_the_mean_over_samples() -> None:
    model = small_cnn()
    x, target = _inputs()
    _, their_delta = NoiseTunnel(IntegratedGradients(model)).attribute(
        x,
        nt_samples=SAMPLES,
        stdevs=STDEV,
        target=target,
        n_steps=30,
        return_convergence_delta=True,
    )
    _, our_delta = explain(
        model,
        x,
        target,
        method="integrated_gradients",
        nt_samples=SAMPLES,
        stdevs=STDEV,
        seed=SEED,
        n_steps=30,
        return_convergence_delta=True,
    )
    expected = their_delta.float().view(3, SAMPLES).mean(dim=1)
    torch.testing.assert_close(our_delta, expected, rtol=1e-3, atol=1e-5)


def test_trapezoid_corrects_captums_missing_factor() -> None:
    # Captum's trapezoid weights sum to (n−1)/n; ours sum to 1, so ours = Captum·n/(n−1).
    model = small_cnn()
    x, target = _inputs()
    n = 20
    theirs = IntegratedGradients(model).attribute(
        x, target=target, n_steps=n, method="riemann_trapezoid"
    )
    ours = explain(
        model,
        x,
        target,
        method="integrated_gradients",
        nt_type="none",
        n_steps=n,
        ig_rule="riemann_trapezoid",
    )
    assert _relative(ours, theirs * n / (n - 1)) <= 1e-5
