"""Class-activation maps (issue 16): a layer's activation A and gradient G = ∂F/∂A, one map.

grad_cam → ReLU(Σₖ mean_ij(Gₖ) Aₖ);  layer_gradient_x_activation → Σₖ Gₖ ⊙ Aₖ (signed);
grad_cam_plus_plus → ReLU(Σₖ wₖ Aₖ), wₖ = Σ_ij αₖᵢⱼ ReLU(Gₖᵢⱼ) with Grad-CAM++'s closed form
αₖᵢⱼ = Gₖᵢⱼ² / (2 Gₖᵢⱼ² + Σ_ab Aₖab Gₖᵢⱼ³) (0 where the denominator is);
guided_grad_cam → guided backprop ⊙ the Grad-CAM upsampled to the input.

The layer is read by a forward hook that lives for one call (`LayerReader`); the hook hands the
rest of the model a copy, so an inplace unit after the layer cannot overwrite what was read.
A token layer's (rows, tokens, channels) output is laid out on a grid first (`CamReshape`).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..protocol.errors import InvalidArgument
from .spec import CamReshape, Method

__all__ = [
    "LayerCensus",
    "LayerReader",
    "layer_maps",
    "take_census",
    "upsample",
]

Model = Callable[[torch.Tensor], torch.Tensor]
_SUGGESTED = 3  # nearest valid names offered for an unknown layer


@dataclass(frozen=True)
class LayerCensus:
    """What each module of a model did in one forward: its calls and its output's shape
    (None: not one tensor), in the order the modules finished."""

    calls: dict[str, int]
    shapes: dict[str, tuple[int, ...] | None]

    def usable(self, reshape: CamReshape | None) -> list[str]:
        """Modules a CAM can read: run once, with a 4-D output (or a token output that
        `reshape` lays out), in forward order."""
        return [n for n in self.shapes if self._why_not(n, reshape) is None]

    def default(self) -> str | None:
        """The last module with a 4-D output that runs once. A 1 x 1 output (a global
        pooling) is passed over: its map is one number, the same everywhere. Token layers are
        never the default: the last ones feed the class token alone (a zero map); name one."""
        names = [n for n in self.usable(None) if _area(self.shapes[n]) != 1]
        return names[-1] if names else None

    def check(self, name: str, reshape: CamReshape | None, field: str = "layer") -> None:
        """`InvalidArgument(field)` unless a CAM can read module `name`, with the nearest
        usable names."""
        why = self._why_not(name, reshape)
        if why is None:
            return
        usable = self.usable(reshape)
        near = difflib.get_close_matches(name, usable, n=_SUGGESTED, cutoff=0.0)
        hint = f"; nearest usable layers: {', '.join(near)}" if near else "; no module is usable"
        raise InvalidArgument(f"{field} {name!r:.80} {why}{hint}", field=field)

    def _why_not(self, name: str, reshape: CamReshape | None) -> str | None:
        if name not in self.calls:
            return "is not a module of the model that runs in its forward"
        if self.calls[name] > 1:
            return (
                f"runs {self.calls[name]} times per forward (a shared module): its activation "
                "is not one map"
            )
        shape = self.shapes[name]
        if shape is None:
            return "does not output one tensor"
        if len(shape) == 4:
            return None
        if len(shape) == 3 and reshape is not None:
            rows, cols = reshape.grid
            if shape[1] == reshape.skip_tokens + rows * cols:
                return None
            return (
                f"outputs {shape[1]} tokens, not cam_reshape's skip_tokens + rows x cols = "
                f"{reshape.skip_tokens + rows * cols}"
            )
        hint = " (a token layer: give cam_reshape)" if len(shape) == 3 else ""
        return f"outputs shape {shape[1:]} per row, not (channels, height, width){hint}"


def _area(shape: tuple[int, ...] | None) -> int:
    return shape[2] * shape[3] if shape is not None and len(shape) == 4 else 0


def take_census(root: nn.Module, model: Model, row: torch.Tensor) -> LayerCensus:
    """One gradient-free forward of `model` on `row` (one input, no batch dimension) with a
    counting hook on every module of `root` (named as `root` names them); hooks removed."""
    calls: dict[str, int] = {}
    shapes: dict[str, tuple[int, ...] | None] = {}

    def hook(name: str) -> Callable[..., None]:
        def seen(_module: nn.Module, _args: Any, output: Any) -> None:
            calls[name] = calls.get(name, 0) + 1
            shapes.pop(name, None)  # finish order: the last call counts
            shapes[name] = tuple(output.shape) if isinstance(output, torch.Tensor) else None

        return seen

    handles = [m.register_forward_hook(hook(n)) for n, m in root.named_modules() if n]
    try:
        with torch.no_grad():
            model(row.unsqueeze(0))
    finally:
        for handle in handles:
            handle.remove()
    return LayerCensus(calls, shapes)


class LayerReader:
    """`model` called with module `layer` read: after a call, `activation` is the layer's
    output in the autograd graph (laid out per `reshape` by `layer_maps`)."""

    def __init__(self, model: Model, layer: nn.Module, name: str) -> None:
        self.model, self.layer, self.name = model, layer, name
        self.activation: torch.Tensor | None = None

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        read: list[torch.Tensor] = []

        def hook(_module: nn.Module, _args: Any, output: Any) -> Any:
            if isinstance(output, torch.Tensor):
                if not output.requires_grad:  # nothing before it keeps a graph: start it here
                    output = output.detach().requires_grad_(True)
                read.append(output)
                return output.clone()  # later inplace units change the copy, not `output`
            return None

        handle = self.layer.register_forward_hook(hook)
        try:
            scores = self.model(rows)
        finally:
            handle.remove()
        if len(read) != 1:  # census said once; a forward that branches on its input differs
            raise InvalidArgument(
                f"layer {self.name!r} ran {len(read)} times in this forward, not once",
                field="layer",
            )
        self.activation = read[0]
        return scores


def _grid(tensor: torch.Tensor, reshape: CamReshape | None) -> torch.Tensor:
    """(rows, C, h, w) from a 4-D map, or from a (rows, tokens, C) token layer."""
    if tensor.dim() == 4:
        return tensor
    assert reshape is not None  # the census admits token layers with a reshape only
    rows, cols = reshape.grid
    tokens = tensor[:, reshape.skip_tokens :]
    return tokens.reshape(tensor.shape[0], rows, cols, tensor.shape[2]).permute(0, 3, 1, 2)


def _grad_cam(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    weights = g.mean(dim=(2, 3), keepdim=True)
    return (weights * a).sum(dim=1, keepdim=True).clamp_min(0)


def _grad_cam_plus_plus(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    squared = g * g
    denominator = 2 * squared + a.sum(dim=(2, 3), keepdim=True) * squared * g
    safe = torch.where(denominator == 0, torch.ones_like(denominator), denominator)
    alpha = torch.where(denominator == 0, torch.zeros_like(squared), squared / safe)
    weights = (alpha * g.clamp_min(0)).sum(dim=(2, 3), keepdim=True)
    return (weights * a).sum(dim=1, keepdim=True).clamp_min(0)


def _gradient_x_activation(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return (g * a).sum(dim=1, keepdim=True)


_MAPS: dict[Method, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    Method.GRAD_CAM: _grad_cam,
    Method.GUIDED_GRAD_CAM: _grad_cam,  # its CAM half
    Method.GRAD_CAM_PLUS_PLUS: _grad_cam_plus_plus,
    Method.LAYER_GRADIENT_X_ACTIVATION: _gradient_x_activation,
}


def layer_maps(
    methods: Sequence[Method],
    activation: torch.Tensor,
    gradient: torch.Tensor,
    reshape: CamReshape | None,
) -> torch.Tensor:
    """(rows, 1, h, w) float32 maps, row r by `methods[r]`, from the layer's A and G."""
    a = _grid(activation.float(), reshape)
    g = _grid(gradient.float(), reshape)
    maps = torch.empty((a.shape[0], 1, *a.shape[2:]), dtype=torch.float32, device=a.device)
    start = 0
    while start < len(methods):  # runs of one method: one vectorised call each
        end = start
        while end < len(methods) and methods[end] is methods[start]:
            end += 1
        maps[start:end] = _MAPS[methods[start]](a[start:end], g[start:end])
        start = end
    return maps


def upsample(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(rows, 1, h, w) → (rows, 1, *size), bilinear (corners not aligned, as Captum)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=False)
