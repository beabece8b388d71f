"""The AdaptGrad paper's own numbers, quoted for comparison (not measured here).

Zhou et al. (2024), "Rethinking the Principle of Gradient Smooth Methods in Model Explanation",
Table 2: Sparseness (Quantus) on ImageNet of torchvision's pretrained VGG16, Inception-v3 and
ResNet-50, with SmoothGrad and AdaptGrad at N = 50 samples and AdaptGrad's c = 0.95 in the
paper's Eq. 13.
"""

from __future__ import annotations

from typing import Final

__all__ = ["PAPER_NETWORKS", "PAPER_SPARSENESS"]

PAPER_NETWORKS: Final[tuple[str, ...]] = ("VGG16", "Inception-v3", "ResNet-50")

# key → (VGG16, Inception-v3, ResNet-50)
_TABLE_2: Final[dict[str, tuple[float, float, float]]] = {
    "grad/plain": (0.5421, 0.5546, 0.5626),
    "grad/sg": (0.5334, 0.5422, 0.5536),
    "grad/ag": (0.5608, 0.5621, 0.5659),
    "ixg/plain": (0.6198, 0.6152, 0.6304),
    "ixg/sg": (0.6074, 0.5994, 0.6176),
    "ixg/ag": (0.6487, 0.6425, 0.6479),
    "ig_w/plain": (0.6284, 0.7083, 0.6178),
    "ig_w/sg": (0.6229, 0.7562, 0.6171),
    "ig_w/ag": (0.6327, 0.7586, 0.6205),
    "ig_b/plain": (0.6391, 0.6348, 0.6288),
    "ig_b/sg": (0.6371, 0.6392, 0.6250),
    "ig_b/ag": (0.6397, 0.6439, 0.6266),
}

PAPER_SPARSENESS: Final[dict[str, dict[str, float]]] = {
    network: {key: values[i] for key, values in _TABLE_2.items()}
    for i, network in enumerate(PAPER_NETWORKS)
}
