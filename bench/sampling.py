"""Sample efficiency (issue 7 item 4): error against a high-N reference at equal passes, for iid,
antithetic and QMC noise, plus adaptive stopping. Hardware independent: it counts passes.

Models: the demo model (64², its own input bounds) and ResNet-18 with random weights at 112²
(224² would need hours for the references on 2 CPU cores). Error = relative L2 distance of the
map to a reference computed with `--reference` iid passes (whose own error is estimated from two
independent halves), and Spearman rank correlation with it.
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
from pathlib import Path
from typing import Any

import torch
from common import add_device_arguments, machine, output_path, random_model, resolve_device, write

from smoothexplain import ExplainJob, Scheduler, make_spec
from smoothexplain.demo import input_bounds, load_model, make_dataset, normalize

SCHEMES = ("iid", "antithetic", "qmc")


def _ranks(values: torch.Tensor) -> torch.Tensor:
    ranks = torch.empty_like(values)
    ranks[values.argsort()] = torch.arange(values.numel(), dtype=values.dtype)
    return ranks


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = _ranks(a.flatten().double()), _ranks(b.flatten().double())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def relative_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _models(args: argparse.Namespace, device: torch.device) -> dict[str, dict[str, Any]]:
    low, high = input_bounds()
    bounds = (torch.tensor(low).view(-1, 1, 1), torch.tensor(high).view(-1, 1, 1))
    demo = load_model(Path("artifacts/demo")).to(device)
    data = make_dataset(args.inputs, seed=4242)
    resnet_x = torch.randn(
        args.inputs,
        3,
        args.resnet_size,
        args.resnet_size,
        generator=torch.Generator().manual_seed(7),
    )
    return {
        "demo (ShapesNet 64²)": {
            "model": demo,
            "inputs": normalize(data.images),
            "bounds": bounds,
            "sigma": 0.15,
        },
        f"resnet18 random {args.resnet_size}²": {
            "model": random_model("resnet18", device),
            "inputs": resnet_x,
            "bounds": (torch.tensor(-2.5), torch.tensor(2.5)),
            "sigma": 0.15,
        },
    }


def _explain(
    model: torch.nn.Module,
    x: torch.Tensor,
    target: int,
    bounds: Any,
    *,
    samples: int,
    scheme: str,
    seed: int,
    method: str,
    chunk: int,
    tolerance: float | None = None,
) -> tuple[torch.Tensor, int]:
    spec = make_spec(
        method=method,
        nt_samples=samples,
        noise_sampling=scheme,
        sigma=0.15,
        bounds=bounds,
        tolerance=tolerance,
    )
    (result,) = Scheduler(model, chunk).run([ExplainJob(x, target, spec, seed)])
    return result.attribution, result.samples


def run(args: argparse.Namespace, device: torch.device, save: Any = None) -> dict[str, Any]:
    passes = [8, 16, 25, 32, 50]
    out: dict[str, Any] = {}
    for name, setup in _models(args, device).items():
        model, inputs, bounds = setup["model"], setup["inputs"].to(device), setup["bounds"]
        with torch.no_grad():
            targets = model(inputs).argmax(1).tolist()
        for method in args.methods:
            curves: dict[str, dict[int, list[tuple[float, float]]]] = {
                s: {n: [] for n in passes} for s in SCHEMES
            }
            stop: list[tuple[int, float]] = []
            reference_error = []
            for i, target in enumerate(targets):
                x = inputs[i]
                half_a, half_b = (
                    _explain(
                        model,
                        x,
                        target,
                        bounds,
                        samples=args.reference // 2,
                        scheme="iid",
                        seed=offset + i,
                        method=method,
                        chunk=args.chunk,
                    )[0]
                    for offset in (10_000, 20_000)
                )
                reference = (half_a + half_b) / 2
                # Two independent halves differ by √2·(half error); the mean has half error/√2.
                reference_error.append(relative_l2(half_a, half_b) / 2)
                for scheme in SCHEMES:
                    for n in passes:
                        for rep in range(args.reps):
                            attr, _ = _explain(
                                model,
                                x,
                                target,
                                bounds,
                                samples=n,
                                scheme=scheme,
                                seed=rep * 997 + i,
                                method=method,
                                chunk=args.chunk,
                            )
                            curves[scheme][n].append(
                                (relative_l2(attr, reference), spearman(attr, reference))
                            )
                iid50 = statistics.mean(e for e, _ in curves["iid"][50][-args.reps :])
                for rep in range(args.reps):
                    attr, used = _explain(
                        model,
                        x,
                        target,
                        bounds,
                        samples=200,
                        scheme="iid",
                        seed=rep * 991 + i,
                        method=method,
                        chunk=8,
                        tolerance=iid50,
                    )
                    stop.append((used, relative_l2(attr, reference)))
            table = {
                s: {
                    n: {
                        "rel_l2": statistics.mean(e for e, _ in v),
                        "spearman": statistics.mean(r for _, r in v),
                    }
                    for n, v in c.items()
                }
                for s, c in curves.items()
            }
            out[f"{name} / {method}"] = {
                "curves": table,
                "reference_rel_error": statistics.mean(reference_error),
                "passes_to_match_iid50": {
                    s: _passes_to_match(table[s], table["iid"][50]["rel_l2"]) for s in SCHEMES
                },
                "adaptive_stopping": {
                    "tolerance": "per input: mean iid error at 50 passes",
                    "mean_samples": statistics.mean(u for u, _ in stop),
                    "mean_rel_l2": statistics.mean(e for _, e in stop),
                },
            }
            if save is not None:
                save(out)  # partial results survive an interrupted run
            print(
                name,
                method,
                out[f"{name} / {method}"]["passes_to_match_iid50"],
                out[f"{name} / {method}"]["adaptive_stopping"],
                flush=True,
            )
    return out


def _passes_to_match(curve: dict[int, dict[str, float]], goal: float) -> float | None:
    """Passes at which the curve's error reaches `goal` (log-log interpolation), None if never."""
    points = sorted((n, row["rel_l2"]) for n, row in curve.items())
    for (n0, e0), (n1, e1) in itertools.pairwise(points):
        if e0 <= goal:
            return float(n0)
        if e1 <= goal:
            t = (math.log(goal) - math.log(e0)) / (math.log(e1) - math.log(e0))
            return float(math.exp(math.log(n0) + t * (math.log(n1) - math.log(n0))))
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_device_arguments(parser)
    parser.add_argument("--inputs", type=int, default=6)
    parser.add_argument("--reps", type=int, default=4)
    parser.add_argument("--reference", type=int, default=2000)
    parser.add_argument("--chunk", type=int, default=50)
    parser.add_argument("--resnet-size", type=int, default=112)
    parser.add_argument("--methods", nargs="+", default=["gradient", "input_x_gradient"])
    args = parser.parse_args()
    device = resolve_device(args)
    if args.smoke:
        args.inputs, args.reps, args.reference, args.resnet_size = 1, 1, 64, 32

    started_on = machine(device)  # the load the runs started in

    def save(results: dict[str, Any]) -> None:
        record = {
            "benchmark": "sample efficiency",
            "machine": dict(started_on),  # `write` adds the load at this save
            "settings": {k: v for k, v in vars(args).items() if k != "out"},
            "results": results,
        }
        write(output_path(args, "sampling", device), record)

    save(run(args, device, save))


if __name__ == "__main__":
    main()
