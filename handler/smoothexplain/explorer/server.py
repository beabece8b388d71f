"""The explorer's HTTP server: the page, its static files, and a small JSON API behind it.

    GET  /?token=T           spends the login token: a session cookie, then a redirect to /
    GET  /                   the page (a session needed, as for everything below)
    GET  /static/NAME        its script and style sheet, from the package
    GET  /api/models         the served models, TorchServe's REST address and key file path
    GET  /api/models/NAME    the form's description of one model (describe.py)
    GET  /api/samples        the sample photographs; /api/samples/NAME their bytes
    POST /api/explain        one explanation, proxied to TorchServe with its key (proxy.py)

Every request must name the explorer in exactly one Host header (guard.py), else 403 (400
for two), and its target must be a path (an absolute URL: 400); methods other than GET and
POST are 405; without a live session it is 401; a POST must come from the page's own Origin
(403) as JSON (415) with one ASCII Content-Length (411, 400; no Transfer-Encoding: 501) whose
bytes all arrive (400). Every answer, refusals included, carries the security headers; HTTP/0.9
is refused. A connection is dropped when it sends nothing for SOCKET_TIMEOUT seconds or has not
sent a whole request READ_SECONDS after it began one (slow clients), and at most
MAX_CONNECTIONS are served at once (the rest are closed at once). No CORS headers are ever
sent, and a strict Content-Security-Policy keeps the page to its own files. The request line is
never logged: it may hold a login token.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import socketserver
import ssl
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, HTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from ..protocol.errors import grpc_code_of_http
from ..protocol.images import image_format
from .describe import ModelFacts, describe
from .guard import allowed_hosts, host_allowed, origin_allowed
from .proxy import Upstream
from .samples import SAMPLES, sample_bytes, sample_files
from .sessions import COOKIE, Sessions, session_cookie

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_CONNECTIONS",
    "READ_SECONDS",
    "SOCKET_TIMEOUT",
    "ExplorerServer",
    "ExplorerSettings",
]

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 16 * 1024 * 1024  # a 10 MB photo in base64, and the options
# Seconds a connection may stay silent while the explorer reads from it (a slow-loris client
# holds a thread only this long); an explanation being computed is not reading.
SOCKET_TIMEOUT = 30.0
# Seconds from the start of a request (or of the wait for the next one on a kept-alive
# connection) until its headers and body must all have arrived: a client that drips bytes
# under SOCKET_TIMEOUT is cut here. Generous: a 16 MB body at 1 Mbit/s takes about 130 s.
READ_SECONDS = 300.0
MAX_CONNECTIONS = 64  # served at once; each holds a thread
_METHODS = ("GET", "POST")
_LENGTH = re.compile(r"[0-9]{1,9}")  # ASCII digits: str.isdigit() also takes '²'
_NO_BODY = object()  # _body's "refused, already answered" (JSON null is a body)
_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self' blob:; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)
_LOGIN_HELP = (
    "Open the explorer with the login link that `smoothexplain serve` printed (it ends in "
    "?token=...; the current one is also in the work directory's explorer_login file)."
)


@dataclass(frozen=True)
class ExplorerSettings:
    host: str
    port: int  # 0: a free port
    models: Mapping[str, ModelFacts]
    upstream_url: str  # TorchServe's REST inference API, e.g. http://127.0.0.1:8080
    key_file: Path | None  # TorchServe's key_file.json; None with token auth off
    tls: ssl.SSLContext | None = None  # server side: HTTPS
    login_file: Path | None = None  # kept holding the current login URL (mode 0600)
    samples: Callable[[str], bytes | None] = field(default=sample_bytes)


def _static(name: str) -> bytes | None:
    folder = resources.files(__package__ or "smoothexplain.explorer") / "static"
    if "/" in name or name.startswith(".") or name not in {e.name for e in folder.iterdir()}:
        return None  # only the names the folder holds: no path is ever built from a request
    entry = folder / name
    return entry.read_bytes() if entry.is_file() else None


def _page(title: str, text: str) -> bytes:
    return (
        f"<!doctype html><html lang=en><meta charset=utf-8><title>{title}</title>"
        f"<h1>{title}</h1><p>{text}</p></html>"
    ).encode()


class _Server(socketserver.ThreadingMixIn, HTTPServer):
    daemon_threads = True  # a slow explanation must not hold up shutdown
    request_queue_size = MAX_CONNECTIONS  # the listen backlog (the base class's is 5)
    explorer: ExplorerServer

    def server_activate(self) -> None:
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().server_activate()

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):  # full: closed at once, nothing held
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One line, not socketserver's traceback on stderr (a reset, plain HTTP to TLS)."""
        error = sys.exc_info()[1]
        log.info("explorer: a connection ended early: %r", error)


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = SOCKET_TIMEOUT

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: the request line may carry a login token."""

    def __getattr__(self, name: str) -> Any:
        """Every method (do_GET, do_HEAD, do_BREW...) goes through the same guard."""
        if name.startswith("do_"):
            return lambda: self.server.explorer.handle(self, name[3:])
        raise AttributeError(name)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The base class's own refusals (a bad request line, headers too long) as JSON with
        the security headers, not its HTML page."""
        if self.request_version == "HTTP/0.9":  # it writes no status line or headers for 0.9
            self.request_version = "HTTP/1.1"
        self.server.explorer.refuse(self, code, message or HTTPStatus(code).phrase)

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        if self.request_version == "HTTP/0.9":
            self.send_error(400, "HTTP/0.9 is not served: send HTTP/1.0 or HTTP/1.1")
            return False
        return True

    def handle_expect_100(self) -> bool:
        """No "100 Continue" before the checks: the body comes when the client stops waiting."""
        return True

    def handle_one_request(self) -> None:
        self._deadline = threading.Timer(READ_SECONDS, self._cut)
        self._deadline.daemon = True
        self._deadline.start()
        try:
            super().handle_one_request()
        finally:
            self._deadline.cancel()

    def request_read(self) -> None:
        """The whole request is in: what comes next (an explanation) has no read deadline."""
        self._deadline.cancel()

    def _cut(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):  # already closed
            self.connection.shutdown(socket.SHUT_RDWR)  # the blocked read returns


def _chunked(request: _Handler) -> bool:
    return "Transfer-Encoding" in request.headers


class ExplorerServer:
    """The explorer on `settings.host:settings.port`; `start()`, then `url` and `login_url`."""

    def __init__(self, settings: ExplorerSettings) -> None:
        self.settings = settings
        self.scheme = "https" if settings.tls else "http"
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._allowed: frozenset[str] = frozenset()
        self._upstream = Upstream(settings.upstream_url, settings.key_file)
        self.sessions: Sessions | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1]) if self._server else self.settings.port

    @property
    def url(self) -> str:
        host = self.settings.host
        shown = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
        shown = f"[{shown}]" if ":" in shown else shown
        return f"{self.scheme}://{shown}:{self.port}/"

    @property
    def login_url(self) -> str:
        assert self.sessions is not None, "start() first"
        return f"{self.url}?token={self.sessions.token}"

    def start(self) -> ExplorerServer:
        where = f"{self.settings.host}:{self.settings.port}"
        try:
            kind = _Server6 if ":" in self.settings.host else _Server
            server = kind((self.settings.host, self.settings.port), _Handler)
        except OSError as error:
            raise OSError(f"the explorer cannot listen on {where}: {error.strerror}") from None
        if self.settings.tls is not None:
            # The handshake runs in the request's thread: a silent client stalls nothing.
            server.socket = self.settings.tls.wrap_socket(
                server.socket, server_side=True, do_handshake_on_connect=False
            )
        server.explorer = self
        self._server = server
        self._allowed = allowed_hosts(self.settings.host, self.port)
        self.sessions = Sessions(on_token=self._write_login)
        self._thread = threading.Thread(target=server.serve_forever, name="explorer", daemon=True)
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
        if self.settings.login_file is not None:
            self.settings.login_file.unlink(missing_ok=True)

    def _write_login(self, token: str) -> None:
        path = self.settings.login_file
        if path is None:
            return
        partial = path.with_name(path.name + ".tmp")
        partial.unlink(missing_ok=True)
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as out:
            out.write(f"{self.url}?token={token}\n")
        partial.replace(path)

    # -- requests -----------------------------------------------------------------------------

    def handle(self, request: _Handler, method: str) -> None:
        try:
            self._route(request, method)
        except Exception as error:  # a defect: answered, logged without the request line
            log.error("explorer: %s failed: %r", method, error, exc_info=True)
            self._error(request, 500, f"the explorer failed: {type(error).__name__}")

    def refuse(self, request: _Handler, status: int, message: str) -> None:
        self._error(request, status, message)

    def _route(self, request: _Handler, method: str) -> None:
        hosts = request.headers.get_all("Host") or []
        if len(hosts) > 1:
            self._error(request, 400, "a request must carry one Host header, not several")
            return
        host = hosts[0] if hosts else None
        if method != "POST" and ("Content-Length" in request.headers or _chunked(request)):
            request.close_connection = True  # a body nobody reads is no next request
        if not host_allowed(host, self._allowed, self.scheme):
            names = ", ".join(sorted(self._allowed))
            self._error(request, 403, f"the Host header must name the explorer ({names})")
            return
        if not request.path.startswith("/") or request.path.startswith("//"):
            self._error(request, 400, "the request target must be a path on the explorer")
            return
        if method not in _METHODS:
            allow = {"Allow": ", ".join(_METHODS)}
            self._error(request, 405, f"the explorer answers GET and POST, not {method}", "", allow)
            return
        parts = urlsplit(request.path)
        token = parse_qs(parts.query).get("token", [""])[0]
        if method == "GET":
            request.request_read()
        if method == "GET" and parts.path == "/" and token:
            self._login(request, token)
            return
        if not self._has_session(request):
            self._refuse_anonymous(request, parts.path)
            return
        if method == "POST":
            self._post(request, parts.path, str(host))
        else:
            self._get(request, parts.path)

    def _has_session(self, request: _Handler) -> bool:
        cookie = SimpleCookie()
        try:
            cookie.load(request.headers.get("Cookie", ""))
        except CookieError:
            return False
        morsel = cookie.get(COOKIE)
        assert self.sessions is not None
        return self.sessions.valid(morsel.value if morsel else None)

    def _login(self, request: _Handler, token: str) -> None:
        assert self.sessions is not None
        session = self.sessions.redeem(token)
        if session is None:
            title = "This login link is spent or wrong"
            self._send(request, 403, "text/html", _page(title, _LOGIN_HELP))
            return
        headers = {"Set-Cookie": session_cookie(session, self.scheme == "https"), "Location": "/"}
        self._send(request, 303, "text/plain", b"logged in\n", headers)

    def _refuse_anonymous(self, request: _Handler, path: str) -> None:
        if path.startswith("/api/"):
            self._error(request, 401, "no explorer session: " + _LOGIN_HELP)
        else:
            self._send(request, 401, "text/html", _page("Log in to the explorer", _LOGIN_HELP))

    def _get(self, request: _Handler, path: str) -> None:
        models = self.settings.models
        if path == "/":
            self._send(request, 200, "text/html", _static("index.html") or b"")
        elif path.startswith("/static/"):
            name = unquote(path.removeprefix("/static/"))
            data, kind = _static(name), _TYPES.get(Path(name).suffix, "")
            if data is None or not kind:
                self._error(request, 404, f"no static file {name!r}")
            else:
                self._send(request, 200, kind, data)
        elif path == "/api/models":
            self._json(request, 200, self._server_facts())
        elif path.startswith("/api/models/"):
            name = unquote(path.removeprefix("/api/models/"))
            if name in models:
                self._json(request, 200, describe(name, models[name]))
            else:
                self._error(request, 404, f"no served model {name!r}", "model")
        elif path == "/api/samples":
            present = sample_files()
            listed = [vars(s) for s in SAMPLES if s.name in present]
            self._json(request, 200, {"samples": listed})
        elif path.startswith("/api/samples/"):
            self._sample(request, unquote(path.removeprefix("/api/samples/")))
        else:
            self._error(request, 404, f"nothing at {path}")

    def _server_facts(self) -> dict[str, object]:
        """The models, and what the page's curl and CLI lines need: the REST address and the
        key file's path (never a key)."""
        key_file = self.settings.key_file
        return {
            "models": sorted(self.settings.models),
            "rest": self.settings.upstream_url,
            "key_file": str(key_file) if key_file else "",
        }

    def _sample(self, request: _Handler, name: str) -> None:
        data = self.settings.samples(name)
        kind = image_format(data) if data else None
        if data is None or kind is None:
            self._error(request, 404, f"no sample photograph {name!r}", "sample")
            return
        self._send(request, 200, f"image/{kind.lower()}", data)

    def _post(self, request: _Handler, path: str, host: str) -> None:
        if not origin_allowed(request.headers.get("Origin"), host, self.scheme):
            self._error(request, 403, "a change must come from the explorer's own page (Origin)")
            return
        if path != "/api/explain":
            self._error(request, 404, f"nothing to POST at {path}")
            return
        kind = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if kind != "application/json":
            self._error(request, 415, "send the explanation request as application/json")
            return
        body = self._body(request)
        if body is _NO_BODY:
            return
        request.request_read()
        status, answer = self._upstream.explain(body, self.settings.models, self.settings.samples)
        self._json(request, status, answer)

    def _body(self, request: _Handler) -> object:
        """The JSON body, or _NO_BODY once a refusal has been sent."""
        lengths = request.headers.get_all("Content-Length") or []
        if _chunked(request):
            self._error(request, 501, "send the body with a Content-Length, not Transfer-Encoding")
            return _NO_BODY
        if not lengths:
            self._error(request, 411, "the body needs a Content-Length")
            return _NO_BODY
        if len(lengths) > 1 or not _LENGTH.fullmatch(lengths[0].strip()):
            self._error(request, 400, "the request must carry one decimal Content-Length")
            return _NO_BODY
        length = int(lengths[0])
        if length > MAX_BODY_BYTES:
            self._error(request, 413, f"the body must have a Content-Length <= {MAX_BODY_BYTES}")
            return _NO_BODY
        try:
            data = request.rfile.read(length)
        except OSError:  # the client went silent (SOCKET_TIMEOUT), away, or was cut
            request.close_connection = True
            return _NO_BODY
        if len(data) != length:
            self._error(request, 400, f"the body ended after {len(data)} of {length} bytes")
            return _NO_BODY
        try:
            body: object = json.loads(data)
        except RecursionError:
            self._error(request, 400, "the body's JSON is nested too deeply")
            return _NO_BODY
        except ValueError:
            self._error(request, 400, "the body is not JSON")
            return _NO_BODY
        return body

    # -- answers ------------------------------------------------------------------------------

    def _error(
        self,
        request: _Handler,
        status: int,
        message: str,
        field: str = "",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        request.close_connection = True  # a refused body may still be on the wire
        error = {"http_status": status, "grpc_code": grpc_code_of_http(status)}
        body = {"error": {**error, "message": message, "field": field}}
        self._json(request, status, body, headers)

    def _json(
        self,
        request: _Handler,
        status: int,
        body: object,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self._send(request, status, "application/json", json.dumps(body).encode(), headers)

    def _send(
        self,
        request: _Handler,
        status: int,
        kind: str,
        data: bytes,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        try:
            request.send_response(status, HTTPStatus(status).phrase)
            charset = "; charset=utf-8" if kind.startswith(("text/", "application/json")) else ""
            request.send_header("Content-Type", kind + charset)
            request.send_header("Content-Length", str(len(data)))
            request.send_header("Content-Security-Policy", _POLICY)
            request.send_header("X-Content-Type-Options", "nosniff")
            request.send_header("Referrer-Policy", "no-referrer")  # the token stays here
            request.send_header("Cache-Control", "no-store")
            for name, value in (headers or {}).items():
                request.send_header(name, value)
            request.end_headers()
            request.wfile.write(data)
        except OSError:  # the page gave up (an abandoned explanation): nobody to tell
            request.close_connection = True
