"""Base attribution methods: what each does with the gradient, and guided backprop's ReLU rule.

Every method is "gradient of the target score at some rows, then a per-sample finish":
gradient → ∂F/∂x̃;  input×gradient → x̃ ⊙ ∂F/∂x̃;
integrated gradients → (x̃ − x') ⊙ Σₖ wₖ ∂F/∂x(path point k);
guided backprop → ∂F/∂x̃ with every ReLU passing only positive gradients back.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from ..spec import Method

__all__ = ["finish_sample", "guided_relus"]


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


def _clamp_negative(gradient: torch.Tensor) -> torch.Tensor:
    return gradient.clamp(min=0)


def _gate_output(_module: nn.Module, _inputs: object, output: object) -> None:
    # A hook on the ReLU's *output* tensor sees ∂F/∂y; clamping it makes ReLU's own backward
    # produce relu(∂F/∂y)·[y > 0], guided backprop's rule. Unlike a module backward hook this
    # works with inplace ReLUs and never changes the forward values.
    if isinstance(output, torch.Tensor) and output.requires_grad:
        output.register_hook(_clamp_negative)  # type: ignore[no-untyped-call]


@contextmanager
def guided_relus(model: nn.Module) -> Iterator[None]:
    """Apply guided backprop's rule to every `nn.ReLU` in `model` for the duration of the block."""
    handles: list[RemovableHandle] = [
        module.register_forward_hook(_gate_output)
        for module in model.modules()
        if isinstance(module, nn.ReLU)
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
