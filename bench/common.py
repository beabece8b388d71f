"""Shared benchmark plumbing: devices, interleaved repeats, medians, and a machine/date record."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from smoothexplain.engine.cpu import cpu_support

__all__ = [
    "RESULTS",
    "Prepared",
    "add_device_arguments",
    "interleaved",
    "machine",
    "merge_into",
    "output_path",
    "random_model",
    "resolve_device",
    "summarise",
    "sync",
    "write",
]

RESULTS = Path(__file__).resolve().parent / "results"


def machine(device: torch.device | None = None) -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    on_cuda = device is not None and device.type == "cuda"
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device) if device is not None else "cpu",
        "cuda": torch.cuda.get_device_name(device) if on_cuda else None,
        # The widest vector ISA torch's kernels dispatch to here (AVX512, AVX2, ...).
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        # Which low precisions run natively (feature flags; engine/cpu.py): bf16/fp16 timings
        # hold only for CPUs that have them.
        "cpu_support": cpu_support().describe(),
        # Other processes on a shared machine skew absolute times (less so interleaved ratios);
        # call machine() before the runs so that this is the load they started in.
        "load_average_1m": os.getloadavg()[0],
    }


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        default="cpu",
        help="cpu or cuda[:i]; cuda turns on cudnn.benchmark and TF32. Without a CUDA device, "
        "cuda falls back to a CPU smoke run (--smoke settings, results not written to "
        "bench/results/)",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="tiny settings: checks the script runs, not speed"
    )
    parser.add_argument("--out", type=Path, default=None, help="result JSON (default: see above)")


def resolve_device(args: argparse.Namespace) -> torch.device:
    """The device to run on; a CUDA request without CUDA becomes a CPU smoke run."""
    device = torch.device(args.device)
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        print(
            f"--device {args.device}: no CUDA device here; running the GPU code path on CPU "
            "with --smoke settings (nothing is written to bench/results/)",
            file=sys.stderr,
        )
        args.smoke = True
        args.fallback = True
        return torch.device("cpu")
    torch.backends.cudnn.benchmark = True  # fixed shapes per benchmark: let cuDNN pick kernels
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    torch.backends.cudnn.conv.fp32_precision = "tf32"
    return device


def random_model(name: str, device: torch.device, channels_last: bool = False) -> nn.Module:
    """A torchvision classifier with seeded random weights, in eval mode, weights frozen."""
    import torchvision

    torch.manual_seed(0)
    model: nn.Module = getattr(torchvision.models, name)(weights=None)
    model = model.eval().to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    for parameter in model.parameters():
        parameter.requires_grad_(False)  # only input gradients are wanted, as in serving
    return model


class Prepared(nn.Module):
    """`model` behind optional autocast and channels_last input, the same for every contender
    (the engine takes any callable, so GPU settings need no engine support)."""

    def __init__(
        self, model: nn.Module, autocast: torch.dtype | None = None, channels_last: bool = False
    ) -> None:
        super().__init__()
        self.model, self.autocast, self.channels_last = model, autocast, channels_last
        # A wrapper in eval mode, as the model it wraps: fold_batchnorm refuses a training one
        self.training = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.autocast is None:
            out: torch.Tensor = self.model(x)
            return out
        with torch.autocast(x.device.type, self.autocast):
            out = self.model(x)
        return out.float()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(
    contenders: dict[str, Callable[[], object]],
    repeats: int,
    warmup: int = 1,
    device: torch.device | None = None,
    cpu_times: dict[str, list[float]] | None = None,
) -> dict[str, list[float]]:
    """Run each contender once per round, round after round, so drift hits all alike.

    Returns wall times; `cpu_times`, when given, also receives this process's CPU time (all
    threads) per call, which other processes on a shared machine disturb far less."""
    device = device or torch.device("cpu")
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            start, cpu_start = time.perf_counter(), time.process_time()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
            if cpu_times is not None:
                cpu_times.setdefault(name, []).append(time.process_time() - cpu_start)
    return times


def summarise(
    times: dict[str, list[float]], floor: str, cpu_times: dict[str, list[float]] | None = None
) -> dict[str, dict[str, float | list[float]]]:
    """Medians, and each contender's ratio to `floor`: of the medians, and per round (the spread
    of the per-round ratios shows how much the shared machine moved during the run); the same
    for CPU times when given."""
    base = statistics.median(times[floor])
    summary: dict[str, dict[str, float | list[float]]] = {}
    for name, runs in times.items():
        per_round = [t / f for t, f in zip(runs, times[floor], strict=True)]
        summary[name] = {
            "median_s": statistics.median(runs),
            "runs_s": runs,
            "ratio_to_floor": statistics.median(runs) / base,
            "round_ratios": per_round,
        }
        if cpu_times:
            cpu, cpu_floor = cpu_times[name], cpu_times[floor]
            summary[name]["cpu_median_s"] = statistics.median(cpu)
            summary[name]["cpu_runs_s"] = cpu
            summary[name]["cpu_ratio_to_floor"] = statistics.median(cpu) / statistics.median(
                cpu_floor
            )
    return summary


def output_path(args: argparse.Namespace, name: str, device: torch.device) -> Path:
    """`--out`, else bench/results/NAME-DEVICE.json; smoke runs go to build/bench-smoke/."""
    if args.out is not None:
        return Path(args.out)
    kind = "cuda" if getattr(args, "fallback", False) else device.type
    folder = RESULTS.parent.parent / "build" / "bench-smoke" if args.smoke else RESULTS
    return folder / f"{name}-{kind}.json"


def write(path: Path, record: dict[str, Any]) -> None:
    if isinstance(record.get("machine"), dict):  # how busy the machine was by the end
        record["machine"].setdefault("load_average_1m_end", os.getloadavg()[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")


def merge_into(path: Path, record: dict[str, Any], key: Sequence[str] = ()) -> dict[str, Any]:
    """`record` plus the cases of the result file at `path` that this run did not measure, so
    that a run of some models keeps the other models' rows. A case this run measured again
    replaces the old one in place; new cases go last. Every case of a merged record carries
    the machine record (date, CPU, load) and the settings of the run that measured it.

    `record["cases"]` is a list (a case is known by its values at `key`) or a dict (by name).
    A smoke result never merges with a real one (the file is then replaced)."""
    stamp = {"machine": record["machine"], "settings": record["settings"]}
    cases = record["cases"]
    for case in cases if isinstance(cases, list) else cases.values():
        case.update(stamp)  # the same dicts: write() adds the end load to all of them
    old = json.loads(path.read_text()) if path.is_file() else None
    if old is None or old["settings"].get("smoke") != record["settings"].get("smoke"):
        return record
    kept = old["cases"]
    for case in kept if isinstance(kept, list) else kept.values():
        case.setdefault("machine", old["machine"])
        case.setdefault("settings", old["settings"])
    if isinstance(cases, dict):
        return {**record, "cases": {**kept, **cases}}

    def ident(case: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(case.get(k) for k in key)

    fresh = {ident(case): case for case in cases}
    merged = [fresh.pop(ident(case), case) for case in kept]
    return {**record, "cases": merged + list(fresh.values())}
