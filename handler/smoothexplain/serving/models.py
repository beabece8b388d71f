"""Load a served model: eager + state_dict (weights_only), TorchScript, or ONNX via onnx2torch.

Errors say what to fix: a class that cannot be imported, a state_dict whose keys do not fit
(the missing and unexpected keys named), a weights file that is not a state_dict.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import pickle
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..engine.folding import fold_batchnorm
from ..protocol.errors import InvalidArgument, ModelOutputError
from .config import ServingConfig

__all__ = [
    "SelectOutput",
    "Served",
    "load_labels",
    "load_model",
    "load_served",
    "prepare_model",
    "select_output",
]

_KEYS_SHOWN = 5  # missing / unexpected state_dict keys named in an error
_FOLD_TOLERANCE = 1e-4  # relative L2 of the scores that a folded model may move


def _import_module(name: str, model_dir: Path | None) -> Any:
    """`name` from the archive's own files first (its model.py), else from the installed
    packages: a user's model file ships inside the archive, not on the worker's path."""
    local = model_dir / f"{name.replace('.', '/')}.py" if model_dir is not None else None
    if local is not None and local.is_file():
        spec = importlib.util.spec_from_file_location(name, local)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {local.name}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses and pickling look modules up by name
        if str(model_dir) not in sys.path:
            sys.path.append(str(model_dir))  # the model file's own sibling imports
        spec.loader.exec_module(module)
        return module
    return importlib.import_module(name)


def _import_class(path: str, model_dir: Path | None = None) -> Callable[..., nn.Module]:
    module_name, _, class_name = path.partition(":")
    try:
        cls = getattr(_import_module(module_name, model_dir), class_name)
    except Exception as error:  # ImportError, AttributeError, or the file's own errors
        raise InvalidArgument(
            f"model_class {path!r} cannot be imported: {type(error).__name__}: {error}",
            field="model_class",
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise InvalidArgument(f"model_class {path!r} is not an nn.Module", field="model_class")
    return cls


def _named(keys: list[str]) -> str:
    shown = ", ".join(keys[:_KEYS_SHOWN])
    return shown + (f" and {len(keys) - _KEYS_SHOWN} more" if len(keys) > _KEYS_SHOWN else "")


def _load_state(model: nn.Module, state: dict[str, Any], weights: str) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    problems = []
    if missing:
        problems.append(f"missing keys {_named(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_named(unexpected)}")
    misshapen = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and isinstance(state[k], torch.Tensor) and state[k].shape != v.shape
    ]
    if misshapen:
        problems.append(f"shapes differ (file vs model): {_named(misshapen)}")
    if problems:
        raise InvalidArgument(
            f"state_dict {weights} does not fit {type(model).__name__}: " + "; ".join(problems),
            field="weights",
        )
    model.load_state_dict(state)


def _eager(
    config: ServingConfig, weights: Path, device: torch.device, model_dir: Path
) -> nn.Module:
    cls = _import_class(config.model_class, model_dir)
    try:
        model = cls(**dict(config.model_kwargs))
    except Exception as error:
        raise InvalidArgument(
            f"{config.model_class}(**{dict(config.model_kwargs)}) failed: "
            f"{type(error).__name__}: {error}",
            field="model_kwargs",
        ) from None
    # weights_only=True: a state_dict holding a pickled object (code) is refused, not run.
    try:
        state = torch.load(weights, map_location=device, weights_only=True)
    except pickle.UnpicklingError:
        raise InvalidArgument(
            f"{weights.name}: Weights only load failed: torch.load(weights_only=True) refuses "
            "files holding objects other than tensors (unpickling them could run code); "
            "save model.state_dict() itself",
            field="weights",
        ) from None
    except Exception as error:
        raise InvalidArgument(
            f"{weights.name} cannot be read by torch.load: {type(error).__name__}: {error}",
            field="weights",
        ) from None
    if not isinstance(state, dict):
        raise InvalidArgument(f"{weights.name} must hold a state_dict", field="weights")
    _load_state(model, state, weights.name)
    return model


def _onnx(weights: Path) -> nn.Module:
    import onnx  # optional serving dependencies, imported only for ONNX models
    from onnx2torch import convert  # type: ignore[import-untyped]

    try:
        converted: nn.Module = convert(onnx.load(str(weights)))
    except NotImplementedError as error:  # an operator or opset onnx2torch does not know
        raise InvalidArgument(
            f"{weights.name} cannot be converted to PyTorch by onnx2torch ({error}); export "
            "with torch.onnx.export(..., dynamo=False, opset_version=17)",
            field="weights",
        ) from None
    return converted


class SelectOutput(nn.Module):
    """The logits of a model that returns more than a tensor: `output` is an index (digits)
    into a tuple/list, else a mapping key or an attribute (`logits`)."""

    def __init__(self, inner: nn.Module, output: str) -> None:
        super().__init__()
        self.inner, self.output = inner, output

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return select_output(self.inner(rows), self.output)


def select_output(result: object, output: str) -> torch.Tensor:
    """`result[int(output)]`, `result[output]` or `result.output`, checked to be a tensor."""
    try:
        if output.isdigit() and isinstance(result, tuple | list):
            picked = result[int(output)]
        elif isinstance(result, dict):
            picked = result[output]
        else:
            picked = getattr(result, output)
    except (IndexError, KeyError, AttributeError):
        raise ModelOutputError(
            f"model output {type(result).__name__} has no {output!r} (config key 'output')"
        ) from None
    if not isinstance(picked, torch.Tensor):
        raise ModelOutputError(
            f"model output {output!r} is a {type(picked).__name__}, not a tensor"
        )
    return picked


@dataclass(frozen=True)
class Served:
    """What a worker runs: `model` for the input methods (BatchNorm folded, the logits
    selected), and `layers`, the model as its archive defines it, whose modules the
    class-activation maps read by name (folding traces the model with torch.fx: modules it
    traced through never run, folded BatchNorms are gone, and a folded convolution outputs
    what its BatchNorm did)."""

    model: nn.Module
    layers: nn.Module


def load_model(
    model_dir: Path,
    config: ServingConfig,
    device: torch.device,
    note: Callable[[str], None] | None = None,
) -> nn.Module:
    """`load_served(...).model`: the model the input methods run."""
    return load_served(model_dir, config, device, note).model


def load_served(
    model_dir: Path,
    config: ServingConfig,
    device: torch.device,
    note: Callable[[str], None] | None = None,
) -> Served:
    """The model in eval mode on `device`, its parameters frozen (we only need input gradients),
    its BatchNorms folded into their convolutions when `fold_batchnorm` (what was folded goes
    to `note`: the worker log, the archive check), and the unfolded model beside it."""
    weights = model_dir / config.weights
    if not weights.is_file():
        raise InvalidArgument(
            f"weights file {config.weights!r} is not in the archive", field="weights"
        )
    model: nn.Module
    if config.format == "eager":
        model = _eager(config, weights, device, model_dir)
    elif config.format == "torchscript":
        model = torch.jit.load(str(weights), map_location=device)  # type: ignore[no-untyped-call]
    else:
        model = _onnx(weights)
    model = model.to(device).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    layers = model
    model, said = prepare_model(model, config)
    if note is not None and said:
        note(said)
    return Served(SelectOutput(model, config.output) if config.output else model, layers)


def prepare_model(model: nn.Module, config: ServingConfig) -> tuple[nn.Module, str]:
    """The eval-mode model as the server runs it (BatchNorm folded per `fold_batchnorm`) and a
    line saying what folding did ("" when it has no BatchNorm). Benchmarks and tests that
    compare with the server run their in-process reference through it too."""
    if not any(_is_batchnorm(m) for m in model.modules()):
        return model, ""
    if not config.fold_batchnorm:
        return model, "BatchNorm2d not folded (fold_batchnorm: false)"
    if config.format == "torchscript":
        return model, "BatchNorm2d not folded: TorchScript models cannot be traced by torch.fx"
    folded = fold_batchnorm(model)
    if folded.count == 0:
        return model, f"BatchNorm2d not folded: {folded.left}"
    if (change := _disagreement(model, folded.model, config)) > _FOLD_TOLERANCE:
        return model, f"BatchNorm2d not folded: the folded model's scores moved {change:.1e}"
    rest = f"; {folded.left}" if folded.left else ""
    return folded.model, f"BatchNorm2d folded into the convolution before it: {folded.count}{rest}"


def _label(value: object) -> str:
    # TorchServe's ImageNet file maps to [wordnet id, name]; ours maps to the name.
    if isinstance(value, list) and value:
        return str(value[-1])
    return str(value)


def _is_batchnorm(module: nn.Module) -> bool:
    """A BatchNorm2d, eager or compiled by TorchScript (which keeps the class name only)."""
    return isinstance(module, nn.BatchNorm2d) or getattr(module, "original_name", "") == (
        "BatchNorm2d"
    )


def _disagreement(model: nn.Module, folded: nn.Module, config: ServingConfig) -> float:
    """Relative L2 between the two models' scores on two random inputs of the served shape: a
    trace that missed some Python behaviour would show here (folding itself moves ~1e-6)."""
    pre = config.preprocess
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    rows = torch.randn(
        2, pre.channels, pre.size, pre.size, generator=torch.Generator().manual_seed(0)
    ).to(device)
    with torch.no_grad():
        before, after = model(rows), folded(rows)
    if config.output:
        before, after = select_output(before, config.output), select_output(after, config.output)
    if not isinstance(before, torch.Tensor) or not isinstance(after, torch.Tensor):
        return float("inf")  # not a scores tensor: leave it to the model check to say
    before, after = before.float(), after.float()
    return float((after - before).norm() / before.norm().clamp_min(1e-12))


def load_labels(model_dir: Path, config: ServingConfig) -> dict[int, str]:
    path = model_dir / config.labels
    if not path.is_file():
        return {}
    raw: Any = json.loads(path.read_text())
    return {int(k): _label(v) for k, v in raw.items()}
