"""Class-activation maps against closed forms: a layer whose gradient is known (`SquareHead`:
G = 2 w A), Grad-CAM++'s formula written out element by element, and the aggregation rules."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from smoothexplain import explain

from .cam_models import SquareHead

TARGET = 1


def _inputs() -> torch.Tensor:
    return torch.randn(2, 3, 5, 6, generator=torch.Generator().manual_seed(1))


def _layer(model: SquareHead, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    a = model.body(x).double()
    return a, 2 * model.w[TARGET].double().view(1, -1, 1, 1) * a


def _plain(model: SquareHead, x: torch.Tensor, method: str, **more: object) -> torch.Tensor:
    out = explain(model, x, TARGET, method=method, nt_type="none", layer="body", **more)
    assert isinstance(out, torch.Tensor)
    return out


def test_grad_cam_is_relu_of_mean_gradient_weighted_activations() -> None:
    model, x = SquareHead(), _inputs()
    a, g = _layer(model, x)
    expected = (g.mean(dim=(2, 3), keepdim=True) * a).sum(1, keepdim=True).clamp_min(0)
    ours = _plain(model, x, "grad_cam", cam_resolution="layer")
    assert ours.shape == (2, 1, 5, 6)
    torch.testing.assert_close(ours.double(), expected, rtol=1e-5, atol=1e-6)
    assert bool((expected == 0).any())  # the ReLU did cut something


def test_layer_gradient_x_activation_is_signed_and_summed_over_channels() -> None:
    model, x = SquareHead(), _inputs()
    a, g = _layer(model, x)
    ours = _plain(model, x, "layer_gradient_x_activation", cam_resolution="layer")
    torch.testing.assert_close(ours.double(), (g * a).sum(1, keepdim=True), rtol=1e-5, atol=1e-6)
    assert bool((ours < 0).any())


def _plus_plus_by_hand(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++ element by element: α = g² / (2g² + Σ_ab A_ab g³), w = Σ α relu(g)."""
    rows, channels, height, width = a.shape
    cam = torch.zeros(rows, 1, height, width, dtype=torch.float64)
    for n, k in itertools.product(range(rows), range(channels)):
        total = float(a[n, k].sum())
        weight = 0.0
        for i, j in itertools.product(range(height), range(width)):
            grad = float(g[n, k, i, j])
            below = 2 * grad**2 + total * grad**3
            weight += (grad**2 / below if below else 0.0) * max(grad, 0.0)
        cam[n, 0] += weight * a[n, k]
    return cam.clamp_min(0)


def test_grad_cam_plus_plus_follows_its_formula() -> None:
    model, x = SquareHead(), _inputs()
    a, g = _layer(model, x)
    ours = _plain(model, x, "grad_cam_plus_plus", cam_resolution="layer")
    torch.testing.assert_close(ours.double(), _plus_plus_by_hand(a, g), rtol=1e-5, atol=1e-6)


def test_input_resolution_is_the_bilinear_upsampling_of_the_layer_map() -> None:
    model, x = SquareHead(), torch.randn(1, 3, 4, 4)
    pooled = torch.nn.Sequential(model.body, torch.nn.AvgPool2d(2))
    wrapped = _PooledSquare(model, pooled)
    small = _plain(wrapped, x, "grad_cam", cam_resolution="layer")
    big = _plain(wrapped, x, "grad_cam")
    assert small.shape == (1, 1, 2, 2) and big.shape == (1, 1, 4, 4)
    expected = F.interpolate(small, size=(4, 4), mode="bilinear", align_corners=False)
    torch.testing.assert_close(big, expected)


class _PooledSquare(torch.nn.Module):
    """SquareHead's score read at a pooled layer (`body`: conv then 2x2 average)."""

    def __init__(self, model: SquareHead, body: torch.nn.Module) -> None:
        super().__init__()
        self.body, self.w = body, model.w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.body(x)
        return torch.einsum("tk,nkij->nt", self.w, a * a)


@pytest.mark.parametrize("nt_type", ["smoothgrad", "smoothgrad_sq", "vargrad"])
def test_noise_tunnel_aggregates_the_per_sample_layer_maps(nt_type: str) -> None:
    """The noise is drawn at the input as for the input methods: zero noise (adaptive at the
    bounds) gives each sample the clean map."""
    model, x = SquareHead(), _inputs()
    clean = _plain(model, x, "grad_cam", cam_resolution="layer")
    bounds = (float(x.min()) - 1, float(x.max()) + 1)
    noisy = explain(
        model,
        x,
        TARGET,
        method="grad_cam",
        layer="body",
        nt_type=nt_type,
        nt_samples=4,
        stdevs=1e-30 if nt_type != "vargrad" else 1e-3,
        bounds=bounds,
        seed=3,
        cam_resolution="layer",
    )
    assert isinstance(noisy, torch.Tensor)
    if nt_type == "vargrad":
        assert bool((noisy >= 0).all()) and float(noisy.max()) > 0
        return
    expected = clean if nt_type == "smoothgrad" else clean.square()
    torch.testing.assert_close(noisy, expected, rtol=1e-5, atol=1e-6)
