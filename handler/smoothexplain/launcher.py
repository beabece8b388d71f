"""Start and stop isolated TorchServe 0.12.0 instances (`smoothexplain serve`, `make run`, tests).

``TorchServeInstance`` launches ``torchserve --start --foreground`` in its
own process group with

* a per-instance ``config.properties`` derived from ``deploy/config.properties`` (token auth
  on, model API off, everything on 127.0.0.1) with freshly picked free ports and paths inside
  the instance's work directory;
* ``TEMP``/``TMPDIR`` (worker Unix sockets and the launcher's pid file),
  ``LOG_LOCATION``/``METRICS_LOCATION`` (log4j files) and the working directory (TorchServe
  writes ``key_file.json`` into the JVM's ``user.dir``) all inside the work directory, so
  several instances never share state;

waits until every startup model has a READY worker, exposes URLs, gRPC targets and the
tokens from ``key_file.json``, and ``stop()`` terminates the whole process group (launcher,
JVM, Python workers), escalating from SIGTERM to SIGKILL.

Typical use::

    with TorchServeInstance(store, {"echo": "echo.mar"}, tmp_path / "ts") as ts:
        requests.post(f"{ts.inference_url}/predictions/echo",
                      headers=ts.inference_headers(), data=b"...")
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final, Literal, Self

from .keyrotation import KeyKind

REPO_ROOT: Final = Path(__file__).resolve().parents[2]  # handler/smoothexplain/launcher.py
DEFAULT_BASE_CONFIG: Final = REPO_ROOT / "deploy" / "config.properties"

#: Linux limit for a Unix socket path (sun_path is 108 bytes including the NUL).
_MAX_SOCKET_PATH: Final = 107
#: TorchServe names worker sockets ``<java.io.tmpdir>/.ts.sock.<port>``; ports are 5 digits.
_SOCKET_NAME_LEN: Final = len("/.ts.sock.65535")

TokenKind = Literal["inference", "management", "API"]

#: The config key naming the request header that marks StreamPredictions2 messages, and the
#: name ts_handler.py looks for (kept here too: the launcher must not import the handler).
SEQUENCE_ID_KEY: Final = "ts_header_key_sequence_id"
SEQUENCE_ID_HEADER: Final = "ts_request_sequence_id"

#: ``st`` column value of a listening socket in /proc/net/tcp{,6}.
_TCP_LISTEN: Final = "0A"


def _decode_proc_addr(hex_addr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """Decode an address from /proc/net/tcp{,6} (host-endian 32-bit words, hex)."""
    raw = bytes.fromhex(hex_addr)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    if len(words) == 4:
        return ipaddress.IPv4Address(words)
    return ipaddress.IPv6Address(words)


def is_loopback(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback (::ffff:127.x.y.z)."""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped.is_loopback
    return addr.is_loopback


class TorchServeError(RuntimeError):
    """TorchServe failed to start, died, or did not become ready in time."""


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that was free a moment ago (bind to port 0)."""
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Return ``count`` distinct free ports (all sockets are held until every port is picked)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass(frozen=True)
class Ports:
    """The five TCP ports one TorchServe instance listens on."""

    inference: int
    management: int
    metrics: int
    grpc_inference: int
    grpc_management: int

    @classmethod
    def pick(cls, host: str = "127.0.0.1") -> Ports:
        return cls(*free_ports(5, host))

    def all(self) -> tuple[int, ...]:
        return (
            self.inference,
            self.management,
            self.metrics,
            self.grpc_inference,
            self.grpc_management,
        )


def _escape_property(value: str) -> str:
    """Escape a value for a Java ``.properties`` file (backslash is the escape char)."""
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def derive_config(base: str, overrides: Mapping[str, str], *, header: str | None = None) -> str:
    """Return ``base`` (properties text) with ``overrides`` applied.

    Existing keys are replaced in place (comments are kept); new keys are appended. Values
    in ``overrides`` are raw strings and are escaped here.
    """
    pending = dict(overrides)
    out: list[str] = [f"# {line}".rstrip() for line in header.splitlines()] if header else []
    key_re = re.compile(r"^\s*([^#!\s=:][^=:\s]*)\s*[=:]")
    for line in base.splitlines():
        m = key_re.match(line)
        if m and m.group(1) in pending:
            key = m.group(1)
            out.append(f"{key}={_escape_property(pending.pop(key))}")
        else:
            out.append(line)
    if pending:
        out.append("")
        out.append("# --- per-instance additions")
        out.extend(f"{k}={_escape_property(v)}" for k, v in pending.items())
    return "\n".join(out) + "\n"


class TorchServeInstance:
    """One isolated TorchServe process group.

    Args:
        model_store: directory holding the ``.mar`` files (passed as ``--model-store``).
        models: startup models, either ``{"name": "file.mar"}`` or ``["name=file.mar", ...]``
            (the ``--models`` form). Names must be unique.
        workdir: directory for this instance's config, logs, temp dir and key file; created
            if missing. Keep it short: worker Unix sockets live in ``<workdir>/tmp``.
        base_config: properties file to derive from (default ``deploy/config.properties``).
        config_overrides: extra ``key: value`` settings applied after the per-instance ones.
        env: extra environment variables for the server (applied last).
        startup_timeout: seconds ``start()`` waits for all models to have a READY worker.
        host: loopback address to bind and connect to.
        ports: fixed ports (default: free ones picked at construction).

    Attributes (set in the constructor): ``model_store``, ``workdir``, ``models`` (name ->
    archive), ``ports`` (:class:`Ports`), ``host``, ``config_path``, ``temp_dir``,
    ``log_dir``, ``key_file``, ``console_log``; after ``start()``: ``startup_seconds``.
    """

    def __init__(
        self,
        model_store: Path | str,
        models: Mapping[str, str] | Sequence[str],
        workdir: Path | str,
        *,
        base_config: Path | str = DEFAULT_BASE_CONFIG,
        config_overrides: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
        startup_timeout: float = 180.0,
        host: str = "127.0.0.1",
        ports: Ports | None = None,
    ) -> None:
        self.model_store = Path(model_store).resolve()
        self.workdir = Path(workdir).resolve()
        self.models = self._normalise_models(models)
        self.host = host
        self.base_config = Path(base_config)
        self.config_overrides = dict(config_overrides or {})
        self.extra_env = dict(env or {})
        self.startup_timeout = startup_timeout
        self.fixed_ports = ports is not None
        self.ports = ports or Ports.pick(host)

        self.config_path = self.workdir / "config.properties"
        self.temp_dir = self.workdir / "tmp"
        self.log_dir = self.workdir / "logs"
        self.key_file = self.workdir / "key_file.json"
        self.console_log = self.workdir / "torchserve.console.log"
        self.startup_seconds: float | None = None

        self._proc: subprocess.Popen[bytes] | None = None
        self._console: IO[bytes] | None = None
        self._pgid: int | None = None

    # ------------------------------------------------------------------ configuration
    @staticmethod
    def _normalise_models(models: Mapping[str, str] | Sequence[str]) -> dict[str, str]:
        if isinstance(models, Mapping):
            pairs = list(models.items())
        else:
            pairs = []
            for spec in models:
                name, sep, archive = spec.partition("=")
                if not sep or not name or not archive:
                    raise ValueError(f"model spec must be 'name=file.mar', got {spec!r}")
                pairs.append((name, archive))
        result: dict[str, str] = {}
        for name, archive in pairs:
            if name in result:
                raise ValueError(f"duplicate model name {name!r}")
            result[name] = archive
        if not result:
            raise ValueError("at least one startup model is required")
        return result

    @property
    def inference_url(self) -> str:
        return f"http://{self.host}:{self.ports.inference}"

    @property
    def management_url(self) -> str:
        return f"http://{self.host}:{self.ports.management}"

    @property
    def metrics_url(self) -> str:
        """Base URL of the metrics endpoint (scrape ``f"{metrics_url}/metrics"``)."""
        return f"http://{self.host}:{self.ports.metrics}"

    @property
    def grpc_target(self) -> str:
        """``host:port`` of the gRPC inference service, for ``grpc.insecure_channel``."""
        return f"{self.host}:{self.ports.grpc_inference}"

    @property
    def grpc_management_target(self) -> str:
        return f"{self.host}:{self.ports.grpc_management}"

    @property
    def token_auth(self) -> bool:
        """False when the config turns TorchServe's token authorization off (no key file)."""
        value = self.config_overrides.get("disable_token_authorization")
        if value is None:
            found = re.search(
                r"^\s*disable_token_authorization\s*[=:]\s*(\S+)",
                self.base_config.read_text(encoding="utf-8"),
                re.MULTILINE,
            )
            value = found.group(1) if found else "false"
        return value.strip().lower() != "true"

    def config_values(self) -> dict[str, str]:
        """The per-instance settings written on top of the base config."""
        store_regex = re.escape(self.model_store.as_posix())
        values = {
            "inference_address": self.inference_url,
            "management_address": self.management_url,
            "metrics_address": self.metrics_url,
            "grpc_inference_address": self.host,
            "grpc_inference_port": str(self.ports.grpc_inference),
            "grpc_management_address": self.host,
            "grpc_management_port": str(self.ports.grpc_management),
            "model_store": str(self.model_store),
            "allowed_urls": f"file://{store_regex}/[^/]+\\.mar",
        }
        values.update(self.config_overrides)
        # The handler finds StreamPredictions2 messages by this header name (ts_handler.py).
        values[SEQUENCE_ID_KEY] = SEQUENCE_ID_HEADER
        return values

    def write_config(self) -> Path:
        text = derive_config(
            self.base_config.read_text(encoding="utf-8"),
            self.config_values(),
            header=f"Generated by smoothexplain.launcher from {self.base_config}",
        )
        self.config_path.write_text(text, encoding="utf-8")
        return self.config_path

    def server_env(self) -> dict[str, str]:
        env = dict(os.environ)
        # The launcher prefers TS_CONFIG_FILE over --ts-config; never inherit one.
        env.pop("TS_CONFIG_FILE", None)
        tmp = str(self.temp_dir)
        env.update(
            {
                # java.io.tmpdir (worker sockets) comes from TEMP; the launcher's pid file
                # goes to tempfile.gettempdir(), which prefers TMPDIR, so set both.
                "TEMP": tmp,
                "TMPDIR": tmp,
                "TMP": tmp,
                "LOG_LOCATION": str(self.log_dir),
                "METRICS_LOCATION": str(self.log_dir),
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.extra_env)
        return env

    def command(self) -> list[str]:
        exe = Path(sys.executable).parent / "torchserve"
        torchserve = str(exe) if exe.is_file() else shutil.which("torchserve")
        if torchserve is None:
            raise TorchServeError("torchserve executable not found")
        return [
            torchserve,
            "--start",
            "--foreground",
            "--ncs",
            "--model-store",
            str(self.model_store),
            "--ts-config",
            str(self.config_path),
            "--models",
            *(f"{name}={archive}" for name, archive in self.models.items()),
        ]

    # ------------------------------------------------------------------ lifecycle
    def start(self, *, port_retries: int = 2) -> Self:
        """Launch the server and block until every startup model has a READY worker.

        Free ports are picked before launch, so another process may grab one in between; if
        TorchServe then dies with "Address already in use", new ports are picked and the
        launch is retried up to ``port_retries`` times. Any other failure stops the process
        group and raises :class:`TorchServeError` including the tail of the console log.
        """
        if self._proc is not None:
            raise TorchServeError("instance already started")
        if not self.model_store.is_dir():
            raise TorchServeError(f"model store {self.model_store} is not a directory")
        for archive in self.models.values():
            if not (self.model_store / archive).exists():
                raise TorchServeError(f"{archive} not found in {self.model_store}")
        sock_len = len(str(self.temp_dir)) + _SOCKET_NAME_LEN
        if sock_len > _MAX_SOCKET_PATH:
            raise TorchServeError(
                f"workdir {self.workdir} is too long for worker Unix sockets "
                f"({sock_len} > {_MAX_SOCKET_PATH} bytes); use a shorter path"
            )
        for d in (self.workdir, self.temp_dir, self.log_dir):
            d.mkdir(parents=True, exist_ok=True)

        started = time.monotonic()
        for attempt in range(port_retries + 1):
            log_offset = self.console_log.stat().st_size if self.console_log.exists() else 0
            self._launch()
            try:
                self.wait_ready(self.startup_timeout)
            except TorchServeError:
                port_clash = not self.is_running() and (
                    "Address already in use" in self._console_text(log_offset)
                )
                self.stop()
                if port_clash and attempt < port_retries and not self.fixed_ports:
                    self.ports = Ports.pick(self.host)
                    continue
                raise
            except BaseException:
                self.stop()
                raise
            break
        self.startup_seconds = time.monotonic() - started
        return self

    def _launch(self) -> None:
        self.key_file.unlink(missing_ok=True)
        self.write_config()
        self._console = self.console_log.open("ab")
        self._proc = subprocess.Popen(
            self.command(),
            cwd=self.workdir,
            env=self.server_env(),
            stdin=subprocess.DEVNULL,
            stdout=self._console,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._pgid = self._proc.pid
        atexit.register(self.stop)

    def _console_text(self, offset: int = 0) -> str:
        try:
            with self.console_log.open("rb") as fh:
                fh.seek(offset)
                return fh.read().decode("utf-8", errors="replace")
        except OSError:
            return ""

    def wait_ready(self, timeout: float) -> None:
        """Poll the management API until every startup model has a READY worker."""
        deadline = time.monotonic() + timeout
        pending = set(self.models)
        last_error = "no attempt yet"
        while True:
            self._check_alive()
            if self.key_file.is_file() or not self.token_auth:
                for name in sorted(pending):
                    try:
                        workers = self.describe_model(name).get("workers", [])
                    except (OSError, ValueError, TorchServeError) as exc:
                        last_error = f"{name}: {exc}"
                        continue
                    if any(w.get("status") == "READY" for w in workers):
                        pending.discard(name)
                    else:
                        last_error = f"{name}: workers {workers}"
                if not pending:
                    return
            else:
                last_error = f"{self.key_file} not written yet"
            if time.monotonic() >= deadline:
                raise TorchServeError(
                    f"TorchServe not ready after {timeout:.0f}s (models pending: "
                    f"{sorted(pending)}; last: {last_error})\n{self.log_tail()}"
                )
            time.sleep(0.25)

    def _check_alive(self) -> None:
        if self._proc is None:
            raise TorchServeError("instance not started")
        rc = self._proc.poll()
        if rc is not None:
            raise TorchServeError(f"TorchServe exited early with code {rc}\n{self.log_tail()}")

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """PID of the ``torchserve`` launcher (also the process-group id)."""
        return self._pgid

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the instance and everything in its process group; wait until all are gone.

        First SIGTERM goes to the JVM only, so that the foreground launcher reaps it and
        exits by itself (the JVM's shutdown hook stops and reaps the Python workers); no
        orphan is left for init to reap. Whatever is still alive in the process group after
        ``timeout / 2`` gets SIGTERM, and SIGKILL at ``timeout``. Safe to call repeatedly
        and after a failed start().
        """
        atexit.unregister(self.stop)
        proc, pgid = self._proc, self._pgid
        if proc is not None and pgid is not None:
            deadline = time.monotonic() + timeout
            if proc.poll() is None:
                for pid in self._children(proc.pid, pgid):
                    self._signal_pid(pid, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=timeout / 2)
            if not self._wait_group_empty(proc, pgid, 2.0):
                self._signal_group(pgid, signal.SIGTERM)
                self._wait_group_empty(proc, pgid, max(0.0, deadline - time.monotonic()))
            if not self._wait_group_empty(proc, pgid, 0.0):
                self._signal_group(pgid, signal.SIGKILL)
                self._wait_group_empty(proc, pgid, 10.0)
        self._proc = None
        if self._console is not None:
            self._console.close()
            self._console = None

    def _wait_group_empty(self, proc: subprocess.Popen[bytes], pgid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            proc.poll()  # reaps the launcher once it has exited
            if proc.returncode is not None and not self.group_pids(pgid):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    @staticmethod
    def _signal_pid(pid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)

    @staticmethod
    def _signal_group(pgid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)

    @staticmethod
    def _proc_stat(pid: int | str) -> tuple[str, int, int] | None:
        """``(state, ppid, pgrp)`` of a process from ``/proc/<pid>/stat``, or None."""
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        # Fields after the parenthesised command name: state ppid pgrp ...
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) < 3:
            return None
        return fields[0], int(fields[1]), int(fields[2])

    @classmethod
    def group_pids(cls, pgid: int) -> list[int]:
        """Live (non-zombie) processes in process group ``pgid`` (Linux ``/proc`` scan)."""
        pids: list[int] = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                st = cls._proc_stat(entry.name)
                if st is not None and st[2] == pgid and st[0] not in ("Z", "X"):
                    pids.append(int(entry.name))
        return sorted(pids)

    @classmethod
    def _children(cls, parent: int, pgid: int) -> list[int]:
        result = []
        for pid in cls.group_pids(pgid):
            st = cls._proc_stat(pid)
            if st is not None and st[1] == parent:
                result.append(pid)
        return result

    def process_pids(self) -> list[int]:
        """All live processes of this instance (launcher, JVM, workers)."""
        return self.group_pids(self._pgid) if self._pgid is not None else []

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def listening_sockets(self) -> list[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]]:
        """``(address, port)`` of every TCP socket in LISTEN state owned by this instance."""
        inodes: set[str] = set()
        for pid in self.process_pids():
            fd_dir = Path(f"/proc/{pid}/fd")
            with contextlib.suppress(OSError):
                for fd in fd_dir.iterdir():
                    with contextlib.suppress(OSError):
                        target = os.readlink(fd)
                        if target.startswith("socket:["):
                            inodes.add(target[len("socket:[") : -1])
        result: list[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]] = []
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with contextlib.suppress(OSError):
                for line in Path(table).read_text().splitlines()[1:]:
                    cols = line.split()
                    if len(cols) < 10 or cols[3] != _TCP_LISTEN or cols[9] not in inodes:
                        continue
                    addr_hex, port_hex = cols[1].split(":")
                    result.append((_decode_proc_addr(addr_hex), int(port_hex, 16)))
        return sorted(result, key=lambda item: (item[1], str(item[0])))

    # ------------------------------------------------------------------ tokens / API
    def read_keys(self) -> dict[str, Any]:
        """Parse ``key_file.json``: ``{"management": {"key", "expiration time"},
        "inference": {"key", "expiration time"}, "API": {"key"}}``. Re-read on every call
        because TorchServe rewrites it when a key is rotated through the token API."""
        for _ in range(20):
            try:
                data = json.loads(self.key_file.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                time.sleep(0.05)
                continue
            if isinstance(data, dict):
                return data
        raise TorchServeError(f"cannot read {self.key_file}")

    def token(self, kind: TokenKind) -> str:
        key = self.read_keys().get(kind, {}).get("key")
        if not isinstance(key, str) or not key:
            raise TorchServeError(f"no {kind!r} key in {self.key_file}")
        return key

    @property
    def inference_token(self) -> str:
        return self.token("inference")

    @property
    def management_token(self) -> str:
        return self.token("management")

    @property
    def api_token(self) -> str:
        """The token-API key (used only for ``/token?type=...`` key rotation)."""
        return self.token("API")

    def inference_headers(self) -> dict[str, str]:
        """REST headers carrying the inference token (none when token auth is off)."""
        return {"Authorization": f"Bearer {self.inference_token}"} if self.token_auth else {}

    def management_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.management_token}"} if self.token_auth else {}

    def grpc_metadata(self) -> tuple[tuple[str, str], ...]:
        """gRPC call metadata carrying the inference token."""
        return (("authorization", f"Bearer {self.inference_token}"),)

    def renew_key(self, kind: KeyKind) -> None:
        """A fresh `kind` key and expiry in key_file.json, through TorchServe's token API
        (``GET /token?type=...`` on the management port, authorised by the API key)."""
        req = urllib.request.Request(
            f"{self.management_url}/token?type={kind}",
            headers={"Authorization": f"Bearer {self.api_token}"},
        )
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                resp.read()
        except urllib.error.HTTPError as exc:
            raise TorchServeError(f"renew the {kind} key: HTTP {exc.code}") from exc

    def describe_model(self, name: str) -> dict[str, Any]:
        """``GET /models/{name}`` on the management API (first entry of the reply)."""
        req = urllib.request.Request(
            f"{self.management_url}/models/{name}", headers=self.management_headers()
        )
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise TorchServeError(f"describe {name}: HTTP {exc.code}") from exc
        if isinstance(body, list) and body and isinstance(body[0], dict):
            return body[0]
        raise TorchServeError(f"describe {name}: unexpected reply {body!r}")

    def scale_workers(self, name: str, min_worker: int, max_worker: int) -> None:
        """``PUT /models/{name}`` on the management API, waiting until the workers are there."""
        query = f"min_worker={min_worker}&max_worker={max_worker}&synchronous=true"
        req = urllib.request.Request(
            f"{self.management_url}/models/{name}?{query}",
            method="PUT",
            headers=self.management_headers(),
        )
        try:
            with urllib.request.urlopen(req, timeout=self.startup_timeout) as resp:
                resp.read()
        except urllib.error.HTTPError as exc:
            raise TorchServeError(f"scale {name}: HTTP {exc.code}") from exc

    def worker_pids(self, model: str | None = None) -> list[int]:
        """PIDs of the Python backend workers (from the management API)."""
        pids: list[int] = []
        for name in [model] if model else list(self.models):
            for worker in self.describe_model(name).get("workers", []):
                pid = worker.get("pid")
                if isinstance(pid, int) and pid > 0:
                    pids.append(pid)
        return sorted(pids)

    # ------------------------------------------------------------------ diagnostics
    def log_files(self) -> Iterator[Path]:
        yield self.console_log
        if self.log_dir.is_dir():
            yield from sorted(self.log_dir.glob("*.log"))

    def log_tail(self, lines: int = 60) -> str:
        """The last ``lines`` lines of the console log (JVM + worker output)."""
        if not self.console_log.exists():
            return f"(no console log at {self.console_log})"
        tail = "\n".join(self._console_text().splitlines()[-lines:])
        return f"--- last {lines} lines of {self.console_log} ---\n{tail}"
