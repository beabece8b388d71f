"""Base attribution methods: what each does with the gradient (guided backprop's rule: guided.py).

Every method is "gradient of the target score at some rows, then a per-sample finish":
gradient → ∂F/∂x̃;  input×gradient → x̃ ⊙ ∂F/∂x̃;
integrated gradients → (x̃ − x') ⊙ Σₖ wₖ ∂F/∂x(path point k);
guided backprop → ∂F/∂x̃ with every ReLU-type unit passing only positive gradients back.
"""

from __future__ import annotations

import torch

from .spec import Method

__all__ = ["finish_sample"]


def finish_sample(
    method: Method, gradient: torch.Tensor, noisy: torch.Tensor, baseline: torch.Tensor | None
) -> torch.Tensor:
    """Attribution of one noisy sample (or a stack of them) from its (path-summed) gradient."""
    if method is Method.INPUT_X_GRADIENT:
        return gradient * noisy
    if method is Method.INTEGRATED_GRADIENTS:
        assert baseline is not None
        return gradient * (noisy - baseline)
    return gradient
