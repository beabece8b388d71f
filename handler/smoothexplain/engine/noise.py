"""Per-feature noise scales (Gaussian or AdaptGrad) and seeded per-job generators."""

from __future__ import annotations

import math

import torch

from ..spec import Bounds, ExplainSpec, NoiseKind, NtType

__all__ = ["adaptive_sigma", "job_seed", "make_generator", "noise_scale"]

_GOLDEN = 0x9E3779B97F4A7C15
_MASK63 = 2**63 - 1


def job_seed(seed: int, index: int) -> int:
    """Seed of input `index` of a call seeded with `seed` (index 0 keeps the seed itself)."""
    return (seed + index * _GOLDEN) & _MASK63


def make_generator(seed: int, device: torch.device) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


def adaptive_sigma(
    x: torch.Tensor, low: torch.Tensor, high: torch.Tensor, confidence: float
) -> torch.Tensor:
    """AdaptGrad: σᵢ = min(|xᵢ − low|, |xᵢ − high|) / (√2·erfinv(c)); 0 exactly at a bound."""
    quantile = math.sqrt(2.0) * torch.erfinv(torch.tensor(confidence, dtype=torch.float64)).item()
    distance = torch.minimum((x - low).abs(), (x - high).abs())
    return distance / quantile


def _range(x: torch.Tensor, bounds: Bounds | None) -> tuple[torch.Tensor, torch.Tensor]:
    if bounds is not None:
        return bounds.low.to(x.device, x.dtype), bounds.high.to(x.device, x.dtype)
    return x.min(), x.max()


def noise_scale(x: torch.Tensor, spec: ExplainSpec) -> torch.Tensor | None:
    """σ for one input (no batch dim), scalar or per feature; None when no noise is drawn."""
    if spec.nt_type is NtType.NONE:
        return None
    low, high = _range(x, spec.bounds)
    if spec.noise is NoiseKind.ADAPTIVE:
        return adaptive_sigma(x, low, high, spec.confidence).expand_as(x)
    if spec.stdevs is not None:
        return torch.tensor(spec.stdevs, dtype=x.dtype, device=x.device)
    return spec.sigma * (high - low)
