"""Cross-request fusion: k concurrent explain jobs (nt_samples 8 each) through one
`Scheduler.run`, whose chunks pack rows of several jobs into one forward + backward, against the
same jobs one `Scheduler.run` at a time. ResNet-18 (random weights, 224²), chunks of 32 rows.

Target: ≥ 3× the throughput on a GPU (small passes leave it idle); never slower on a CPU, where
a pass of 8 rows already keeps the cores busy and fusion can only save per-call overhead.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

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

from smoothexplain.engine import ExplainJob, Scheduler
from smoothexplain.spec import make_spec


def jobs(k: int, nt_samples: int, size: int, device: torch.device) -> list[ExplainJob]:
    spec = make_spec(nt_samples=nt_samples, stdevs=0.15)
    gen = torch.Generator().manual_seed(k)
    return [
        ExplainJob(
            inputs=torch.randn(3, size, size, generator=gen).to(device),
            target=i % 1000,
            spec=spec,
            seed=i,
        )
        for i in range(k)
    ]


def contenders(
    model: torch.nn.Module, work: list[ExplainJob], chunk: int
) -> dict[str, Callable[[], object]]:
    def fused() -> object:
        return Scheduler(model, chunk).run(work)

    def one_at_a_time() -> object:
        return [Scheduler(model, chunk).run([job])[0] for job in work]

    return {"one_at_a_time": one_at_a_time, "fused": fused}


def check_same(model: torch.nn.Module, work: list[ExplainJob], chunk: int) -> float:
    """Largest difference between fused and lone answers: fusion must not change results."""
    fused = Scheduler(model, chunk).run(work)
    alone = [Scheduler(model, chunk).run([job])[0] for job in work]
    return max(
        float((a.attribution - b.attribution).abs().max())
        for a, b in zip(fused, alone, strict=True)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_device_arguments(parser)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds (≥ 3)")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--nt-samples", type=int, default=8)
    parser.add_argument("--batch", type=int, default=32, help="nt_samples_batch_size (rows)")
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 4, 8, 16])
    args = parser.parse_args()
    device = resolve_device(args)
    size, nt, chunk, ks, repeats = 224, args.nt_samples, args.batch, args.ks, args.repeats
    if args.smoke:
        size, nt, chunk, ks, repeats = 32, 2, 4, [1, 4], 1
    model = random_model(args.model, device)
    started_on = machine(device)
    results = []
    for k in ks:
        work = jobs(k, nt, size, device)
        cpu: dict[str, list[float]] = {}
        times = interleaved(contenders(model, work, chunk), repeats, 1, device, cpu)
        summary = summarise(times, "one_at_a_time", cpu if device.type == "cpu" else None)
        speedup = 1 / float(summary["fused"]["ratio_to_floor"])  # type: ignore[arg-type]
        results.append(
            {
                "k": k,
                "rows": k * nt,
                "max_abs_difference": check_same(model, work, chunk),
                "requests_per_s": {
                    name: k / float(row["median_s"])  # type: ignore[arg-type]
                    for name, row in summary.items()
                },
                "throughput_ratio": speedup,
                "results": summary,
            }
        )
        print(f"k={k:2d}: fused / one at a time throughput ×{speedup:.3f}", flush=True)
    record = {
        "benchmark": "cross-request fusion",
        "machine": started_on,
        "settings": {
            "model": f"{args.model} (random weights)",
            "input": [3, size, size],
            "nt_samples": nt,
            "nt_samples_batch_size": chunk,
            "method": "gradient",
            "nt_type": "smoothgrad",
            "stdevs": 0.15,
            "repeats": repeats,
            "smoke": args.smoke,
        },
        "cases": results,
    }
    write(output_path(args, "fusion", device), record)


if __name__ == "__main__":
    main()
