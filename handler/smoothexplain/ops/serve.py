"""`smoothexplain serve` and `smoothexplain stop`: run TorchServe with our config in the foreground.

`serve` is the container entrypoint and what `make run` starts in the background: it starts
TorchServe (fixed loopback ports, token auth on, model API off) with $PROMETHEUS_MULTIPROC_DIR
set for its workers (emptied first), serves their merged metrics and the token-free probes on its
own exporter port (exporter.py), writes `endpoints.json` and `serve.pid` into its work directory
once every model is READY, and stops TorchServe's whole process group and the exporter on
SIGTERM or SIGINT. Every few seconds it looks for a model whose worker TorchServe lost and
restarts it through the management API (watchdog.py). `stop` sends that SIGTERM.
`--tls-cert/--tls-key` turn on TLS for REST, gRPC, the exporter and the explorer. The explorer
page (explorer/, `--explorer-port`, default 8084; `--no-explorer`) starts once the models are
ready; its login link, with a one-time token, is printed and kept in `explorer_login`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import ssl
import threading
import time
import urllib.request
import zipfile
from pathlib import Path
from types import FrameType
from typing import TypeAlias

import yaml

from ..explorer import ExplorerServer, ExplorerSettings, ModelFacts
from ..explorer.guard import is_loopback
from ..protocol.errors import InvalidArgument
from ..protocol.local_server import ServerRecord, clear_record, read_record, write_record
from ..serving.config import parse_config
from ..serving.metrics import ServerCollector, worker_collector
from .exporter import Exporter, Probes, TlsFiles
from .keyrotation import KeyRenewer
from .launcher import DEFAULT_BASE_CONFIG, Ports, TorchServeError, TorchServeInstance
from .watchdog import Watchdog, unserved_models

__all__ = ["add_serve", "add_stop", "run_serve", "run_stop", "server_probes"]

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
DEFAULT_WORKDIR = Path("run/server")
WATCH_SECONDS = 5.0  # between looks for models whose worker TorchServe lost (watchdog.py)
DEFAULT_EXPLORER_PORT = 8084
DEFAULT_KEY_MINUTES = 60.0  # TorchServe's own default token_expiration_min
MIN_KEY_MINUTES = 0.2  # 12 s: a key must outlive a few WATCH_SECONDS (short ones are for tests)


def _lifetime(text: str) -> float:
    try:
        minutes = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of minutes: {text!r}") from None
    if not MIN_KEY_MINUTES <= minutes <= 10**6:  # NaN fails too
        raise argparse.ArgumentTypeError(
            f"must be in [{MIN_KEY_MINUTES:g}, 1e6] minutes, got {text!r}"
        )
    return minutes


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
    parser.add_argument(
        "--host", default="127.0.0.1", help="bind address of REST and gRPC inference"
    )
    parser.add_argument(
        "--metrics-host",
        help="bind address of TorchServe's metrics and the exporter (default: --host)",
    )
    for name, default in (
        ("inference", 8080),
        ("management", 8081),
        ("metrics", 8082),
        ("grpc-inference", 7070),
        ("grpc-management", 7071),
        ("exporter", 8083),
    ):
        parser.add_argument(f"--{name}-port", type=int, default=default)
    parser.add_argument(
        "--token-auth",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="TorchServe's token authorization; --no-token-auth only with a loopback --host, "
        "behind a gateway that checks tokens itself (deploy/k8s)",
    )
    parser.add_argument(
        "--token-expiration-min",
        type=_lifetime,
        default=DEFAULT_KEY_MINUTES,
        metavar="MINUTES",
        help="lifetime of the management and inference keys; serve renews each with a "
        f"quarter of it left (default {DEFAULT_KEY_MINUTES:g}, TorchServe's; at least "
        f"{MIN_KEY_MINUTES:g})",
    )
    parser.add_argument("--tls-cert", type=Path, help="PEM certificate: HTTPS and gRPC TLS")
    parser.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    parser.add_argument("--startup-timeout", type=float, default=300.0)
    parser.add_argument(
        "--explorer-port",
        type=int,
        default=DEFAULT_EXPLORER_PORT,
        help=f"port of the explorer page (default {DEFAULT_EXPLORER_PORT}; 0: a free port)",
    )
    parser.add_argument(
        "--explorer-host",
        help="bind address of the explorer page (default: --host); beyond loopback only with "
        "--tls-cert/--tls-key",
    )
    parser.add_argument(
        "--no-explorer", dest="explorer", action="store_false", help="serve no explorer page"
    )
    parser.set_defaults(run=run_serve)


def add_stop(subparsers: Subparsers) -> None:
    """`stop [--workdir DIR]`: SIGTERM the `serve` process recorded there and wait."""
    parser = subparsers.add_parser("stop", help="stop a server started with serve")
    parser.add_argument(
        "--workdir",
        type=Path,
        help="the server's work directory (default run/server, else the local server's record)",
    )
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.set_defaults(run=run_stop)


def _endpoints(
    instance: TorchServeInstance,
    exporter: Exporter,
    tls: TlsFiles | None,
    explorer: ExplorerServer | None,
) -> dict[str, object]:
    rest = f"https://{instance.host}:{instance.ports.inference}" if tls else instance.inference_url
    return {
        "rest": rest,
        "explorer": explorer.url if explorer else None,  # the login link: explorer_login
        "grpc": instance.grpc_target,
        "tls": tls is not None,
        "metrics": f"{exporter.url}/metrics",
        "torchserve_metrics": f"{instance.metrics_url}/metrics",
        "health": f"{exporter.url}/healthz",
        "ready": f"{exporter.url}/readyz",
        "management": instance.management_url,
        "key_file": str(instance.key_file),
        "models": sorted(instance.models),
        "logs": str(instance.log_dir),
        "pid": os.getpid(),
    }


def _record(instance: TorchServeInstance, tls: TlsFiles | None) -> ServerRecord:
    """What clients on this machine need to find this server (local_server.py)."""
    host = "127.0.0.1" if instance.host in ("0.0.0.0", "", "::") else instance.host
    return ServerRecord(
        host=host,
        rest_port=instance.ports.inference,
        grpc_port=instance.ports.grpc_inference,
        tls=tls is not None,
        key_file=str(instance.key_file) if instance.token_auth else "",
        pid=os.getpid(),
        workdir=str(instance.workdir),
        models=tuple(sorted(instance.models)),
    )


def _tls(args: argparse.Namespace) -> TlsFiles | None:
    if (args.tls_cert is None) != (args.tls_key is None):
        raise SystemExit("error: --tls-cert and --tls-key go together")
    if args.tls_cert is None:
        return None
    return TlsFiles(args.tls_cert.resolve(), args.tls_key.resolve())


def _overrides(args: argparse.Namespace, tls: TlsFiles | None) -> dict[str, str]:
    """config.properties keys on top of the launcher's: management stays on loopback whatever
    --host says; TorchServe 0.12's TLS keys when asked for."""
    metrics_host = args.metrics_host or args.host
    if not args.token_auth and not is_loopback(args.host):
        raise SystemExit("error: --no-token-auth needs a loopback --host (127.0.0.1)")
    values = {
        "management_address": f"http://127.0.0.1:{args.management_port}",
        "grpc_management_address": "127.0.0.1",
        "metrics_address": f"http://{metrics_host}:{args.metrics_port}",
    }
    if args.token_auth:
        values["token_expiration_min"] = repr(args.token_expiration_min)
    else:
        values["disable_token_authorization"] = "true"
    if tls is not None:
        values.update(
            {
                "inference_address": f"https://{args.host}:{args.inference_port}",
                "enable_grpc_ssl": "true",  # same certificate for gRPC (both gRPC servers)
                "certificate_file": str(tls.certificate),
                "private_key_file": str(tls.private_key),
            }
        )
    return values


def _explorer_host(args: argparse.Namespace, tls: TlsFiles | None) -> str:
    """The explorer's bind address; beyond loopback only over TLS (its session cookie and the
    photos would otherwise cross the network in clear)."""
    host: str = args.explorer_host or args.host
    if args.explorer and tls is None and not is_loopback(host):
        raise SystemExit(
            f"error: the explorer would listen on {host} without TLS; give --tls-cert and "
            "--tls-key, or --explorer-host 127.0.0.1 (and an SSH tunnel), or --no-explorer"
        )
    return host


def _model_facts(archive: Path) -> ModelFacts:
    """The explorer's view of one archive's model-config (defaults, limits, crop); the
    table's defaults where the archive cannot be read (TorchServe reports that itself)."""
    try:
        with zipfile.ZipFile(archive) as mar:
            raw = yaml.safe_load(mar.read("model-config.yaml")) or {}
        config = parse_config(raw.get("smoothexplain") if isinstance(raw, dict) else None)
    except (OSError, KeyError, zipfile.BadZipFile, yaml.YAMLError, InvalidArgument):
        return ModelFacts()
    return ModelFacts(
        defaults=dict(config.defaults.values),
        top_k=config.defaults.top_k,
        limits=dataclasses.asdict(config.limits),
        size=config.preprocess.size,
        resize=config.preprocess.resize,
    )


def _explorer(
    args: argparse.Namespace, instance: TorchServeInstance, tls: TlsFiles | None, host: str
) -> ExplorerServer:
    upstream = "https" if tls else "http"
    inference = "127.0.0.1" if instance.host in ("0.0.0.0", "", "::") else instance.host
    models = {n: _model_facts(instance.model_store / f) for n, f in instance.models.items()}
    settings = ExplorerSettings(
        host=host,
        port=args.explorer_port,
        models=models,
        upstream_url=f"{upstream}://{inference}:{instance.ports.inference}",
        key_file=instance.key_file if instance.token_auth else None,
        tls=tls.server_context() if tls else None,
        login_file=args.workdir / "explorer_login",
    )
    return ExplorerServer(settings)


def _ready(instance: TorchServeInstance, tls: TlsFiles | None) -> bool:
    """TorchServe's /ping with the current inference key (re-read: keys rotate)."""
    host = "127.0.0.1" if instance.host in ("0.0.0.0", "") else instance.host
    scheme = "https" if tls else "http"
    headers = {}
    if instance.key_file.is_file():  # absent when token authorization is off
        headers["Authorization"] = f"Bearer {instance.inference_token}"
    request = urllib.request.Request(
        f"{scheme}://{host}:{instance.ports.inference}/ping", headers=headers
    )
    context = None
    if tls is not None:
        # Our own child on loopback: the certificate need not name 127.0.0.1, so it is not
        # checked here (clients check it).
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with urllib.request.urlopen(request, timeout=5, context=context) as answer:
        status = json.loads(answer.read()).get("status")
    return answer.status == 200 and bool(status == "Healthy")


def server_probes(instance: TorchServeInstance, tls: TlsFiles | None) -> Probes:
    """/healthz: TorchServe runs; /readyz: /ping says Healthy and every model has a live
    worker (/ping alone misses a worker TorchServe lost, see watchdog.py)."""
    return Probes(
        alive=instance.is_running,
        ready=lambda: _ready(instance, tls),
        unserved=lambda: unserved_models(instance),
    )


def _exporter(
    args: argparse.Namespace, instance: TorchServeInstance, tls: TlsFiles | None
) -> Exporter:
    multiproc = args.workdir.resolve() / "prometheus"
    shutil.rmtree(multiproc, ignore_errors=True)  # stale files would count dead workers twice
    multiproc.mkdir(parents=True)
    instance.extra_env["PROMETHEUS_MULTIPROC_DIR"] = str(multiproc)
    return Exporter(
        args.metrics_host or args.host,
        args.exporter_port,
        [
            worker_collector(multiproc),
            ServerCollector(instance.process_pids, instance.is_running),
        ],
        server_probes(instance, tls),
        tls,
    )


class _StoppedWhileStarting(Exception):
    """SIGTERM/SIGINT before TorchServe was ready; unwinds `instance.start()`, which stops it."""


def run_serve(args: argparse.Namespace) -> int:
    ports = Ports(
        inference=args.inference_port,
        management=args.management_port,
        metrics=args.metrics_port,
        grpc_inference=args.grpc_inference_port,
        grpc_management=args.grpc_management_port,
    )
    tls = _tls(args)
    explorer_host = _explorer_host(args, tls)
    instance = TorchServeInstance(
        args.model_store,
        args.models,
        args.workdir,
        base_config=args.config,
        config_overrides=_overrides(args, tls),
        host=args.host,
        ports=ports,
        startup_timeout=args.startup_timeout,
    )
    args.workdir.mkdir(parents=True, exist_ok=True)
    exporter = _exporter(args, instance, tls)
    stopping, started = threading.Event(), threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stopping.set()
        if not started.is_set():  # still loading models: do not make Kubernetes wait for it
            raise _StoppedWhileStarting

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    pid_file, endpoints_file = args.workdir / "serve.pid", args.workdir / "endpoints.json"
    explorer = _explorer(args, instance, tls, explorer_host) if args.explorer else None
    try:
        exporter.start()  # before TorchServe: /readyz answers 503 while models load
        if explorer is not None:
            explorer.start()  # early, so a taken port fails before the models load
        instance.start()
        started.set()
        endpoints = _endpoints(instance, exporter, tls, explorer)
        endpoints_file.write_text(json.dumps(endpoints, indent=2) + "\n")
        pid_file.write_text(f"{os.getpid()}\n")
        write_record(_record(instance, tls))
        print(
            f"smoothexplain serving {', '.join(sorted(instance.models))}: "
            f"REST {endpoints['rest']}, gRPC {instance.grpc_target}, "
            f"metrics {exporter.url}/metrics, token in {instance.key_file}",
            flush=True,
        )
        if explorer is not None:
            print(f"explorer: open {explorer.login_url}", flush=True)
        renewer = None
        if instance.token_auth:
            renewer = KeyRenewer(instance, 60 * args.token_expiration_min, 2 * WATCH_SECONDS)
        return _supervise(instance, stopping, renewer)
    except _StoppedWhileStarting:
        return 0
    except (TorchServeError, OSError) as error:
        print(f"error: {error}", flush=True)
        return 1
    finally:
        if explorer is not None:
            explorer.stop()
        instance.stop()
        exporter.stop()
        pid_file.unlink(missing_ok=True)
        endpoints_file.unlink(missing_ok=True)
        clear_record(os.getpid())


def _supervise(
    instance: TorchServeInstance, stopping: threading.Event, renewer: KeyRenewer | None
) -> int:
    """Until SIGTERM (0) or TorchServe's exit (1): renewing keys before they expire and
    restarting the workers TorchServe lost."""
    watchdog, next_check = Watchdog(instance), time.monotonic() + WATCH_SECONDS
    while not stopping.wait(1.0):
        if not instance.is_running():
            print("TorchServe exited unexpectedly; see " + str(instance.log_dir), flush=True)
            return 1
        if time.monotonic() >= next_check:
            if renewer is not None:  # first: the worker check needs a live management key
                _renew_keys(renewer)
            _restart_lost_workers(watchdog)
            next_check = time.monotonic() + WATCH_SECONDS
    return 0


def _renew_keys(renewer: KeyRenewer) -> None:
    try:
        renewed = renewer.check()
    except (TorchServeError, OSError) as error:
        print(f"key renewal failed: {error}", flush=True)  # retried at the next look
        return
    for kind in renewed:
        print(f"renewed the {kind} key (key file rewritten)", flush=True)


def _restart_lost_workers(watchdog: Watchdog) -> None:
    try:
        restarted = watchdog.check()
    except (TorchServeError, OSError, ValueError, KeyError) as error:
        print(f"worker check failed: {error}", flush=True)  # the next look may work
        return
    for name in restarted:
        print(f"model {name} had lost its worker (READY, process gone): restarted", flush=True)


def _serve_pid(pid_file: Path) -> int | None:
    """The pid in `pid_file` if it is a live `smoothexplain serve`, else None.

    A pid file is only a hint: 0 or -1 would signal whole process groups, and the number of a
    server that died may now belong to any process. Where /proc exists the command line must be
    ours."""
    text = pid_file.read_text(errors="replace").strip()
    if not text.isdigit() or not 0 < int(text) < 2**31:
        return None
    pid = int(text)
    cmdline = Path(f"/proc/{pid}/cmdline")
    if Path("/proc/self").exists():
        try:
            words = cmdline.read_bytes().split(b"\0")
        except OSError:
            return None  # not running
        ours = any(b"smoothexplain" in w for w in words) and b"serve" in words
        return pid if ours else None
    return pid


def _stop_workdir(given: Path | None) -> Path:
    if given is not None or (DEFAULT_WORKDIR / "serve.pid").is_file():
        return given or DEFAULT_WORKDIR
    record = read_record()
    return Path(record.workdir) if record is not None else DEFAULT_WORKDIR


def run_stop(args: argparse.Namespace) -> int:
    workdir = _stop_workdir(args.workdir)
    pid_file = workdir / "serve.pid"
    if not pid_file.is_file():
        print(f"no server recorded in {workdir}")
        return 0
    pid = _serve_pid(pid_file)
    if pid is None:
        print(f"{pid_file} does not name a running `smoothexplain serve`: nothing signalled")
        return 1
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
