"""Class-activation maps against Captum (LayerGradCam, LayerGradientXActivation, GuidedGradCam,
each under NoiseTunnel with our noise injected) to 1e-5 relative, on the trained shapes model
(artifacts/demo, built by `make model`) and the pretrained EfficientNet-Lite0 at a block whose
convolutions call F.conv2d (`_blocks.15`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from captum.attr import (
    GuidedGradCam,
    LayerAttribution,
    LayerGradCam,
    LayerGradientXActivation,
    NoiseTunnel,
)
from torch import nn

from smoothexplain import explain
from smoothexplain.demo import load_model
from smoothexplain.demo.efficientnet import EfficientNetLite, pretrained_weights

from .test_captum_parity import SAMPLES, SEED, STDEV, inject_noise

__all__ = ["inject_noise"]  # the fixture, used by name

DEMO = Path(__file__).resolve().parents[2] / "artifacts" / "demo"
pytestmark = [
    pytest.mark.filterwarnings("ignore:Setting backward hooks on ReLU:UserWarning"),
    pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients"),
]


def _shapes() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    model = load_model(DEMO).requires_grad_(False)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    return model, x, torch.tensor([0, 3])


def _relative(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    theirs = theirs.detach().float()
    return float((ours - theirs).norm() / theirs.norm())


def _grad_cam(
    model: nn.Module, layer: nn.Module, x: torch.Tensor, nt_type: str | None, target: torch.Tensor
) -> torch.Tensor:
    cam = LayerGradCam(model, layer)
    kw: dict[str, Any] = {"target": target, "relu_attributions": True}
    if nt_type is None:
        small = cam.attribute(x, **kw)
    else:
        small = NoiseTunnel(cam).attribute(
            x, nt_type=nt_type, nt_samples=SAMPLES, stdevs=STDEV, **kw
        )
    return LayerAttribution.interpolate(small, x.shape[2:], interpolate_mode="bilinear")


def _ours(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    method: str,
    layer: str,
    nt_type: str | None,
    **more: Any,
) -> torch.Tensor:
    smoothed = (
        {"nt_type": "none"}
        if nt_type is None
        else {"nt_type": nt_type, "nt_samples": SAMPLES, "stdevs": STDEV, "seed": SEED}
    )
    out = explain(
        model, x, target, method=method, layer=layer, nt_samples_batch_size=5, **smoothed, **more
    )  # type: ignore[arg-type]
    assert isinstance(out, torch.Tensor)
    return out


@pytest.mark.usefixtures("inject_noise")
@pytest.mark.parametrize("nt_type", [None, "smoothgrad", "smoothgrad_sq", "vargrad"])
def test_grad_cam_matches_layer_grad_cam_on_the_shapes_model(nt_type: str | None) -> None:
    model, x, target = _shapes()
    theirs = _grad_cam(model, model.features[2], x, nt_type, target)
    ours = _ours(model, x, target, "grad_cam", "features.2", nt_type)
    assert ours.shape == (2, 1, 64, 64)
    assert _relative(ours, theirs) <= 1e-5


@pytest.mark.usefixtures("inject_noise")
def test_layer_gradient_x_activation_matches_captum_summed_over_channels() -> None:
    model, x, target = _shapes()
    their_channels = NoiseTunnel(LayerGradientXActivation(model, model.features[3])).attribute(
        x, nt_type="smoothgrad", nt_samples=SAMPLES, stdevs=STDEV, target=target
    )
    theirs = their_channels.sum(dim=1, keepdim=True)
    ours = _ours(
        model,
        x,
        target,
        "layer_gradient_x_activation",
        "features.3",
        "smoothgrad",
        cam_resolution="layer",
    )
    assert _relative(ours, theirs) <= 1e-5


@pytest.mark.usefixtures("inject_noise")
def test_guided_grad_cam_matches_captum() -> None:
    model, x, target = _shapes()
    guided = GuidedGradCam(model, model.features[2])
    theirs = NoiseTunnel(guided).attribute(
        x,
        nt_type="smoothgrad",
        nt_samples=SAMPLES,
        stdevs=STDEV,
        target=target,
        interpolate_mode="bilinear",
    )
    ours = _ours(model, x, target, "guided_grad_cam", "features.2", "smoothgrad")
    assert ours.shape == x.shape
    assert _relative(ours, theirs) <= 1e-5


def _cat() -> torch.Tensor:
    """scikit-image's cat photograph through the ImageNet recipe (Resize 256, CenterCrop 224)."""
    import skimage.data
    from PIL import Image
    from torchvision import transforms

    recipe = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )
    x: torch.Tensor = recipe(Image.fromarray(skimage.data.chelsea()))
    return x.unsqueeze(0)


@pytest.mark.usefixtures("inject_noise")
@pytest.mark.parametrize("nt_type", [None, "smoothgrad"])
def test_grad_cam_matches_layer_grad_cam_on_efficientnet_lite0(nt_type: str | None) -> None:
    model = EfficientNetLite("efficientnet-lite0")
    model.load_state_dict(torch.load(pretrained_weights(), weights_only=True))
    model = model.eval().requires_grad_(False)
    x, target = _cat(), torch.tensor([285])  # Egyptian cat
    theirs = _grad_cam(model, model._blocks[15], x, nt_type, target)
    ours = _ours(model, x, target, "grad_cam", "_blocks.15", nt_type)
    assert _relative(ours, theirs) <= 1e-5
