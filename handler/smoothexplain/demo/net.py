"""The demo CNN: a small VGG-style classifier for 64×64 shape images."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Final

import torch
from torch import nn

__all__ = [
    "INDEX_TO_NAME_FILE",
    "META_FILE",
    "WEIGHTS_FILE",
    "PooledClassifier",
    "ShapesNet",
    "check_width",
    "load_model",
]

# Artefact layout written by `smoothexplain.demo.train` and read by `load_model`.
WEIGHTS_FILE: Final[str] = "weights.pt"
INDEX_TO_NAME_FILE: Final[str] = "index_to_name.json"
META_FILE: Final[str] = "model-meta.json"


def _conv_block(in_channels: int, out_channels: int, *, pool: bool) -> nn.Sequential:
    # No conv bias: BatchNorm's shift makes it redundant.
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
    ]
    if pool:
        # Pooling straight after the conv runs BatchNorm and ReLU on a quarter of the pixels,
        # which is most of the CPU training time at these sizes.
        layers.append(nn.MaxPool2d(kernel_size=2))
    layers += [
        nn.BatchNorm2d(out_channels),
        # In-place on purpose: real backbones do this and explanation code must cope with it.
        nn.ReLU(inplace=True),
    ]
    return nn.Sequential(*layers)


class PooledClassifier(nn.Module):
    """`features` (a sequence of stages), global average pooling and a linear head.

    Returns logits ``(N, num_classes)``; global pooling makes it accept any ``H, W``. The quality
    report's randomisation study re-initialises ``features`` stage by stage, then ``classifier``.
    """

    def __init__(self, features: nn.Sequential, channels: int, num_classes: int) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        self.num_classes = num_classes
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(self.features(x))
        logits: torch.Tensor = self.classifier(torch.flatten(pooled, 1))
        return logits


def check_width(width: int) -> None:
    if width < 1:
        raise ValueError(f"width must be positive, got {width}")


class ShapesNet(PooledClassifier):
    """Four conv blocks, global average pooling and a linear head.

    Takes normalised images ``(N, 3, H, W)`` (see :mod:`smoothexplain.demo.preprocess`) and
    returns logits ``(N, num_classes)``; it accepts any ``H, W ≥ 8``.
    """

    def __init__(self, num_classes: int, width: int = 16) -> None:
        check_width(width)
        features = nn.Sequential(
            _conv_block(3, width, pool=True),
            _conv_block(width, 2 * width, pool=True),
            _conv_block(2 * width, 4 * width, pool=True),
            _conv_block(4 * width, 8 * width, pool=False),
        )
        super().__init__(features, 8 * width, num_classes)


def load_model(artifact_dir: Path) -> ShapesNet:
    """Rebuild a trained :class:`ShapesNet` from a training artefact directory, in eval mode."""
    meta = json.loads((artifact_dir / META_FILE).read_text())
    num_classes, width = meta.get("num_classes"), meta.get("width")
    if not isinstance(num_classes, int) or not isinstance(width, int):
        raise ValueError(f"{artifact_dir / META_FILE} lacks integer num_classes/width")
    model = ShapesNet(num_classes, width=width)
    state = torch.load(artifact_dir / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()
