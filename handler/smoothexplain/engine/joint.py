"""Joint (noise, path) sampling for smoothed integrated gradients.

Smoothed IG is one expectation over the noise ε and the path position α:

    M(x̃) = (x̃ − x') ⊙ ∫₀¹ ∂F/∂x (x' + α(x̃ − x')) dα,   x̃ = x + ε,

and for α ~ U(0, 1) the one-point value g(ε, α) = (x̃ − x') ⊙ ∂F/∂x(x' + α(x̃ − x')) has
E_α[g | ε] = M(x̃) exactly. The grid rule spends n_steps rows on a quadrature of every noise
sample's integral; joint sampling spends one row per noise sample instead, so every row sees a
fresh ε, which is where most of the error is.

Estimators, for n noise samples (rows: n for smoothgrad, 2n for smoothgrad_sq and vargrad):

- smoothgrad: mean over s of g(εₛ, αₛ) — unbiased for E_ε[M].
- smoothgrad_sq, vargrad: two rows per sample with independent α, giving aₛ, bₛ with
  E[aₛ | εₛ] = E[bₛ | εₛ] = M(x̃ₛ) and aₛ, bₛ independent given εₛ, so E[aₛbₛ] = E_ε[M²]:
  smoothgrad_sq = mean(a·b) is unbiased for E_ε[M²], and vargrad = mean(a·b) − mean(a)·mean(b)
  has expectation (n − 1)/n · Var_ε[M] — exactly the expectation of the grid rule's population
  variance (with an exact integral), so switching sampling changes the noise, not the target.
  Both are clamped at 0 (their targets are ≥ 0; the clamp can only move an estimate closer).

α is stratified: stream j of a job uses αₛⱼ = (πⱼ(s) + uₛⱼ)/n with a random permutation πⱼ of
0..n−1 and uₛⱼ ~ U(0, 1), so each αₛⱼ is uniform on [0, 1] and the n rows of a stream cover
[0, 1] evenly. The streams' permutations are independent, so aₛ and bₛ stay independent given εₛ,
and aₛ, b_t (s ≠ t) are independent: the estimators above remain exactly unbiased. The α table is
drawn once per job, before any row, from a generator of its own seeded from the job's seed —
the noise stream is the grid rule's, and the result does not depend on the chunk size.

The convergence delta keeps its grid definition, mean over samples of Σᵢ attrᵢ − (F(x̃) − F(x')),
with attr the sample's one-point value (the mean of its two). E_α[Σᵢ gᵢ] = F(x̃) − F(x') exactly,
so under joint sampling the delta has expectation 0 for any model: it measures the Monte Carlo
error of the completeness sum, not a quadrature error.
"""

from __future__ import annotations

import torch

from .noise import make_generator

__all__ = ["alpha_seed", "joint_alphas", "joint_rows", "point_attributions"]

_MIX = 0xBF58476D1CE4E5B9  # splitmix64's multiplier: α seeds never line up with job seeds
_MASK63 = 2**63 - 1


def alpha_seed(seed: int) -> int:
    """Seed of a job's α generator, derived from (and distinct from) its noise seed."""
    return ((seed ^ 0x5851F42D4C957F2D) * _MIX) & _MASK63


def joint_alphas(seed: int, samples: int, streams: int) -> torch.Tensor:
    """(samples, streams) float64 path positions on CPU, each stream stratified over [0, 1]."""
    generator = make_generator(alpha_seed(seed), torch.device("cpu"))
    columns = []
    for _ in range(streams):
        strata = torch.randperm(samples, generator=generator, dtype=torch.float64)
        jitter = torch.rand(samples, generator=generator, dtype=torch.float64)
        columns.append((strata + jitter) / samples)
    return torch.stack(columns, dim=1)


def joint_rows(baseline: torch.Tensor, noisy: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """Rows x' + α(x̃ − x') for a (k, ...) stack of samples and their (k, per) α: (k·per, ...)."""
    k, per = alphas.shape
    shape = noisy.shape[1:]
    a = alphas.to(noisy.device, noisy.dtype).view(k, per, *([1] * len(shape)))
    rows = baseline + a * (noisy - baseline).unsqueeze(1)
    return rows.reshape(k * per, *shape)


def point_attributions(
    grads: torch.Tensor, noisy: torch.Tensor, baseline: torch.Tensor
) -> torch.Tensor:
    """One-point estimates (x̃ − x') ⊙ ∂F/∂x(row) in float64, shaped (k, per, ...) for the
    (k·per, ...) gradients of `joint_rows`' rows."""
    k = noisy.shape[0]
    grads = grads.to(torch.float64).view(k, -1, *noisy.shape[1:])
    span = noisy.to(torch.float64) - baseline.to(torch.float64)
    return grads * span.unsqueeze(1)
