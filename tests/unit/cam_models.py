"""Models for the class-activation-map tests: one whose layer gradient is known in closed form,
a model that calls one module twice, and a tiny vision transformer (token layers)."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import VisionTransformer


class SquareHead(nn.Module):
    """Layer `body` (a 1x1 conv: A = W x), then F_t = Σ_kij w_tk A_kij²: ∂F_t/∂A_k = 2 w_tk A_k."""

    def __init__(self, channels: int = 4, classes: int = 3, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.body = nn.Conv2d(3, channels, 1, bias=False)
        self.body.weight.data = torch.randn(channels, 3, 1, 1, generator=g)
        self.w = nn.Parameter(torch.randn(classes, channels, generator=g), requires_grad=False)
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.body(x)
        return torch.einsum("tk,nkij->nt", self.w, a * a)


class SharedActivation(nn.Module):
    """One ReLU module run twice (as EfficientNet-Lite's shared activation is)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.act(self.conv2(self.act(self.conv1(x))))
        out: torch.Tensor = self.head(a.mean(dim=(2, 3)))
        return out


def tiny_vit(seed: int = 0) -> VisionTransformer:
    """32² inputs in 8² patches: a class token and a 4 x 4 grid of 16-wide tokens."""
    torch.manual_seed(seed)
    model = VisionTransformer(
        image_size=32,
        patch_size=8,
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        mlp_dim=32,
        num_classes=3,
    )
    nn.init.normal_(model.heads.head.weight)  # torchvision starts the head at zero
    return model.eval().requires_grad_(False)
