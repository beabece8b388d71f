"""Small CNNs whose ReLU-type units are applied in every way a model can, and their reference.

The reference replaces each unit by `ReferenceUnit`, an autograd rule written out here
independently of the engine: forward clip to [0, high], backward 1[0 < x < high]·max(g, 0).
Its plain gradient is what guided backprop must give on the model it mirrors.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

Unit = Callable[[torch.Tensor], torch.Tensor]


def _inplace_method(x: torch.Tensor) -> torch.Tensor:
    x.relu_()  # the result is dropped: the model relies on x itself being changed
    return x


MODULE_UNITS: dict[str, tuple[Callable[[], nn.Module], float]] = {
    "nn.ReLU": (nn.ReLU, math.inf),
    "nn.ReLU(inplace)": (lambda: nn.ReLU(inplace=True), math.inf),
    "nn.ReLU6": (nn.ReLU6, 6.0),
    "nn.ReLU6(inplace)": (lambda: nn.ReLU6(inplace=True), 6.0),
    "nn.Hardtanh(0,6)": (lambda: nn.Hardtanh(0.0, 6.0), 6.0),
}

FUNCTION_UNITS: dict[str, tuple[Unit, float]] = {
    "torch.relu": (torch.relu, math.inf),
    "torch.relu_": (torch.relu_, math.inf),
    "F.relu": (F.relu, math.inf),
    "F.relu(inplace)": (lambda x: F.relu(x, inplace=True), math.inf),
    "F.relu_": (F.relu_, math.inf),
    "Tensor.relu": (lambda x: x.relu(), math.inf),
    "Tensor.relu_": (_inplace_method, math.inf),
    "F.relu6": (F.relu6, 6.0),
    "F.relu6(inplace)": (lambda x: F.relu6(x, inplace=True), 6.0),
    "F.hardtanh(0,6)": (lambda x: F.hardtanh(x, 0.0, 6.0), 6.0),
    "F.hardtanh_(0,6)": (lambda x: F.hardtanh_(x, 0.0, 6.0), 6.0),
    "torch.clamp(min=0)": (lambda x: torch.clamp(x, min=0), math.inf),
    "Tensor.clamp(0,6)": (lambda x: x.clamp(0, 6), 6.0),
    "Tensor.clamp_(min=0)": (lambda x: x.clamp_(min=0.0), math.inf),
    "torch.clip(tensor 0, tensor 6)": (
        lambda x: torch.clip(x, torch.tensor(0.0), torch.tensor(6.0)),
        6.0,
    ),
    "Tensor.clamp_min(0)": (lambda x: x.clamp_min(0), math.inf),
    "F.threshold(0,0)": (lambda x: F.threshold(x, 0.0, 0.0), math.inf),
}

KINDS = [*MODULE_UNITS, *FUNCTION_UNITS]


def upper_bound(kind: str) -> float:
    return MODULE_UNITS[kind][1] if kind in MODULE_UNITS else FUNCTION_UNITS[kind][1]


class FunctionUnit(nn.Module):
    """A unit called as a function in `forward` (no ReLU module for hooks to find)."""

    def __init__(self, unit: Unit) -> None:
        super().__init__()
        self.unit = unit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.unit(x)


class _ReferenceRule(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, high: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.high = high
        return torch.minimum(torch.maximum(x, torch.zeros_like(x)), torch.full_like(x, high))

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (x,) = ctx.saved_tensors
        passes = (x > 0) & (x < ctx.high) & (grad > 0)
        return torch.where(passes, grad, torch.zeros_like(grad)), None


class ReferenceUnit(nn.Module):
    def __init__(self, high: float) -> None:
        super().__init__()
        self.high = high

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = _ReferenceRule.apply(x, self.high)
        return out


def _unit(kind: str) -> nn.Module:
    if kind in MODULE_UNITS:
        return MODULE_UNITS[kind][0]()
    return FunctionUnit(FUNCTION_UNITS[kind][0])


def _cnn(first: nn.Module, second: nn.Module) -> nn.Sequential:
    torch.manual_seed(7)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        first,
        nn.Conv2d(6, 8, 3, padding=1),
        second,
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32, 5),
    )
    with torch.no_grad():  # large pre-activations: both sides of 0 and of 6 are reached
        for layer in (model[0], model[2]):
            assert isinstance(layer, nn.Conv2d)
            layer.weight.mul_(6.0)
    return model.eval()


def cnn(kind: str) -> nn.Sequential:
    """The CNN with its two units applied as `kind`."""
    return _cnn(_unit(kind), _unit(kind))


def reference_of(kind: str) -> nn.Sequential:
    """The same CNN (same weights) with the reference rule in place of its units."""
    high = upper_bound(kind)
    return _cnn(ReferenceUnit(high), ReferenceUnit(high))


def inputs(count: int = 3) -> torch.Tensor:
    return 2.0 * torch.randn(count, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def quiet_trace(model: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch 2.14 deprecates torch.jit
        traced: torch.jit.ScriptModule = torch.jit.trace(model, example)  # type: ignore[no-untyped-call]
    return traced


def quiet_script(model: nn.Module) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted: torch.jit.ScriptModule = torch.jit.script(model)
    return scripted
