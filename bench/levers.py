"""Levers below the eager floor on CPU (issue 17 item 4), side by side in one run: the bare
forward+backward to the input of the pretrained EfficientNet-Lite0 and ResNet-50 (random
weights) on 16 noisy rows, NCHW eager as the floor, against channels_last, BatchNorm folding,
both (what the server runs), both under `torch.compile` (inductor; its compile time recorded
apart, as a long-lived worker would pay it once), and both with oneDNN's implicit bf16 for fp32
convolutions (`torch.backends.mkldnn.conv.fp32_precision = "bf16"`). Each lever's map change
is the relative L2 of its input gradient against the floor's on the same rows.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from common import (
    add_device_arguments,
    interleaved,
    machine,
    output_path,
    random_model,
    resolve_device,
    summarise,
    write,
)
from lite0 import LITE0, cat_tensor, lite0
from torch import nn

from smoothexplain import fold_batchnorm
from smoothexplain.engine.layout import convert
from smoothexplain.protocol.options import MemoryFormat

ROWS = 16
STDEV = 0.15


def _channels_last(model: nn.Module) -> nn.Module:
    model = copy.deepcopy(model)
    convert(model, MemoryFormat.CHANNELS_LAST)
    return model


@contextlib.contextmanager
def _implicit_bf16() -> Iterator[None]:
    conv = torch.backends.mkldnn.conv
    before = conv.fp32_precision
    conv.fp32_precision = "bf16"
    try:
        yield
    finally:
        conv.fp32_precision = before


def _pass(
    model: Callable[[torch.Tensor], torch.Tensor],
    rows: torch.Tensor,
    target: int,
    nhwc: bool,
    bf16: bool = False,
) -> torch.Tensor:
    """One forward + backward to the rows (in NHWC when `nhwc`); their gradient."""
    layout = torch.channels_last if nhwc else torch.contiguous_format
    leaf = rows.contiguous(memory_format=layout).requires_grad_(True)
    with _implicit_bf16() if bf16 else contextlib.nullcontext():
        (grad,) = torch.autograd.grad(model(leaf)[:, target].sum(), leaf)
    return grad


def _subject(name: str, smoke: bool) -> tuple[nn.Module, torch.Tensor, int]:
    """The model, its noisy rows and the class explained (the clean input's top-1)."""
    size = 32 if smoke else 224
    if name == LITE0:
        model = lite0(torch.device("cpu"))
        x = cat_tensor(size)
    else:
        model = random_model(name, torch.device("cpu"))
        x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        target = int(model(x).argmax())
    noise = torch.randn((ROWS, *x.shape[1:]), generator=torch.Generator().manual_seed(1))
    return model, x + STDEV * noise, target


def run_model(name: str, repeats: int, smoke: bool, compile_model: bool) -> dict[str, Any]:
    model, rows, target = _subject(name, smoke)
    folded = fold_batchnorm(model)
    nhwc, served = _channels_last(model), _channels_last(folded.model)
    levers: dict[str, Callable[[], torch.Tensor]] = {
        "floor": lambda: _pass(model, rows, target, False),
        "channels_last": lambda: _pass(nhwc, rows, target, True),
        "folded": lambda: _pass(folded.model, rows, target, False),
        "folded_channels_last": lambda: _pass(served, rows, target, True),
        "folded_channels_last_implicit_bf16": lambda: _pass(served, rows, target, True, True),
    }
    compile_s = None
    if compile_model:
        compiled = torch.compile(served)
        started = time.perf_counter()
        _pass(compiled, rows, target, True)  # the compile, paid once by a long-lived worker
        compile_s = time.perf_counter() - started
        levers["folded_channels_last_compiled"] = lambda: _pass(compiled, rows, target, True)
    reference = levers["floor"]()
    change = {k: float((fn() - reference).norm() / reference.norm()) for k, fn in levers.items()}
    cpu: dict[str, list[float]] = {}
    times = interleaved(levers, repeats, 1, torch.device("cpu"), cpu)
    results = summarise(times, "floor", cpu)
    for lever, row in results.items():
        ratio = row["ratio_to_floor"]
        print(f"{name} {lever:36s} ×floor {ratio:.3f}  map change {change[lever]:.1e}")
    return {
        "model": name,
        "rows": ROWS,
        "size": rows.shape[-1],
        "batchnorms_folded": folded.count,
        "compile_s": compile_s,
        "map_change": change,
        "results": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_device_arguments(parser)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    args = parser.parse_args()
    device = resolve_device(args)
    if device.type != "cpu":
        raise SystemExit("levers.py measures CPU levers (oneDNN); see engine.py for CUDA")
    repeats = 1 if args.smoke else args.repeats
    models = (LITE0,) if args.smoke else (LITE0, "resnet50")
    record = {
        "benchmark": "levers below the eager floor",
        "machine": machine(device),
        "settings": {"rows": ROWS, "stdevs": STDEV, "smoke": args.smoke, "repeats": repeats},
        "cases": [run_model(m, repeats, args.smoke, not args.no_compile) for m in models],
    }
    write(output_path(args, "levers", device), record)


if __name__ == "__main__":
    main()
