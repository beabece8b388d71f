"""Memory bound: peak memory as nt_samples grows (20 → 200) at a fixed nt_samples_batch_size,
our engine beside Captum's NoiseTunnel(Saliency), SmoothGrad of ResNet-18 (random weights, 224²).

Each setting runs in fresh subprocesses (the median of --repeats). Each first makes one warm-up
pass (caches, allocator pools), then measures. CPU: peak RSS (VmHWM, reset through
/proc/self/clear_refs after the warm-up, so the peak is the run's own) and the RSS before it.
CUDA: torch.cuda.max_memory_allocated around the run. Target: the peak at nt_samples 200 ≤ 1.1×
the peak at 20.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import warnings
from pathlib import Path

import torch
from common import add_device_arguments, machine, output_path, random_model, resolve_device, write

STDEV, TARGET = 0.15, 3
MIB = 1024 * 1024


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def child(args: argparse.Namespace) -> None:
    """One contender at one nt_samples; prints one JSON line."""
    warnings.filterwarnings("ignore", module="captum")
    device = torch.device(args.device)
    model = random_model(args.model, device)
    x = torch.randn(1, 3, args.size, args.size, device=device)
    if args.contender == "engine":
        from smoothexplain import explain

        def run(nt_samples: int) -> object:
            return explain(
                model,
                x,
                TARGET,
                nt_samples=nt_samples,
                nt_samples_batch_size=args.batch,
                stdevs=STDEV,
                seed=1,
            )
    else:
        from captum.attr import NoiseTunnel, Saliency

        def run(nt_samples: int) -> object:
            return NoiseTunnel(Saliency(model)).attribute(
                x,
                nt_type="smoothgrad",
                nt_samples=nt_samples,
                nt_samples_batch_size=args.batch,
                stdevs=STDEV,
                target=TARGET,
                abs=False,
            )

    # One pass first: oneDNN's primitive caches and the allocator's pools then exist before the
    # measured run, which they would otherwise inflate by the same amount at every nt_samples.
    run(args.batch)
    gc.collect()
    before = _status_kib("VmRSS") * 1024
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS from here on
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        cuda_before = torch.cuda.memory_allocated(device)
    run(args.nt_samples)
    record = {"rss_before": before, "peak_rss": _status_kib("VmHWM") * 1024}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        record["cuda_before"] = cuda_before
        record["cuda_peak"] = torch.cuda.max_memory_allocated(device)
    print(json.dumps(record))


def measure(
    args: argparse.Namespace, contender: str, nt_samples: int, device: str
) -> dict[str, int]:
    command = [
        sys.executable,
        __file__,
        "--child",
        contender,
        "--device",
        device,
        "--model",
        args.model,
        "--size",
        str(args.size),
        "--batch",
        str(args.batch),
        "--nt-samples",
        str(nt_samples),
    ]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    result: dict[str, int] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def flatness(rows: list[dict[str, int]], key: str) -> float:
    return rows[-1][key] / rows[0][key]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_device_arguments(parser)
    parser.add_argument("--child", choices=["engine", "captum"], help=argparse.SUPPRESS)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=10, help="nt_samples_batch_size (rows)")
    parser.add_argument("--nt-samples", type=int, nargs="+", default=[20, 50, 100, 200])
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per cell")
    args = parser.parse_args()
    if args.child:
        args.contender, args.nt_samples = args.child, args.nt_samples[0]
        child(args)
        return
    device = resolve_device(args)
    if args.smoke:
        args.size, args.batch, args.nt_samples, args.repeats = 32, 2, [4, 8], 1
    started_on = machine(device)
    results: dict[str, list[dict[str, int]]] = {"engine": [], "captum": []}
    key = "cuda_peak" if device.type == "cuda" else "peak_rss"
    for n in args.nt_samples:
        cells: dict[str, list[dict[str, int]]] = {name: [] for name in results}
        for _ in range(args.repeats):  # interleaved, so drift hits both contenders alike
            for contender, runs in cells.items():
                runs.append(measure(args, contender, n, str(device)))
        for contender, rows in results.items():
            runs = sorted(cells[contender], key=lambda r: r[key])
            row = {"nt_samples": n, **runs[len(runs) // 2], "repeat_peaks": [r[key] for r in runs]}
            rows.append(row)
            print(
                f"{contender:7s} nt_samples {n:4d}: peak RSS {row['peak_rss'] / MIB:.0f} MiB "
                f"(before the run {row['rss_before'] / MIB:.0f} MiB)",
                flush=True,
            )
    summary = {
        name: {
            "peak_ratio": flatness(rows, key),
            "runs": rows,
        }
        for name, rows in results.items()
    }
    record = {
        "benchmark": "memory bound",
        "machine": started_on,
        "settings": {
            "model": f"{args.model} (random weights)",
            "input": [1, 3, args.size, args.size],
            "nt_samples_batch_size": args.batch,
            "nt_samples": args.nt_samples,
            "method": "gradient",
            "nt_type": "smoothgrad",
            "measure": "CUDA max_memory_allocated" if device.type == "cuda" else "peak RSS",
            "repeats": args.repeats,
            "warm_up": "one pass of nt_samples_batch_size rows before the measured run",
            "smoke": args.smoke,
        },
        "results": summary,
    }
    write(output_path(args, "memory", device), record)


if __name__ == "__main__":
    main()
