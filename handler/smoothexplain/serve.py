"""`smoothexplain serve` and `smoothexplain stop`: run TorchServe with our config in the foreground.

`serve` is the container entrypoint and what `make run` starts in the background: it starts
TorchServe (fixed loopback ports, token auth on, model API off), writes `endpoints.json` and
`serve.pid` into its work directory once every model is READY, and stops the whole process
group on SIGTERM or SIGINT. `stop` sends that SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import time
from pathlib import Path
from types import FrameType
from typing import TypeAlias

from .launcher import DEFAULT_BASE_CONFIG, Ports, TorchServeError, TorchServeInstance

__all__ = ["add_serve", "add_stop", "run_serve", "run_stop"]

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
DEFAULT_WORKDIR = Path("run/server")


def add_serve(subparsers: Subparsers) -> None:
    """`serve --model-store DIR --models NAME=FILE.mar ...`: TorchServe in the foreground."""
    parser = subparsers.add_parser("serve", help="run TorchServe with smoothexplain's config")
    parser.add_argument("--model-store", type=Path, default=Path("model_store"))
    parser.add_argument(
        "--models",
        nargs="+",
        default=["shapes=shapes.mar"],
        metavar="NAME=FILE.mar",
        help="archives loaded at startup",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=DEFAULT_WORKDIR,
        help="config, logs, key_file.json, temp files (default run/server)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_BASE_CONFIG,
        help="base config.properties (addresses and ports are set here)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="bind address of every API")
    for name, default in (
        ("inference", 8080),
        ("management", 8081),
        ("metrics", 8082),
        ("grpc-inference", 7070),
        ("grpc-management", 7071),
    ):
        parser.add_argument(f"--{name}-port", type=int, default=default)
    parser.add_argument("--startup-timeout", type=float, default=300.0)
    parser.set_defaults(run=run_serve)


def add_stop(subparsers: Subparsers) -> None:
    """`stop [--workdir DIR]`: SIGTERM the `serve` process recorded there and wait."""
    parser = subparsers.add_parser("stop", help="stop a server started with serve")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.set_defaults(run=run_stop)


def _endpoints(instance: TorchServeInstance) -> dict[str, object]:
    return {
        "rest": instance.inference_url,
        "grpc": instance.grpc_target,
        "metrics": f"{instance.metrics_url}/metrics",
        "management": instance.management_url,
        "key_file": str(instance.key_file),
        "models": sorted(instance.models),
        "logs": str(instance.log_dir),
        "pid": os.getpid(),
    }


def run_serve(args: argparse.Namespace) -> int:
    ports = Ports(
        inference=args.inference_port,
        management=args.management_port,
        metrics=args.metrics_port,
        grpc_inference=args.grpc_inference_port,
        grpc_management=args.grpc_management_port,
    )
    instance = TorchServeInstance(
        args.model_store,
        args.models,
        args.workdir,
        base_config=args.config,
        host=args.host,
        ports=ports,
        startup_timeout=args.startup_timeout,
    )
    stopping = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    pid_file, endpoints_file = args.workdir / "serve.pid", args.workdir / "endpoints.json"
    try:
        instance.start()
        endpoints_file.write_text(json.dumps(_endpoints(instance), indent=2) + "\n")
        pid_file.write_text(f"{os.getpid()}\n")
        print(
            f"smoothexplain serving {', '.join(sorted(instance.models))}: "
            f"REST {instance.inference_url}, gRPC {instance.grpc_target}, "
            f"token in {instance.key_file}",
            flush=True,
        )
        while not stopping.wait(1.0):
            if not instance.is_running():
                print("TorchServe exited unexpectedly; see " + str(instance.log_dir), flush=True)
                return 1
        return 0
    except TorchServeError as error:
        print(f"error: {error}", flush=True)
        return 1
    finally:
        instance.stop()
        pid_file.unlink(missing_ok=True)
        endpoints_file.unlink(missing_ok=True)


def run_stop(args: argparse.Namespace) -> int:
    pid_file = args.workdir / "serve.pid"
    if not pid_file.is_file():
        print(f"no server recorded in {args.workdir}")
        return 0
    pid = int(pid_file.read_text().strip())
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pid_file.unlink(missing_ok=True)
        print(f"server {pid} was not running")
        return 0
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            print(f"stopped server {pid}")
            return 0
        time.sleep(0.2)
    print(f"server {pid} still running after {args.timeout:.0f}s")
    return 1
