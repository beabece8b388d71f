"""The serve process's HTTP endpoint: one scrape target per server, and probes needing no token.

    GET /metrics   every worker's metrics merged (prometheus-client multiprocess files) plus the
                   server-wide ones (metrics.ServerCollector); TorchServe's ts_* metrics stay
                   on TorchServe's metrics port
    GET /healthz   200 while the TorchServe process group runs (liveness)
    GET /readyz    200 while TorchServe's /ping, called with the current inference key, says
                   Healthy and every model has a READY worker whose process is alive
                   (readiness); the key is re-read every time, so rotation is harmless. /ping
                   alone stays Healthy for a model whose worker TorchServe lost (watchdog.py)

With TorchServe's token authorization on, /ping needs the inference key, which Kubernetes
probes cannot send (it is generated at start and rotated); these two routes answer only
"ok"/"unavailable", the latter followed by the names of models without a live worker.
"""

from __future__ import annotations

import logging
import socketserver
import ssl
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.registry import Collector

__all__ = ["Exporter", "Probes", "TlsFiles"]

log = logging.getLogger(__name__)

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


@dataclass(frozen=True)
class TlsFiles:
    """PEM certificate (chain) and private key."""

    certificate: Path
    private_key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.certificate, self.private_key)
        return context


def _none() -> Sequence[str]:
    return ()


@dataclass(frozen=True)
class Probes:
    alive: Callable[[], bool]
    ready: Callable[[], bool]
    unserved: Callable[[], Sequence[str]] = _none  # models without a live worker


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a stuck scraper must not hold up shutdown


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes and probes every few seconds would drown the serve log."""


class Exporter:
    """`/metrics`, `/healthz` and `/readyz` on `host:port` (HTTPS when `tls` is given)."""

    def __init__(
        self,
        host: str,
        port: int,
        collectors: Iterable[Collector],
        probes: Probes,
        tls: TlsFiles | None = None,
    ) -> None:
        self.host, self.port, self.tls, self.probes = host, port, tls, probes
        self.registry = CollectorRegistry(auto_describe=False)
        for collector in collectors:
            self.registry.register(collector)
        self._metrics = make_wsgi_app(self.registry)
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    def start(self) -> Exporter:
        server = make_server(
            self.host, self.port, self._app, _ThreadingServer, handler_class=_QuietHandler
        )
        if self.tls is not None:
            # The handshake happens in the request thread, not in accept(): a client that
            # never speaks cannot stall the endpoint.
            server.socket = self.tls.server_context().wrap_socket(
                server.socket, server_side=True, do_handshake_on_connect=False
            )
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="exporter", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            body: Iterable[bytes] = self._metrics(environ, start_response)
            return body
        if path in ("/healthz", "/readyz"):
            text = self._liveness() if path == "/healthz" else self._readiness()
            ok = text == b"ok\n"
            start_response(
                "200 OK" if ok else "503 Service Unavailable",
                [("Content-Type", "text/plain"), ("Content-Length", str(len(text)))],
            )
            return [text]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]

    def _liveness(self) -> bytes:
        return b"ok\n" if _safely(self.probes.alive) else b"unavailable\n"

    def _readiness(self) -> bytes:
        try:
            unserved = list(self.probes.unserved())
        except Exception:  # TorchServe not up yet, or its management API not answering
            log.debug("worker check failed", exc_info=True)
            return b"unavailable\n"
        if unserved:
            return f"unavailable: no live worker for {', '.join(unserved)}\n".encode()
        return b"ok\n" if _safely(self.probes.ready) else b"unavailable\n"


def _safely(check: Callable[[], bool]) -> bool:
    try:
        return bool(check())
    except Exception:
        log.debug("probe failed", exc_info=True)
        return False
