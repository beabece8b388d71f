"""Start and stop isolated TorchServe 0.12.0 instances (`smoothexplain serve`, `make run`, tests).

``TorchServeInstance`` launches ``torchserve --start --foreground`` in its
own process group with

* a per-instance ``config.properties`` derived from ``ops/config.properties`` (token auth
  on, model API off, everything on 127.0.0.1) with freshly picked free ports and paths inside
  the instance's work directory;
* ``TEMP``/``TMPDIR`` (worker Unix sockets and the launcher's pid file),
  ``LOG_LOCATION``/``METRICS_LOCATION`` (log4j files) and the working directory (TorchServe
  writes ``key_file.json`` into the JVM's ``user.dir``) all inside the work directory, so
  several instances never share state;

waits until every startup model has a READY worker, exposes URLs, gRPC targets and the
tokens from ``key_file.json``, and ``stop()`` terminates the whole process group (launcher,
JVM, Python workers), escalating from SIGTERM to SIGKILL.

The parts live in their own modules: ``ts_config`` (config.properties, environment, command),
``process_group`` (launching and stopping the group), ``sockets`` (ports, /proc socket scan),
``management`` (management API calls) and ``protocol.keyfile`` (key_file.json); this class
composes them. Typical use::

    with TorchServeInstance(store, {"echo": "echo.mar"}, tmp_path / "ts") as ts:
        requests.post(f"{ts.inference_url}/predictions/echo",
                      headers=ts.inference_headers(), data=b"...")
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from ..protocol.errors import LOAD_REFUSED_MARK
from ..protocol.keyfile import KeyFile, KeyFileError, TokenKind, bearer, load_key_file
from . import management
from .keyrotation import KeyKind
from .process_group import ProcessGroup, TorchServeError, read_log
from .process_group import group_pids as _group_pids
from .sockets import (
    Address,
    Ports,
    free_port,
    free_ports,
    is_loopback,
    listening_sockets,
)
from .ts_config import (
    DEFAULT_BASE_CONFIG,
    SEQUENCE_ID_HEADER,
    SEQUENCE_ID_KEY,
    Endpoints,
    check_socket_dir,
    derive_config,
    instance_values,
    normalise_models,
    server_env,
    token_auth_enabled,
    torchserve_command,
)

__all__ = [
    "DEFAULT_BASE_CONFIG",
    "SEQUENCE_ID_HEADER",
    "SEQUENCE_ID_KEY",
    "Ports",
    "TokenKind",
    "TorchServeError",
    "TorchServeInstance",
    "derive_config",
    "free_port",
    "free_ports",
    "is_loopback",
    "load_refusals",
]

_KEY_FILE_READS = 20  # TorchServe rewrites the file on renewal: retry a torn read for ~1 s
_KEY_FILE_PAUSE_S = 0.05
_READY_POLL_S = 0.25
_LOG_TAIL_LINES = 60


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def load_refusals(logs: Iterable[str]) -> dict[str, str]:
    """Model name → the reason, from the worker-log lines `ts_handler` marks (LOAD_REFUSED_MARK)."""
    refused: dict[str, str] = {}
    for text in logs:
        for line in text.splitlines():
            _, mark, rest = line.partition(LOAD_REFUSED_MARK)
            name, colon, why = rest.strip().partition(": ")
            if mark and colon:
                refused[name] = why.strip()
    return refused


class TorchServeInstance:
    """One isolated TorchServe process group.

    Args:
        model_store: directory holding the ``.mar`` files (passed as ``--model-store``).
        models: startup models, either ``{"name": "file.mar"}`` or ``["name=file.mar", ...]``
            (the ``--models`` form). Names must be unique.
        workdir: directory for this instance's config, logs, temp dir and key file; created
            if missing. Keep it short: worker Unix sockets live in ``<workdir>/tmp``.
        base_config: properties file to derive from (default ``ops/config.properties``).
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
        self.models = normalise_models(models)
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
        self._log_starts: dict[Path, int] = {}  # where this launch's lines begin, per log file

        self._group: ProcessGroup | None = None  # the running group; None once stopped
        self._pgid: int | None = None  # the last group's id, kept after stop()

    # ------------------------------------------------------------------ configuration
    @property
    def endpoints(self) -> Endpoints:
        return Endpoints(self.host, self.ports)

    @property
    def inference_url(self) -> str:
        return self.endpoints.inference_url

    @property
    def management_url(self) -> str:
        return self.endpoints.management_url

    @property
    def metrics_url(self) -> str:
        """Base URL of the metrics endpoint (scrape ``f"{metrics_url}/metrics"``)."""
        return self.endpoints.metrics_url

    @property
    def grpc_target(self) -> str:
        """``host:port`` of the gRPC inference service, for ``grpc.insecure_channel``."""
        return self.endpoints.grpc_target

    @property
    def grpc_management_target(self) -> str:
        return self.endpoints.grpc_management_target

    @property
    def token_auth(self) -> bool:
        """False when the config turns TorchServe's token authorization off (no key file)."""
        return token_auth_enabled(self.base_config, self.config_overrides)

    def config_values(self) -> dict[str, str]:
        """The per-instance settings written on top of the base config."""
        return instance_values(self.endpoints, self.model_store, self.config_overrides)

    def write_config(self) -> Path:
        text = derive_config(
            self.base_config.read_text(encoding="utf-8"),
            self.config_values(),
            header=f"Generated by smoothexplain.ops.launcher from {self.base_config}",
        )
        self.config_path.write_text(text, encoding="utf-8")
        return self.config_path

    def server_env(self) -> dict[str, str]:
        return server_env(self.temp_dir, self.log_dir, self.extra_env)

    def command(self) -> list[str]:
        return torchserve_command(self.model_store, self.config_path, self.models)

    # ------------------------------------------------------------------ lifecycle
    def start(self, *, port_retries: int = 2) -> Self:
        """Launch the server and block until every startup model has a READY worker.

        Free ports are picked before launch, so another process may grab one in between; if
        TorchServe then dies with "Address already in use", new ports are picked and the
        launch is retried up to ``port_retries`` times. Any other failure stops the process
        group and raises :class:`TorchServeError` including the tail of the console log.
        """
        if self._group is not None:
            raise TorchServeError("instance already started")
        self._prepare()
        started = time.monotonic()
        for attempt in range(port_retries + 1):
            log_offset = self.console_log.stat().st_size if self.console_log.exists() else 0
            self._launch()
            try:
                self.wait_ready(self.startup_timeout)
            except TorchServeError:
                port_clash = not self.is_running() and (
                    "Address already in use" in read_log(self.console_log, log_offset)
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

    def _prepare(self) -> None:
        """Check the model store and archives, and create the work directories."""
        if not self.model_store.is_dir():
            raise TorchServeError(f"model store {self.model_store} is not a directory")
        for archive in self.models.values():
            if not (self.model_store / archive).exists():
                raise TorchServeError(f"{archive} not found in {self.model_store}")
        check_socket_dir(self.workdir, self.temp_dir)
        for d in (self.workdir, self.temp_dir, self.log_dir):
            d.mkdir(parents=True, exist_ok=True)

    def _launch(self) -> None:
        self.key_file.unlink(missing_ok=True)
        self._log_starts = {path: _size(path) for path in self.log_files()}  # older runs' lines
        self.write_config()
        self._group = ProcessGroup(
            self.command(), cwd=self.workdir, env=self.server_env(), log=self.console_log
        )
        self._pgid = self._group.pgid

    def wait_ready(self, timeout: float) -> None:
        """Poll the management API until every startup model has a READY worker."""
        deadline = time.monotonic() + timeout
        pending = set(self.models)
        last_error = "no attempt yet"
        while True:
            self._check_alive()
            self._check_refusals(pending)
            if self.key_file.is_file() or not self.token_auth:
                last_error = self._poll_models(pending) or last_error
                if not pending:
                    return
            else:
                last_error = f"{self.key_file} not written yet"
            if time.monotonic() >= deadline:
                raise TorchServeError(
                    f"TorchServe not ready after {timeout:.0f}s (models pending: "
                    f"{sorted(pending)}; last: {last_error})\n{self.log_tail()}"
                )
            time.sleep(_READY_POLL_S)

    def _check_refusals(self, pending: set[str]) -> None:
        """Raise at once when a pending model's worker logged that it can never load: TorchServe
        would restart it until the startup timeout, logging the same error each time."""
        starts = self._log_starts
        refused = load_refusals(read_log(path, starts.get(path, 0)) for path in self.log_files())
        mine = {name: why for name, why in refused.items() if name in pending}
        if mine:
            lines = "\n".join(f"  {name}: {why}" for name, why in sorted(mine.items()))
            raise TorchServeError(f"model(s) refused at load (fix the archive):\n{lines}")

    def _poll_models(self, pending: set[str]) -> str:
        """Drop the models with a READY worker from ``pending``; the last problem seen."""
        problem = ""
        for name in sorted(pending):
            try:
                description = self.describe_model(name)
            except (OSError, ValueError, TorchServeError) as exc:
                problem = f"{name}: {exc}"
                continue
            if management.has_ready_worker(description):
                pending.discard(name)
            else:
                problem = f"{name}: workers {description.get('workers', [])}"
        return problem

    def _check_alive(self) -> None:
        if self._group is None:
            raise TorchServeError("instance not started")
        rc = self._group.poll()
        if rc is not None:
            raise TorchServeError(f"TorchServe exited early with code {rc}\n{self.log_tail()}")

    def is_running(self) -> bool:
        return self._group is not None and self._group.poll() is None

    @property
    def pid(self) -> int | None:
        """PID of the ``torchserve`` launcher (also the process-group id)."""
        return self._pgid

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the instance and everything in its process group; wait until all are gone
        (SIGTERM to the JVM, then to the group, SIGKILL at ``timeout``: see
        :meth:`ProcessGroup.stop`). Safe to call repeatedly and after a failed start()."""
        group, self._group = self._group, None
        if group is not None:
            group.stop(timeout)

    @staticmethod
    def group_pids(pgid: int) -> list[int]:
        """Live (non-zombie) processes in process group ``pgid`` (Linux ``/proc`` scan)."""
        return _group_pids(pgid)

    def process_pids(self) -> list[int]:
        """All live processes of this instance (launcher, JVM, workers)."""
        return _group_pids(self._pgid) if self._pgid is not None else []

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def listening_sockets(self) -> list[tuple[Address, int]]:
        """``(address, port)`` of every TCP socket in LISTEN state owned by this instance."""
        return listening_sockets(self.process_pids())

    # ------------------------------------------------------------------ tokens / API
    def _load_keys(self) -> KeyFile:
        for _ in range(_KEY_FILE_READS):
            try:
                keys = load_key_file(self.key_file)
            except KeyFileError:
                keys = None
            if keys is not None and keys.document is not None:
                return keys
            time.sleep(_KEY_FILE_PAUSE_S)
        raise TorchServeError(f"cannot read {self.key_file}")

    def read_keys(self) -> dict[str, Any]:
        """Parse ``key_file.json``: ``{"management": {"key", "expiration time"},
        "inference": {"key", "expiration time"}, "API": {"key"}}``. Re-read on every call
        because TorchServe rewrites it when a key is rotated through the token API."""
        return dict(self._load_keys().document or {})

    def token(self, kind: TokenKind) -> str:
        try:
            return self._load_keys().key(kind)
        except KeyFileError:
            raise TorchServeError(f"no {kind!r} key in {self.key_file}") from None

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
        return bearer(self.inference_token) if self.token_auth else {}

    def management_headers(self) -> dict[str, str]:
        return bearer(self.management_token) if self.token_auth else {}

    def grpc_metadata(self) -> tuple[tuple[str, str], ...]:
        """gRPC call metadata carrying the inference token."""
        return (("authorization", f"Bearer {self.inference_token}"),)

    def renew_key(self, kind: KeyKind) -> None:
        """A fresh `kind` key and expiry in key_file.json, through TorchServe's token API."""
        management.renew_key(self.management_url, kind, self.api_token)

    def describe_model(self, name: str) -> dict[str, Any]:
        """``GET /models/{name}`` on the management API (first entry of the reply)."""
        return management.describe_model(self.management_url, name, self.management_headers())

    def scale_workers(self, name: str, min_worker: int, max_worker: int) -> None:
        """``PUT /models/{name}`` on the management API, waiting until the workers are there."""
        headers = self.management_headers()
        management.scale_workers(
            self.management_url, name, min_worker, max_worker, headers, self.startup_timeout
        )

    def worker_pids(self, model: str | None = None) -> list[int]:
        """PIDs of the Python backend workers (from the management API)."""
        names = [model] if model else list(self.models)
        return sorted(pid for n in names for pid in management.worker_pids(self.describe_model(n)))

    # ------------------------------------------------------------------ diagnostics
    def log_files(self) -> Iterator[Path]:
        yield self.console_log
        if self.log_dir.is_dir():
            yield from sorted(self.log_dir.glob("*.log"))

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of the console log (JVM + worker output)."""
        if not self.console_log.exists():
            return f"(no console log at {self.console_log})"
        tail = "\n".join(read_log(self.console_log).splitlines()[-lines:])
        return f"--- last {lines} lines of {self.console_log} ---\n{tail}"
