"""The report's explanation grid: base methods × smoothings, all computed by `explain()`.

A :class:`Cell` is one (base method, smoothing) pair, labelled as in the AdaptGrad paper's
Table 2: a plain method (``GI``), its SmoothGrad (``S-GI``) and its AdaptGrad (``A-GI``).
SmoothGrad and AdaptGrad of one base always use the same number of noise samples.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import torch

from smoothexplain.demo import input_bounds
from smoothexplain.engine.api import explain

__all__ = [
    "BASES",
    "SMOOTHINGS",
    "Cell",
    "Settings",
    "attribute",
    "bounds",
    "cells",
]


@dataclass(frozen=True)
class Base:
    label: str
    method: str
    baseline: str | None = None  # "black" or "white" for IG: the input range's low or high end


@dataclass(frozen=True)
class Smoothing:
    prefix: str  # how the paper writes the combination: "S-GI"; "{}" for the plain method
    nt_type: str
    noise: str


BASES: Final[dict[str, Base]] = {
    "grad": Base("Grad", "gradient"),
    "ixg": Base("GI", "input_x_gradient"),
    "ig_b": Base("IG(B)", "integrated_gradients", "black"),
    "ig_w": Base("IG(W)", "integrated_gradients", "white"),
    "gbp": Base("GBP", "guided_backprop"),
    # Class-activation maps at the network's default layer, upsampled to the input (issue 16).
    "gcam": Base("Grad-CAM", "grad_cam"),
    "gcampp": Base("Grad-CAM++", "grad_cam_plus_plus"),
}

SMOOTHINGS: Final[dict[str, Smoothing]] = {
    "plain": Smoothing("{}", "none", "gaussian"),
    "sg": Smoothing("S-{}", "smoothgrad", "gaussian"),
    "ag": Smoothing("A-{}", "smoothgrad", "adaptive"),
    "sg_sq": Smoothing("S²-{}", "smoothgrad_sq", "gaussian"),
    "vg": Smoothing("V-{}", "vargrad", "gaussian"),
    "ag_sq": Smoothing("A²-{}", "smoothgrad_sq", "adaptive"),
    "avg": Smoothing("AV-{}", "vargrad", "adaptive"),
}

# The gradient's smoothed forms have names of their own in the literature.
_NAMES: Final[dict[tuple[str, str], str]] = {
    ("grad", "sg"): "SG",
    ("grad", "ag"): "AG",
    ("grad", "sg_sq"): "SG²",
    ("grad", "vg"): "VarGrad",
    ("grad", "ag_sq"): "AG²",
    ("grad", "avg"): "adaptive VarGrad",
}


@dataclass(frozen=True)
class Cell:
    base: str
    smoothing: str

    @property
    def label(self) -> str:
        name = _NAMES.get((self.base, self.smoothing))
        return name or SMOOTHINGS[self.smoothing].prefix.format(BASES[self.base].label)


def cells(bases: list[str], smoothings: list[str]) -> list[Cell]:
    return [Cell(b, s) for b in bases for s in smoothings]


@dataclass(frozen=True)
class Settings:
    """Smoothing parameters of the report (the service's defaults unless a study varies them)."""

    nt_samples: int = 50
    # IG costs n_steps passes per noise sample; these keep the 2 × 200-image grid in budget.
    ig_nt_samples: int = 10
    ig_steps: int = 8
    # Smoothed IG: "grid" (ig_nt_samples × ig_steps rows) or "joint" (ig_nt_samples rows, one
    # per (noise, α) pair); plain IG always uses the ig_steps Gauss–Legendre rule.
    ig_sampling: str = "grid"
    sigma: float = 0.15
    confidence: float = 0.95
    rows_per_pass: int = 256
    seed: int = 0


def bounds() -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (low, high) of the demo normalisation as (3, 1, 1) tensors."""
    low, high = input_bounds()
    return torch.tensor(low).view(-1, 1, 1), torch.tensor(high).view(-1, 1, 1)


def attribute(
    model: Callable[[torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    cell: Cell,
    settings: Settings,
    limits: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Attributions ``(N, C, H, W)`` of `cell` for normalised `inputs`, via `explain()`.

    `limits` are the (low, high) input bounds, (C, 1, 1) each; the demo's by default.
    """
    base, smoothing = BASES[cell.base], SMOOTHINGS[cell.smoothing]
    low, high = bounds() if limits is None else limits
    ig = base.method == "integrated_gradients"
    baseline = None if base.baseline is None else (low if base.baseline == "black" else high)
    result = explain(
        model,
        inputs,
        targets,
        method=base.method,
        nt_type=smoothing.nt_type,
        noise=smoothing.noise,
        nt_samples=settings.ig_nt_samples if ig else settings.nt_samples,
        nt_samples_batch_size=settings.rows_per_pass,
        sigma=settings.sigma,
        bounds=(low, high),
        confidence=settings.confidence,
        seed=settings.seed,
        baselines=baseline,
        n_steps=settings.ig_steps,
        ig_sampling=settings.ig_sampling,
    )
    assert isinstance(result, torch.Tensor)  # no convergence delta was asked for
    return result
