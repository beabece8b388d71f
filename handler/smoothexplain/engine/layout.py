"""Memory layout of the model passes (issue 17): NCHW (`contiguous`) or NHWC (`channels_last`),
fixed or measured per model and input shape (`auto`).

channels_last runs oneDNN's NHWC convolutions. How much it saves depends on the CPU and model:
fwd+bwd to the input took 0.74-0.86x the NCHW time on ResNet-18/50 and EfficientNet-Lite0 on an
AVX2 machine (issue 17), 0.73-0.83x on ResNet-50 and Lite0 and 0.95x on ResNet-18 on an AVX512
one (2026-12-04). It changes the gradients by kernel rounding (about 1e-4 to 4e-3 relative L2),
far below a 50-sample map's Monte-Carlo spread. Both the weights and the rows take the layout
(rows alone gain less), and the weights' exact strides are put back afterwards: `Module.to`
leaves a 1x1 kernel's NHWC strides behind, and convolutions follow those strides.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

from ..protocol.options import MemoryFormat

__all__ = ["TORCH_FORMATS", "LayoutChooser", "LayoutSnapshot", "convert", "rows_in"]

TORCH_FORMATS: dict[MemoryFormat, torch.memory_format] = {
    MemoryFormat.CONTIGUOUS: torch.contiguous_format,
    MemoryFormat.CHANNELS_LAST: torch.channels_last,
}
_PROBE_ROWS = 8  # rows of each timed pass of `auto`
_PROBE_ROUNDS = 2  # timed passes per layout (the faster of each kept), alternating


class LayoutSnapshot:
    """The exact strides of a model's 4-D parameters and buffers, to put back after a run
    (explain() leaves the caller's model as it found it). Strides, not `is_contiguous`: a 1x1
    kernel counts as contiguous in both layouts, yet its strides steer the layout the
    convolution gives its output, so a channels_last run would leak into later NCHW runs."""

    def __init__(self, model: object) -> None:
        self.tensors: list[tuple[torch.Tensor, tuple[int, ...]]] = []
        if isinstance(model, nn.Module):
            for tensor in _four_d(model):
                self.tensors.append((tensor, tensor.stride()))

    def restore(self) -> None:
        for tensor, strides in self.tensors:
            if tensor.stride() != strides:
                kept = torch.empty_strided(
                    tensor.shape, strides, dtype=tensor.dtype, device=tensor.device
                )
                tensor.data = kept.copy_(tensor.data)


def convert(model: nn.Module, layout: MemoryFormat) -> None:
    """Give every 4-D parameter and buffer of `model` the canonical strides of `layout`;
    tensors that have them already are left alone. (`Module.to(memory_format=...)` leaves a
    1x1 kernel's strides as they were, since it counts as contiguous in both layouts.)"""
    for tensor in _four_d(model):
        if tensor.stride() != _strides(tuple(tensor.shape), layout):
            tensor.data = tensor.data.clone(memory_format=TORCH_FORMATS[layout])


def _strides(shape: tuple[int, ...], layout: MemoryFormat) -> tuple[int, ...]:
    """The strides `clone(memory_format=...)` gives a 4-D tensor of `shape` in `layout`."""
    _, c, h, w = shape
    if layout is MemoryFormat.CHANNELS_LAST:  # torch's rule: the sizes as they are
        return (h * w * c, 1, w * c, c)
    c, h, w = max(c, 1), max(h, 1), max(w, 1)  # contiguous: empty dims count as 1
    return (c * h * w, h * w, w, 1)


def _four_d(model: nn.Module) -> list[torch.Tensor]:
    return [t for t in (*model.parameters(), *model.buffers()) if t.dim() == 4]


class LayoutChooser:
    """The layout of each row kind: the fixed choice, or under `auto` the faster of the two,
    measured once per input shape with a few timed passes and then kept, so that repeated
    requests run the same kernels and stay bit-identical."""

    def __init__(self, choice: MemoryFormat, model: object) -> None:
        self.choice, self.model = choice, model
        self.chosen: dict[tuple[object, ...], MemoryFormat] = {}  # by input shape (auto)
        self.seconds: dict[tuple[object, ...], dict[MemoryFormat, float]] = {}

    def layout(self, x: torch.Tensor, probe: Callable[[torch.Tensor], None]) -> MemoryFormat:
        """The layout for rows shaped like `x` (one input); `probe(rows)` runs one pass."""
        if x.dim() != 3:  # only images (C, H, W) have a channels_last form
            return MemoryFormat.CONTIGUOUS
        if self.choice is not MemoryFormat.AUTO:
            return self.choice
        key = (tuple(x.shape), x.dtype, x.device.type)
        if key not in self.chosen:
            self.chosen[key] = self._measure(key, x, probe)
        return self.chosen[key]

    def apply(self, layout: MemoryFormat) -> None:
        """Give the model's weights `layout`, judged from their strides (someone else may have
        converted them since). A fixed `contiguous` choice never touches them."""
        if self.choice is MemoryFormat.CONTIGUOUS or not isinstance(self.model, nn.Module):
            return
        convert(self.model, layout)

    def _measure(
        self, key: tuple[object, ...], x: torch.Tensor, probe: Callable[[torch.Tensor], None]
    ) -> MemoryFormat:
        rows = x.detach().expand(_PROBE_ROWS, *x.shape).clone()
        best = {layout: float("inf") for layout in TORCH_FORMATS}
        for _ in range(_PROBE_ROUNDS):
            for layout, torch_format in TORCH_FORMATS.items():
                self.apply(layout)
                started = time.perf_counter()
                probe(rows.contiguous(memory_format=torch_format))
                best[layout] = min(best[layout], time.perf_counter() - started)
        self.seconds[key] = best
        faster = min(best, key=lambda layout: best[layout])
        # A clear win only: within 3 % the default NCHW kernels stay (exact chunk invariance).
        if best[MemoryFormat.CHANNELS_LAST] > 0.97 * best[MemoryFormat.CONTIGUOUS]:
            faster = MemoryFormat.CONTIGUOUS
        return faster


def rows_in(layout: MemoryFormat, rows: torch.Tensor) -> torch.Tensor:
    """`rows` in `layout` (4-D rows only)."""
    if layout is MemoryFormat.CHANNELS_LAST and rows.dim() == 4:
        return rows.contiguous(memory_format=torch.channels_last)
    return rows
