"""Guided backprop's rule on every ReLU-type unit a forward runs, or a refusal.

The rule: only positive gradients pass back through a unit clipping x to [0, hi] (ReLU: hi = ∞,
ReLU6: hi = 6), grad_in = 1[0 < x < hi]·max(grad_out, 0).

Module hooks only see `nn.ReLU` modules, so ReLU6, `torch.relu` called in `forward` or ONNX's
`Clip` would silently keep their plain backward. Every one of them reaches PyTorch through a
torch function (`nn.ReLU` → `F.relu`, `nn.ReLU6` → `F.hardtanh(0, 6)`, onnx2torch → `nn.ReLU`,
`nn.ReLU6` or `torch.clamp`), so a `TorchFunctionMode` held for the forward sees them all and
runs the call inside `_GuidedUnit`: the same forward values (the original call, inplace
included), the guided backward. The mode is off while it handles a call, so `nn.ReLU` →
`F.relu` → `torch.relu` is one unit, gated once. Nothing is attached to the model.

TorchScript runs its ReLUs in the interpreter, out of the mode's sight: refused before any
pass. So is a forward in which no unit ran (no ReLU network: the answer would be the gradient).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..protocol.errors import InvalidArgument

__all__ = ["GuidedModel", "guided_refusal", "torchscript_part"]

Model = Callable[[torch.Tensor], torch.Tensor]
# (args, kwargs) of a call → its upper bound when it is a ReLU-type unit, else None
_Parse = Callable[[Sequence[Any], Mapping[str, Any]], float | None]

_NOT_A_BOUND = math.nan  # a bound we cannot read as one number (never equals 0, 6 or ∞)
_UNITS = "nn.ReLU, nn.ReLU6, relu/relu6 functions, hardtanh or clamp to [0, 6] or [0, ∞)"


def _arg(args: Sequence[Any], kwargs: Mapping[str, Any], at: int, name: str, default: Any) -> Any:
    return args[at] if len(args) > at else kwargs.get(name, default)


def _number(value: object) -> float | None:
    """A clip bound as a float; None for no bound."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.requires_grad:
            return _NOT_A_BOUND
        return float(value.item())
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return _NOT_A_BOUND


def _clip(low: object, high: object) -> float | None:
    """The upper bound of a clip to [low, high] that is a ReLU (∞) or a ReLU6 (6), else None."""
    lo, hi = _number(low), _number(high)
    hi = math.inf if hi is None else hi
    return hi if lo == 0.0 and hi in (6.0, math.inf) else None


def _relu(_args: Sequence[Any], _kwargs: Mapping[str, Any]) -> float | None:
    return math.inf


def _relu6(_args: Sequence[Any], _kwargs: Mapping[str, Any]) -> float | None:
    return 6.0


def _hardtanh(args: Sequence[Any], kwargs: Mapping[str, Any]) -> float | None:
    return _clip(_arg(args, kwargs, 1, "min_val", -1.0), _arg(args, kwargs, 2, "max_val", 1.0))


def _clamp(args: Sequence[Any], kwargs: Mapping[str, Any]) -> float | None:
    return _clip(_arg(args, kwargs, 1, "min", None), _arg(args, kwargs, 2, "max", None))


def _clamp_min(args: Sequence[Any], kwargs: Mapping[str, Any]) -> float | None:
    return _clip(_arg(args, kwargs, 1, "min", None), None)


def _threshold(args: Sequence[Any], kwargs: Mapping[str, Any]) -> float | None:
    # threshold(x, 0, 0) replaces x <= 0 by 0: a ReLU.
    at, value = _arg(args, kwargs, 1, "threshold", None), _arg(args, kwargs, 2, "value", None)
    return math.inf if _number(at) == 0.0 and _number(value) == 0.0 else None


_PARSERS: dict[object, _Parse] = {
    **dict.fromkeys(
        (torch.relu, torch.relu_, F.relu, torch.Tensor.relu, torch.Tensor.relu_), _relu
    ),
    **dict.fromkeys((F.relu6, torch._C._nn.relu6, torch._C._nn.relu6_), _relu6),
    **dict.fromkeys((F.hardtanh, torch._C._nn.hardtanh, torch._C._nn.hardtanh_), _hardtanh),
    **dict.fromkeys(
        (
            torch.clamp,
            torch.clamp_,
            torch.clip,
            torch.clip_,
            torch.Tensor.clamp,
            torch.Tensor.clamp_,
            torch.Tensor.clip,
            torch.Tensor.clip_,
        ),
        _clamp,
    ),
    **dict.fromkeys(
        (torch.clamp_min, torch.clamp_min_, torch.Tensor.clamp_min, torch.Tensor.clamp_min_),
        _clamp_min,
    ),
    **dict.fromkeys((F.threshold, torch.threshold, torch.threshold_), _threshold),
}


class _GuidedUnit(torch.autograd.Function):
    """`call()` (a ReLU-type unit applied to x) forward, guided backprop's rule backward."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, call: Callable[[], torch.Tensor], high: float
    ) -> torch.Tensor:
        y = call()
        if y is x:  # an inplace unit: autograd must know x now holds y
            ctx.mark_dirty(x)
        # The gate as a mask of its own: x may be overwritten (inplace), y changed later.
        gate = y > 0 if high == math.inf else (y > 0) & (y < high)
        ctx.save_for_backward(gate)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (gate,) = ctx.saved_tensors
        return grad.clamp(min=0).masked_fill_(~gate, 0), None, None


class _GuidedMode(TorchFunctionMode):
    """Routes the ReLU-type calls of one forward through `_GuidedUnit`, counting them."""

    def __init__(self) -> None:
        super().__init__()
        self.units = 0

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: object,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        parse = _PARSERS.get(func)
        x = args[0] if args else kwargs.get("input")
        gradient_flows = isinstance(x, torch.Tensor) and x.requires_grad
        if parse is None or not gradient_flows or not torch.is_grad_enabled() or "out" in kwargs:
            return func(*args, **kwargs)
        high = parse(args, kwargs)
        if high is None:  # a clamp or hardtanh to some other range
            return func(*args, **kwargs)
        self.units += 1
        return _GuidedUnit.apply(x, lambda: func(*args, **kwargs), high)


def torchscript_part(model: object) -> str | None:
    """A description of the TorchScript in `model` (itself or a submodule), None if none."""
    if isinstance(model, torch.jit.ScriptFunction):
        return "the model is a TorchScript function"
    if isinstance(model, nn.Module):
        for name, module in model.named_modules():
            if isinstance(module, torch.jit.ScriptModule):
                where = f"its submodule {name!r}" if name else "the model"
                return f"{where} is TorchScript ({type(module).__name__})"
    return None


class GuidedModel:
    """`model` called with guided backprop's rule on its ReLU-type units (see the module).

    Raises `InvalidArgument(field="method")` on construction for TorchScript, and on a call
    whose forward ran no ReLU-type unit.
    """

    def __init__(self, model: Model) -> None:
        scripted = torchscript_part(model)
        if scripted is not None:
            raise InvalidArgument(
                f"method guided_backprop cannot be applied: {scripted}, whose ReLUs run in the "
                "TorchScript interpreter, out of reach of the guided backward rule, so the "
                "answer would silently be the plain gradient. Serve the eager model (or its "
                "ONNX export) for guided_backprop, or ask for method gradient.",
                field="method",
            )
        self.model = model

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        mode = _GuidedMode()
        with mode:
            scores = self.model(rows)
        if mode.units == 0:
            raise InvalidArgument(
                "method guided_backprop found no ReLU-type unit in the model's forward "
                f"({_UNITS}); its rule is defined for ReLU networks only, and the answer "
                "would be the plain gradient. Ask for method gradient.",
                field="method",
            )
        return scores


def guided_refusal(model: Model) -> str | None:
    """Why guided backprop can never apply to `model` as given (TorchScript), else None."""
    try:
        GuidedModel(model)
    except InvalidArgument as error:
        return error.message
    return None
