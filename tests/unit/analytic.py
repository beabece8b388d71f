"""Tiny models whose attributions are known in closed form, and the small CNN used for parity."""

from __future__ import annotations

import torch
from torch import nn


class PolyScores(nn.Module):
    """Two separable class scores: F₀ = Σ a·x², F₁ = Σ c·x³ (over all features of a row)."""

    def __init__(self, a: torch.Tensor, c: torch.Tensor) -> None:
        super().__init__()
        self.a = nn.Parameter(a.clone(), requires_grad=False)
        self.c = nn.Parameter(c.clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        quad = (self.a * x.square()).flatten(1).sum(1)
        cubic = (self.c * x.pow(3)).flatten(1).sum(1)
        return torch.stack([quad, cubic], dim=1)


class ReluSquare(nn.Module):
    """F₀ = Σ a·relu(x)², F₁ = −F₀: guided backprop gives 2·max(±a, 0)·relu(x)."""

    def __init__(self, a: torch.Tensor, inplace: bool = False) -> None:
        super().__init__()
        self.a = nn.Parameter(a.clone(), requires_grad=False)
        self.relu = nn.ReLU(inplace=inplace)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = (self.a * self.relu(x * 1.0).square()).flatten(1).sum(1)
        return torch.stack([score, -score], dim=1)


def small_cnn(seed: int = 0, inplace: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(inplace=inplace),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.ReLU(inplace=inplace),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32, 5),
    )
    return model.eval()
