"""Cross-request fusion: k concurrent explain jobs (nt_samples 8 each) through one
`Scheduler.run`, whose passes pack rows of several jobs, against the same jobs one
`Scheduler.run` at a time. ResNet-18 (random weights, 224²), passes of up to 32 rows, run as
the server runs it by default (`--layout served`: BatchNorm folded at load, channels_last;
`--layout contiguous`: the model as built, NCHW, where fused answers are bit-identical).

Each twice: with the default scheduler (every pass one model call) and with `tune_pass_rows`
(model calls of the size measured fastest per row; long-lived and warmed up, as in a serving
worker) — on a CPU a large pass can cost more per row than a small one. The process uses the
workers' malloc settings (`keep_freed_memory`).

Target: ≥ 3× the throughput on a GPU (small calls leave it idle); never slower on a CPU."""

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

from smoothexplain import ExplainJob, Scheduler, fold_batchnorm
from smoothexplain.engine.pass_tuning import TRIALS
from smoothexplain.engine.spec import make_spec
from smoothexplain.serving.allocator import keep_freed_memory


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


def _warm(scheduler: Scheduler, work: list[ExplainJob], alone: bool) -> Scheduler:
    """Run the work until the pass tuner has timed every candidate, as a serving worker's
    long-lived scheduler has after its first requests."""
    calls = 0
    while calls < 4 * TRIALS + 2:
        for batch in [[job] for job in work] if alone else [work]:
            scheduler.run(batch)
            calls += len(scheduler.stats.chunk_rows)
    return scheduler


LAYOUTS = ("served", "contiguous")


def scheduler(model: torch.nn.Module, chunk: int, layout: str, tune: bool = False) -> Scheduler:
    memory_format = "channels_last" if layout == "served" else "contiguous"
    return Scheduler(model, chunk, tune_pass_rows=tune, memory_format=memory_format)


def contenders(
    model: torch.nn.Module, work: list[ExplainJob], chunk: int, layout: str
) -> tuple[dict[str, Callable[[], object]], dict[str, Scheduler]]:
    """One request at a time and all k fused, each with the default scheduler (every pass one
    model call of up to `chunk` rows) and with `tune_pass_rows` (warm, long-lived)."""
    plain = scheduler(model, chunk, layout)
    lone = _warm(scheduler(model, chunk, layout, tune=True), work, alone=True)
    together = _warm(scheduler(model, chunk, layout, tune=True), work, alone=False)
    runs: dict[str, Callable[[], object]] = {
        "one_at_a_time": lambda: [plain.run([job])[0] for job in work],
        "fused": lambda: plain.run(work),
        "one_at_a_time_tuned": lambda: [lone.run([job])[0] for job in work],
        "fused_tuned": lambda: together.run(work),
    }
    return runs, {"one_at_a_time_tuned": lone, "fused_tuned": together}


def check_same(model: torch.nn.Module, work: list[ExplainJob], chunk: int, layout: str) -> float:
    """Largest difference between fused and lone answers: 0 for contiguous; channels_last
    kernels may round differently with the call's row count."""
    alone = [scheduler(model, chunk, layout).run([job])[0] for job in work]
    fused = scheduler(model, chunk, layout).run(work)
    tuned = scheduler(model, chunk, layout, tune=True).run(work)  # calls of several sizes
    return max(
        float((a.attribution - b.attribution).abs().max())
        for answers in (fused, tuned)
        for a, b in zip(answers, alone, strict=True)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_device_arguments(parser)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds (≥ 3)")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--nt-samples", type=int, default=8)
    parser.add_argument("--batch", type=int, default=32, help="nt_samples_batch_size (rows)")
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument(
        "--layout", choices=LAYOUTS, default="served", help="what the server runs, or NCHW"
    )
    args = parser.parse_args()
    device = resolve_device(args)
    keep_freed_memory()  # as a serving worker runs (model config default)
    size, nt, chunk, ks, repeats = 224, args.nt_samples, args.batch, args.ks, args.repeats
    if args.smoke:
        size, nt, chunk, ks, repeats = 32, 2, 4, [1, 4], 1
    model = random_model(args.model, device)
    folded = fold_batchnorm(model) if args.layout == "served" else None
    model = folded.model if folded is not None else model
    started_on = machine(device)
    results = []
    for k in ks:
        work = jobs(k, nt, size, device)
        cpu: dict[str, list[float]] = {}
        runs, schedulers = contenders(model, work, chunk, args.layout)
        times = interleaved(runs, repeats, 1, device, cpu)
        summary = summarise(times, "one_at_a_time", cpu if device.type == "cpu" else None)
        ratio = {name: float(row["ratio_to_floor"]) for name, row in summary.items()}  # type: ignore[arg-type]
        speedup = 1 / ratio["fused"]
        tuned = ratio["one_at_a_time_tuned"] / ratio["fused_tuned"]
        results.append(
            {
                "k": k,
                "rows": k * nt,
                "max_abs_difference": check_same(model, work, chunk, args.layout),
                "requests_per_s": {
                    name: k / float(row["median_s"])  # type: ignore[arg-type]
                    for name, row in summary.items()
                },
                "throughput_ratio": speedup,
                "throughput_ratio_tuned": tuned,  # fused_tuned / one_at_a_time_tuned
                # rows of each model call in the last timed run, as the tuner chose them
                "call_rows": {name: sch.stats.chunk_rows for name, sch in schedulers.items()},
                "results": summary,
            }
        )
        print(
            f"k={k:2d}: fused / one at a time throughput ×{speedup:.3f} "
            f"(both tuned: ×{tuned:.3f}; fused tuned / one at a time: "
            f"×{1 / ratio['fused_tuned']:.3f})",
            flush=True,
        )
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
            "layout": args.layout,
            "batchnorms_folded": folded.count if folded is not None else 0,
        },
        "cases": results,
    }
    write(output_path(args, "fusion", device), record)


if __name__ == "__main__":
    main()
