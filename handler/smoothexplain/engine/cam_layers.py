"""Which layer a class-activation map reads: named, or the model's default; refused where no
map can be read (a function, TorchScript, a shared or unknown module).

A census forward per input shape (engine/cam.py) finds what every module outputs and how often
it runs; a long-lived scheduler (the server's) takes it once.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..protocol.errors import InvalidArgument
from .cam import LayerCensus, LayerReader, take_census
from .guided import torchscript_part
from .spec import ExplainSpec

__all__ = ["CamLayers", "cam_refusal"]

Model = Callable[[torch.Tensor], torch.Tensor]


def cam_refusal(root: object) -> str | None:
    """Why no CAM can be read from `root` (a function, TorchScript), else None."""
    if not isinstance(root, nn.Module):
        return (
            "class-activation maps read a module of the model by forward hooks; the model is "
            f"a {type(root).__name__}, not an nn.Module. Ask for an input method (gradient)."
        )
    scripted = torchscript_part(root)
    if scripted is not None:
        return (
            f"class-activation maps cannot be read: {scripted}, whose modules take no forward "
            "hooks. Serve the eager model (or its ONNX export) for CAMs, or ask for an input "
            "method (gradient)."
        )
    return None


class CamLayers:
    """The layers of `root` (the module tree that names them) as read through `model` (the
    callable whose forward runs them: `root` itself or a wrapper of it)."""

    def __init__(self, root: object, model: Model) -> None:
        self.root, self.model = root, model
        self.refusal = cam_refusal(root)
        self._censuses: dict[tuple[object, ...], LayerCensus] = {}
        self._readers: dict[str, LayerReader] = {}

    def census(self, row: torch.Tensor) -> LayerCensus:
        """The census for inputs shaped like `row` (one input), taken on first use."""
        key = (tuple(row.shape), row.dtype, row.device)
        if key not in self._censuses:
            self._refuse()
            assert isinstance(self.root, nn.Module)
            self._censuses[key] = take_census(self.root, self.model, row.detach())
        return self._censuses[key]

    def resolve(self, spec: ExplainSpec, row: torch.Tensor, prefix: str = "") -> str:
        """The layer `spec` reads at inputs like `row`: its own, else the default.
        `InvalidArgument` names `<prefix>layer` (or `<prefix>method` when no CAM applies)."""
        self._refuse(prefix)
        census = self.census(row)
        name = spec.layer or census.default()
        if name is None:
            raise InvalidArgument(
                f"{prefix}layer: the model has no module with a 4-D output that runs once per "
                "forward; name one (a transformer's token layer with cam_reshape)",
                field=f"{prefix}layer",
            )
        census.check(name, spec.cam_reshape, field=f"{prefix}layer")
        return name

    def reader(self, name: str) -> LayerReader:
        if name not in self._readers:
            assert isinstance(self.root, nn.Module)
            self._readers[name] = LayerReader(self.model, self.root.get_submodule(name), name)
        return self._readers[name]

    def _refuse(self, prefix: str = "") -> None:
        if self.refusal is not None:
            raise InvalidArgument(self.refusal, field=f"{prefix}method")
