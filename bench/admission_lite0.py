"""Admission by cost and the automatic memory budget on a real network: the pretrained
EfficientNet-Lite0 archive (`make model`) explaining the cat photograph through the data plane.

For each explanation, in the order a fresh worker would see them: the cost the admission model
estimated before it ran (from the start-up probe at first, then from the runs before it) against
the measured compute, and the rows per model call against the worker's automatic memory budget
(with the probed bytes per row and the process's peak RSS growth). Writes
bench/results/admission-lite0.json and .md (docs/reliability.md quotes it).

    python bench/admission_lite0.py [--store model_store]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
import yaml
from common import RESULTS, machine
from lite0 import cat_png

from smoothexplain._proto.smoothexplain.v1 import explain_pb2 as pb
from smoothexplain.serving.config import parse_config
from smoothexplain.serving.memory import peak_rss_bytes, reset_peak_rss, rss_bytes
from smoothexplain.serving.models import load_labels, load_model
from smoothexplain.serving.service import ExplainService, Incoming

MIB = 2**20
# (method, nt_samples, n_steps): small first, then growing, then repeated (learned rates)
RUNS = [
    (pb.METHOD_GRADIENT, 4, None),
    (pb.METHOD_GRADIENT, 16, None),
    (pb.METHOD_GRADIENT, 32, None),
    (pb.METHOD_INTEGRATED_GRADIENTS, 4, 8),
    (pb.METHOD_GRADIENT, 16, None),
    (pb.METHOD_INTEGRATED_GRADIENTS, 8, 8),
    (pb.METHOD_GRADIENT, 64, None),
]


TIGHT_BUDGET_MB = 640  # a worker with little memory: the budget must hold on a real network


def _service(archive: Path, workdir: Path, budget_mb: int | None = None) -> ExplainService:
    with zipfile.ZipFile(archive) as mar:
        mar.extractall(workdir)
    raw = yaml.safe_load((workdir / "model-config.yaml").read_text())
    config = parse_config(raw["smoothexplain"])
    if budget_mb is not None:
        config = dataclasses.replace(config, memory_budget_mb=budget_mb)
    device = torch.device("cpu")
    model = load_model(workdir, config, device)
    labels = load_labels(workdir, config)
    timeout = float(raw.get("responseTimeout", 120))
    service = ExplainService(model, config, labels, device, archive.stem, None, timeout)
    service.probe_cost()
    return service


def _explain(
    service: ExplainService, method: int, nt_samples: int, n_steps: int | None
) -> dict[str, Any]:
    options = pb.ExplainOptions(method=method, nt_samples=nt_samples, seed=7)  # type: ignore[arg-type]
    if n_steps is not None:
        options.n_steps = n_steps
    request = pb.Request(input=pb.Input(image=cat_png()), explain=True, options=options)
    pre = service.config.preprocess
    features = pre.channels * pre.size * pre.size
    rows = nt_samples * (n_steps or 1)
    estimate = service.costs.estimate(rows, features, "fp32")
    reset_peak_rss()
    before = rss_bytes() or 0
    (answer,) = service.handle([Incoming(request.SerializeToString(), from_grpc=True)])
    response = pb.Response.FromString(answer.body)  # type: ignore[arg-type]
    if response.HasField("error"):
        raise RuntimeError(response.error.message)
    peak = peak_rss_bytes()
    calls = service.scheduler.stats.chunk_rows
    row_bytes = max(service.scheduler.row_bytes.values(), default=0)
    return {
        "method": pb.Method.Name(method).removeprefix("METHOD_").lower(),
        "nt_samples": nt_samples,
        "n_steps": n_steps,
        "rows": rows,
        "estimate_s": estimate,
        "measured_s": response.timings.explain_ms / 1000,
        "rows_per_call": max(calls),
        "calls": len(calls),
        "row_mib": row_bytes / MIB,
        "peak_rss_growth_mib": None if peak is None else (peak - before) / MIB,
        "top1": response.top_k[0].label,
    }


def _table(result: dict[str, Any]) -> str:
    m, budget = result["machine"], result["memory_budget_mib"]
    lines = [
        f"Measured {m['date']} on {m['cpu']} ({m['cores']} cores, {m['torch_threads']} torch "
        f"threads, {m['cpu_capability']}), torch {m['torch']}, 1-min load average "
        f"{m['load_average_1m']:.1f}: pretrained EfficientNet-Lite0 (`make model`'s archive, "
        f"nt_samples_batch_size {result['chunk_rows']}) on the cat photograph, one fresh "
        f"service, requests in this order. Automatic memory budget {budget:.0f} MiB.",
        "",
        "| method | nt_samples | rows | estimate before (s) | measured (s) | measured / estimate "
        "| rows per call | calls | MiB per row (probed) | peak RSS growth (MiB) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in result["runs"]:
        est = run["estimate_s"]
        ratio = "–" if est is None else f"{run['measured_s'] / est:.2f}"
        growth = run["peak_rss_growth_mib"]
        steps = "" if run["n_steps"] is None else f" ({run['n_steps']} steps)"
        lines.append(
            f"| {run['method']}{steps} "
            f"| {run['nt_samples']} | {run['rows']} | {'–' if est is None else f'{est:.2f}'} "
            f"| {run['measured_s']:.2f} | {ratio} | {run['rows_per_call']} | {run['calls']} "
            f"| {run['row_mib']:.1f} | {'–' if growth is None else f'{growth:.0f}'} |"
        )
    tight = result["tight_runs"][-1]
    lines += [
        "",
        f"With `memory_budget_mb: {result['tight_budget_mib']}` (a worker with little memory), "
        f"gradient with {tight['nt_samples']} samples ran {tight['calls']} calls of at most "
        f"{tight['rows_per_call']} rows in {tight['measured_s']:.2f} s; peak RSS growth "
        f"{result['tight_runs'][0]['peak_rss_growth_mib']:.0f} MiB for the first request "
        f"(run first, in a process that had not yet grown), "
        f"{tight['peak_rss_growth_mib']:.0f} MiB for the second.",
    ]
    return "\n".join(lines) + "\n"


SMOKE_RUNS = [(pb.METHOD_GRADIENT, 2, None), (pb.METHOD_INTEGRATED_GRADIENTS, 2, 2)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=Path("model_store"))
    parser.add_argument("--smoke", action="store_true", help="two tiny runs: checks, not figures")
    parser.add_argument("--out", type=Path, help="result JSON (default bench/results/)")
    args = parser.parse_args()
    info = machine()
    tight_samples = 16 if args.smoke else 32
    with tempfile.TemporaryDirectory() as workdir:
        archive = args.store / "efficientnet_lite0.mar"
        # The tight budget first, while the process has not yet grown for bigger calls.
        tight = _service(archive, Path(workdir), TIGHT_BUDGET_MB)
        tight_runs = [_explain(tight, pb.METHOD_GRADIENT, tight_samples, None) for _ in range(2)]
        del tight
        service = _service(archive, Path(workdir))
        budget = service.scheduler.memory_budget
        runs = [_explain(service, *run) for run in (SMOKE_RUNS if args.smoke else RUNS)]
        chunk_rows = service.scheduler.chunk_rows
    result = {
        "machine": info,
        "settings": {"smoke": args.smoke},
        "memory_budget_mib": None if budget is None else budget / MIB,
        "chunk_rows": chunk_rows,
        "runs": runs,
        "tight_budget_mib": TIGHT_BUDGET_MB,
        "tight_runs": tight_runs,
    }
    table = _table(result)
    out = args.out or RESULTS / "admission-lite0.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
