"""Mixed precision (issue 7 item 5): bf16/fp16 autocast vs fp32, speed and error per method.

ResNet-18 with random weights at 224², one input, the same seed for every precision so the noise
is identical and the difference is the arithmetic alone. Interleaved repeats; ratios from one run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
from common import (
    add_device_arguments,
    machine,
    output_path,
    random_model,
    resolve_device,
    write,
)

from smoothexplain import explain

METHODS: dict[str, dict[str, int]] = {
    "gradient": {},
    "input_x_gradient": {},
    "integrated_gradients": {"n_steps": 8},
    "guided_backprop": {},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_device_arguments(parser)
    parser.add_argument("--nt-samples", type=int, default=16)
    parser.add_argument("--chunk", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    device = resolve_device(args)
    if device.type == "cuda":  # fp32 means IEEE fp32 here: TF32 would be a third precision
        torch.backends.cuda.matmul.fp32_precision = "ieee"
        torch.backends.cudnn.conv.fp32_precision = "ieee"
    if args.smoke:
        args.nt_samples, args.chunk, args.repeats, args.size = 2, 2, 1, 32
    model = random_model("resnet18", device)
    x = torch.randn(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(3))
    x = x.to(device)
    precisions = ["fp32", "bf16"] + (["fp16"] if device.type == "cuda" else [])
    results: dict[str, Any] = {}
    for method, extra in METHODS.items():

        def run(precision: str, seed: int, method: str = method, extra: Any = extra) -> Any:
            return explain(
                model,
                x,
                1,
                method=method,
                nt_samples=args.nt_samples,
                nt_samples_batch_size=args.chunk,
                seed=seed,
                precision=precision,
                **extra,
            )

        times: dict[str, list[float]] = {p: [] for p in precisions}
        maps: dict[str, torch.Tensor] = {}
        for _ in range(args.repeats):
            for precision in precisions:
                start = time.perf_counter()
                maps[precision] = run(precision, seed=0)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times[precision].append(time.perf_counter() - start)
        reference = maps["fp32"]
        other_seed = run("fp32", seed=1)  # the Monte-Carlo spread at this nt_samples
        results[method] = {
            p: {
                "median_s": statistics.median(t),
                "speedup_vs_fp32": statistics.median(times["fp32"]) / statistics.median(t),
                "rel_l2_vs_fp32": float((maps[p] - reference).norm() / reference.norm()),
                "rel_l2_other_seed": float((other_seed - reference).norm() / reference.norm()),
            }
            for p, t in times.items()
        }
        print(method, results[method], flush=True)
    record = {
        "benchmark": "mixed precision",
        "machine": machine(device),
        "settings": {
            "model": "resnet18 (random weights)",
            "size": args.size,
            "nt_samples": args.nt_samples,
            "nt_samples_batch_size": args.chunk,
            "repeats": args.repeats,
            "ig_n_steps": METHODS["integrated_gradients"]["n_steps"],
            "smoke": args.smoke,
        },
        "results": results,
    }
    write(output_path(args, "precision", device), record)


if __name__ == "__main__":
    main()
