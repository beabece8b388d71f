"""`make soak`: the long reliability runs, their figures written into docs/reliability.md.

    cd tests/integration && ../../.venv/bin/python -m reliability.soak [--parts corpus,load,...]

corpus    the bad-input corpus `--rounds` times over, under a background load (k = 4)
load      k = 1, 4, 8, 16 clients, `--seconds` each, `--rounds` rounds interleaved
faults    each fault scenario `--repeat` times (worker kill, OOM, deadlines, responseTimeout)
diskfull  load for `--seconds` with the metrics directory on a full tmpfs (needs mount)

Every server binds 127.0.0.1 on free ports and is stopped at the end; all traffic is loopback
and bounded in count and time. Raw figures go to docs/reliability-soak.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import tempfile
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

from smoothexplain.ops.launcher import TorchServeInstance

from . import scenarios
from .archives import build_archive
from .corpus import Case, Target, check, load_cases, send
from .expected import REPO_ROOT, LocalEngine
from .faults import build_fault_store
from .loadgen import LoadPlan, LoadReport, percentile, run_load, verify
from .report import write_report

PARTS = ("corpus", "load", "faults", "diskfull")
CLIENTS = (1, 4, 8, 16)
RESULTS = REPO_ROOT / "docs" / "reliability-soak.json"
ARTIFACTS = REPO_ROOT / "artifacts" / "demo"


def _server(root: Path, **env: str) -> TorchServeInstance:
    """The demo model as shipped (batchSize 4, maxBatchDelay 20 ms); `with` starts it."""
    build_archive(root / "store", "shapes", ARTIFACTS)
    return TorchServeInstance(root / "store", {"shapes": "shapes.mar"}, root / "ts", env=env)


def _load_figures(report: LoadReport, engine: LocalEngine) -> dict[str, Any]:
    latencies = report.latencies()
    return {
        "requests": len(report.samples),
        "lost": len(report.lost),
        "errors": len(report.server_errors),
        "mismatched": len(verify(report, engine)),
        "seconds": round(report.wall_seconds, 2),
        "throughput": round(report.throughput, 3),
        **{f"p{q}": round(percentile(latencies, q), 4) for q in (50, 90, 99)},
        "max": round(max(latencies, default=float("nan")), 4),
    }


def soak_corpus(root: Path, rounds: int, engine: LocalEngine) -> dict[str, Any]:
    cases = load_cases()
    jobs = [(c, t) for _ in range(rounds) for c in cases for t in c.transports]
    with _server(root) as server:
        target = Target(server.inference_url, server.grpc_target, server.inference_token)
        workers, stop = server.worker_pids("shapes"), threading.Event()
        plan = LoadPlan(clients=4, requests_per_client=10**6, max_seconds=3600, seed=9)
        background: list[LoadReport] = []
        loader = threading.Thread(
            target=lambda: background.append(
                run_load(server.inference_url, server.grpc_target, target.token, plan, stop)
            )
        )
        loader.start()

        def one(job: tuple[Case, str]) -> list[str]:
            case, transport = job
            try:
                return check(case, transport, send(target, case, transport))
            except Exception as error:  # a hang or a dropped connection
                return [f"{type(error).__name__}: {error}"]

        try:
            with ThreadPoolExecutor(4) as pool:
                problems = list(pool.map(one, jobs))
        finally:
            stop.set()
            loader.join()
            target.close()
        failures = sorted({f"{c.id}/{t}" for (c, t), p in zip(jobs, problems, strict=True) if p})
        return {
            "cases": len(cases),
            "rounds": rounds,
            "requests": len(jobs),
            "failed": failures,
            "workers_unchanged": server.worker_pids("shapes") == workers,
            "background": _load_figures(background[0], engine),
        }


def soak_load(root: Path, rounds: int, seconds: float, engine: LocalEngine) -> dict[str, Any]:
    runs: dict[int, list[dict[str, Any]]] = {k: [] for k in CLIENTS}
    with _server(root) as server:
        token = server.inference_token
        for number in range(rounds):  # interleaved: every k once per round, order rotated
            order = CLIENTS[number % len(CLIENTS) :] + CLIENTS[: number % len(CLIENTS)]
            for k in order:
                plan = LoadPlan(k, 10**6, seconds, seed=100 * number + k)
                report = run_load(server.inference_url, server.grpc_target, token, plan)
                runs[k].append({"report": report, **_load_figures(report, engine)})
    base = statistics.median(r["throughput"] for r in runs[1])
    figures = {}
    for k, reports in runs.items():
        samples = [s.latency for r in reports for s in r["report"].samples]
        samples.sort()
        throughput = statistics.median(r["throughput"] for r in reports)
        figures[str(k)] = {
            "requests": sum(r["requests"] for r in reports),
            "lost": sum(r["lost"] for r in reports),
            "errors": sum(r["errors"] for r in reports),
            "mismatched": sum(r["mismatched"] for r in reports),
            "throughput": round(throughput, 3),
            "throughput_vs_k1": round(throughput / base, 2) if base else None,
            **{f"p{q}": round(percentile(samples, q), 4) for q in (50, 90, 99)},
            "max": round(samples[-1], 4) if samples else None,
        }
    return {"rounds": rounds, "seconds": seconds, "clients": figures}


def _repeat(times: int, scenario: Callable[[], Any]) -> list[dict[str, Any]]:
    return [asdict(scenario()) for _ in range(times)]


def soak_faults(root: Path, repeat: int, engine: LocalEngine) -> dict[str, Any]:
    models = build_fault_store(root / "store", ARTIFACTS, root)
    with TorchServeInstance(root / "store", models, root / "ts") as server:
        kit = scenarios.FaultKit(server, root, engine)
        try:
            return {
                "repeat": repeat,
                "kill_mid_batch": _repeat(repeat, lambda: scenarios.kill_mid_batch(kit)),
                "oom_split": _repeat(repeat, lambda: scenarios.oom_split(kit)),
                "deadline_in_queue": _repeat(repeat, lambda: scenarios.deadline_in_queue(kit)),
                "deadline_while_running": _repeat(
                    repeat, lambda: scenarios.deadline_while_running(kit)
                ),
                "response_timeout_budget": _repeat(
                    repeat, lambda: scenarios.response_timeout_budget(kit)
                ),
                "single_long_call": _repeat(1, lambda: scenarios.single_long_call(kit)),
                "costly_batch": _repeat(repeat, lambda: scenarios.costly_batch(kit)),
            }
        finally:
            kit.close()


def soak_diskfull(root: Path, seconds: float, engine: LocalEngine) -> dict[str, Any]:
    folder = root / "metrics"
    folder.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=512k,mode=0777", "tmpfs", str(folder)]
    if subprocess.run(mount, capture_output=True).returncode != 0:
        return {"skipped": "mounting a tmpfs needs CAP_SYS_ADMIN"}
    try:
        subprocess.run(["dd", "if=/dev/zero", f"of={folder}/filler"], capture_output=True)
        free = os.statvfs(folder).f_bavail
        env = {"METRICS_LOCATION": str(folder), "PROMETHEUS_MULTIPROC_DIR": str(folder)}
        with _server(root / "srv", **env) as server:
            workers = server.worker_pids("shapes")
            plan = LoadPlan(4, 10**6, seconds, seed=5)
            token = server.inference_token
            report = run_load(server.inference_url, server.grpc_target, token, plan)
            kept = server.worker_pids("shapes") == workers
        return {"free_blocks": free, "workers_unchanged": kept, **_load_figures(report, engine)}
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    parts = [p for p in args.parts.split(",") if p]
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; choose from {PARTS}")
    engine = LocalEngine()
    results: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    with tempfile.TemporaryDirectory(prefix="soak", dir="/tmp") as tmp:
        for part in parts:
            root = Path(tmp) / part
            root.mkdir()
            print(f"soak: {part} ...", flush=True)
            if part == "corpus":
                figures = soak_corpus(root, args.rounds, engine)
            elif part == "load":
                figures = soak_load(root, args.rounds, args.seconds, engine)
            elif part == "faults":
                figures = soak_faults(root, args.repeat, engine)
            else:
                figures = soak_diskfull(root, args.seconds, engine)
            results[part] = {"measured": _stamp(), **figures}
            print(json.dumps(results[part], indent=1)[:2000], flush=True)
    RESULTS.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    write_report(results, REPO_ROOT / "docs" / "reliability.md")
    return 0


def _stamp() -> str:
    cpu = platform.processor() or platform.machine()
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    # Other work on the same cores slows everything down: say how busy the machine was.
    return f"{now} on {os.cpu_count()} cores ({cpu}), load average {os.getloadavg()[0]:.1f}"


if __name__ == "__main__":
    raise SystemExit(main())
