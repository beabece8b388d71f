"""Load a served model: eager + state_dict (weights_only), TorchScript, or ONNX via onnx2torch."""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import ServingConfig
from .errors import InvalidArgument

__all__ = ["load_labels", "load_model"]


def _import_class(path: str) -> Callable[..., nn.Module]:
    module_name, _, class_name = path.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as error:
        raise InvalidArgument(
            f"model_class {path!r} cannot be imported: {error}", field="model_class"
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise InvalidArgument(f"model_class {path!r} is not an nn.Module", field="model_class")
    return cls


def _eager(config: ServingConfig, weights: Path, device: torch.device) -> nn.Module:
    model = _import_class(config.model_class)(**dict(config.model_kwargs))
    # weights_only=True: a state_dict holding a pickled object (code) is refused, not run.
    state = torch.load(weights, map_location=device, weights_only=True)
    if not isinstance(state, dict):
        raise InvalidArgument(f"{weights.name} must hold a state_dict", field="weights")
    model.load_state_dict(state)
    return model


def _onnx(weights: Path) -> nn.Module:
    import onnx  # optional serving dependencies, imported only for ONNX models
    from onnx2torch import convert  # type: ignore[import-untyped]

    converted: nn.Module = convert(onnx.load(str(weights)))
    return converted


def load_model(model_dir: Path, config: ServingConfig, device: torch.device) -> nn.Module:
    """The model in eval mode on `device`, its parameters frozen (we only need input gradients)."""
    weights = model_dir / config.weights
    if not weights.is_file():
        raise InvalidArgument(
            f"weights file {config.weights!r} is not in the archive", field="weights"
        )
    model: nn.Module
    if config.format == "eager":
        model = _eager(config, weights, device)
    elif config.format == "torchscript":
        model = torch.jit.load(str(weights), map_location=device)  # type: ignore[no-untyped-call]
    else:
        model = _onnx(weights)
    model = model.to(device).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def load_labels(model_dir: Path, config: ServingConfig) -> dict[int, str]:
    path = model_dir / config.labels
    if not path.is_file():
        return {}
    raw: Any = json.loads(path.read_text())
    return {int(k): str(v) for k, v in raw.items()}
