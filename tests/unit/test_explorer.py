"""The explorer's logic without a browser or TorchServe: tokens and sessions, the Host and Origin
checks, the model description, and the HTTP server in front of a fake inference API."""

from __future__ import annotations

import base64
import http.client
import io
import json
import socket
import stat
import threading
import time
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml
from PIL import Image

from smoothexplain.client.cli import build_parser
from smoothexplain.explorer import ExplorerServer, ExplorerSettings, ModelFacts, describe
from smoothexplain.explorer import server as server_module
from smoothexplain.explorer.guard import allowed_hosts, host_allowed, origin_allowed
from smoothexplain.explorer.server import MAX_CONNECTIONS, SOCKET_TIMEOUT, _Handler
from smoothexplain.explorer.sessions import MAX_SESSIONS, SESSION_SECONDS, Sessions
from smoothexplain.ops.serve import _explorer_host, _model_facts
from smoothexplain.protocol.options import OPTIONS

# -- tokens and sessions ---------------------------------------------------------------------


def test_a_login_token_is_spent_once_and_replaced() -> None:
    minted: list[str] = []
    sessions = Sessions(on_token=minted.append)
    first = sessions.token
    assert minted == [first] and len(first) >= 40
    session = sessions.redeem(first)
    assert session and sessions.valid(session)
    assert sessions.redeem(first) is None, "a spent token must not log in again"
    assert sessions.token != first and minted == [first, sessions.token]
    assert sessions.redeem("") is None and sessions.redeem(first[:-1] + "x") is None


def test_sessions_expire_unused_and_are_bounded() -> None:
    now = [0.0]
    sessions = Sessions(clock=lambda: now[0])
    kept = sessions.redeem(sessions.token)
    assert kept is not None
    now[0] = SESSION_SECONDS - 1
    assert sessions.valid(kept)  # used: it stays live
    now[0] += SESSION_SECONDS + 1
    assert not sessions.valid(kept)
    assert not sessions.valid(None) and not sessions.valid("made-up")
    first = sessions.redeem(sessions.token)
    for _ in range(MAX_SESSIONS):
        now[0] += 1
        sessions.redeem(sessions.token)
    assert not sessions.valid(first), "the oldest session goes when too many are open"


# -- Host and Origin -------------------------------------------------------------------------


def test_only_the_explorer_s_own_names_pass_the_host_check() -> None:
    loopback = allowed_hosts("127.0.0.1", 8084)
    assert loopback == {"127.0.0.1:8084", "localhost:8084", "[::1]:8084"}
    assert host_allowed("127.0.0.1:8084", loopback, "http")
    assert host_allowed("LOCALHOST:8084", loopback, "http")
    assert not host_allowed("attacker.example:8084", loopback, "http")  # DNS rebinding
    assert not host_allowed("127.0.0.1:8085", loopback, "http")
    assert not host_allowed("127.0.0.1", loopback, "http")  # port 80 is not ours
    assert not host_allowed(None, loopback, "http") and not host_allowed("", loopback, "http")
    wide = allowed_hosts("0.0.0.0", 443, machine_names=["box", "box.lan"])
    assert {"box:443", "box.lan:443", "127.0.0.1:443"} <= wide
    assert host_allowed("box.lan", wide, "https")  # a left-out port is the scheme's
    assert "localhost:9000" not in allowed_hosts("10.0.0.5", 9000, machine_names=[])


def test_a_change_must_come_from_the_page_s_own_origin() -> None:
    assert origin_allowed("http://127.0.0.1:8084", "127.0.0.1:8084", "http")
    assert not origin_allowed(None, "127.0.0.1:8084", "http")
    assert not origin_allowed("null", "127.0.0.1:8084", "http")
    assert not origin_allowed("http://evil.example", "127.0.0.1:8084", "http")
    assert not origin_allowed("https://127.0.0.1:8084", "127.0.0.1:8084", "http")
    assert not origin_allowed("http://localhost:8084", "127.0.0.1:8084", "http")
    assert origin_allowed("https://box", "box:443", "https")


# -- the model description -------------------------------------------------------------------


def test_the_description_is_the_options_table_with_the_model_s_defaults_and_limits() -> None:
    facts = ModelFacts(
        defaults={"nt_samples": 16, "noise": "adaptive"},
        top_k=3,
        limits={"max_nt_samples": 100, "max_n_steps": 40, "max_top_k": 10},
    )
    found = describe("lite", facts)
    options = {o["name"]: o for o in found["options"]}
    wire = {o.name for o in OPTIONS if o.proto} - {"encoding"}
    assert set(options) == wire
    assert options["nt_samples"]["default"] == 16 and options["nt_samples"]["high"] == 100
    assert options["nt_samples"]["limit"] == "max_nt_samples"
    assert options["n_steps"]["high"] == 40 and options["n_steps"]["ig_only"]
    assert options["noise"]["default"] == "adaptive"
    assert options["method"]["proto_choices"][0] == "METHOD_GRADIENT"
    assert options["sigma"]["high"] == 10.0 and options["confidence"]["open_high"]
    assert options["seed"]["default"] is None and options["seed"]["flag"] == "--seed"
    assert found["top_k"] == {"default": 3, "high": 10}
    assert options["layer"]["kind"] == "str" and options["layer"]["cam_only"]
    assert options["cam_resolution"]["proto_choices"] == [
        "CAM_RESOLUTION_INPUT",
        "CAM_RESOLUTION_LAYER",
    ]
    assert "grad_cam_plus_plus" in options["method"]["cam_methods"]
    json.dumps(found)  # what the endpoint sends


def test_model_facts_come_from_the_archive_s_model_config(tmp_path: Path) -> None:
    config = {
        "minWorkers": 1,
        "smoothexplain": {
            "format": "torchscript",
            "defaults": {"nt_samples": 8, "top_k": 2},
            "limits": {"max_nt_samples": 64},
            "preprocess": {"size": 32, "resize": 40, "mean": [0.5], "std": [0.5]},
        },
    }
    archive = tmp_path / "m.mar"
    with zipfile.ZipFile(archive, "w") as mar:
        mar.writestr("model-config.yaml", yaml.safe_dump(config))
    facts = _model_facts(archive)
    assert facts.defaults["nt_samples"] == 8 and facts.top_k == 2
    assert facts.limits["max_nt_samples"] == 64 and (facts.size, facts.resize) == (32, 40)
    assert _model_facts(tmp_path / "missing.mar") == ModelFacts()


# -- serve's flags ---------------------------------------------------------------------------


def _serve(*flags: str) -> Any:
    return build_parser().parse_args(["serve", *flags])


def test_the_explorer_flags_and_their_defaults() -> None:
    args = _serve()
    assert (args.explorer, args.explorer_port, args.explorer_host) == (True, 8084, None)
    assert _explorer_host(args, None) == "127.0.0.1"
    assert _explorer_host(_serve("--host", "::1"), None) == "::1"
    assert _serve("--explorer-port", "0").explorer_port == 0
    assert _serve("--no-explorer").explorer is False


def test_the_explorer_refuses_to_listen_beyond_loopback_without_tls() -> None:
    with pytest.raises(SystemExit, match="without TLS"):
        _explorer_host(_serve("--host", "0.0.0.0"), None)
    with pytest.raises(SystemExit, match="without TLS"):
        _explorer_host(_serve("--explorer-host", "192.0.2.7"), None)
    # The API on every interface, the explorer kept on loopback; or no explorer at all.
    args = _serve("--host", "0.0.0.0", "--explorer-host", "127.0.0.1")
    assert _explorer_host(args, None) == "127.0.0.1"
    assert _explorer_host(_serve("--host", "0.0.0.0", "--no-explorer"), None) == "0.0.0.0"


# -- the server, in front of a fake inference API --------------------------------------------


class _FakeTorchServe(BaseHTTPRequestHandler):
    """Answers /explanations/NAME like our handler: the request echoed back as its options."""

    seen: ClassVar[list[tuple[dict[str, str], dict[str, Any]]]] = []

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.seen.append((dict(self.headers), body))
        if body.get("options", {}).get("nt_samples", 0) > 500:
            status, answer = 400, {"error": {"http_status": 400, "field": "options.nt_samples"}}
        else:
            status = 200
            answer = {"top_k": [{"index": 1, "label": "one", "probability": 0.9}], "target": 1}
            answer |= {"options": body["options"], "crop": {"resize": 16, "size": 8}}
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (20, 16), (200, 10, 10)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), _FakeTorchServe)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def explorer(upstream: str, tmp_path: Path) -> Iterator[ExplorerServer]:
    key_file = tmp_path / "key_file.json"
    key_file.write_text(json.dumps({"inference": {"key": "k-123"}}))
    settings = ExplorerSettings(
        host="127.0.0.1",
        port=0,
        models={"lite": ModelFacts(limits={"max_nt_samples": 500})},
        upstream_url=upstream,
        key_file=key_file,
        login_file=tmp_path / "explorer_login",
        samples=lambda name: _png() if name == "cat" else None,
    )
    server = ExplorerServer(settings).start()
    yield server
    server.stop()


def _call(
    server: ExplorerServer,
    method: str,
    path: str,
    *,
    host: str | None = None,
    headers: dict[str, str] | None = None,
    body: object = None,
) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    sent = {"Host": host or f"127.0.0.1:{server.port}", **(headers or {})}
    data = None if body is None else json.dumps(body).encode()
    connection.request(method, path, body=data, headers=sent)
    reply = connection.getresponse()
    answer = reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read()
    connection.close()
    return answer


def _login(server: ExplorerServer) -> dict[str, str]:
    status, headers, _ = _call(server, "GET", f"/?token={server.sessions.token}")  # type: ignore[union-attr]
    assert status == 303 and headers["location"] == "/"
    return {"Cookie": headers["set-cookie"].split(";")[0]}


def _post(server: ExplorerServer, cookie: dict[str, str], body: object, **more: str) -> Any:
    origin = {"Origin": f"http://127.0.0.1:{server.port}", "Content-Type": "application/json"}
    return _call(server, "POST", "/api/explain", headers={**cookie, **origin, **more}, body=body)


def test_nothing_is_served_without_a_session(explorer: ExplorerServer) -> None:
    status, headers, page = _call(explorer, "GET", "/")
    assert (
        status == 401 and b"login link" in page and headers["content-type"].startswith("text/html")
    )
    status, _, body = _call(explorer, "GET", "/api/models")
    assert status == 401 and "no explorer session" in json.loads(body)["error"]["message"]
    assert _call(explorer, "GET", "/static/explorer.js")[0] == 401
    assert _call(explorer, "GET", "/?token=wrong")[0] == 403


def test_a_foreign_host_header_is_refused_before_anything_else(explorer: ExplorerServer) -> None:
    token = explorer.sessions.token  # type: ignore[union-attr]
    status, _, body = _call(explorer, "GET", f"/?token={token}", host="rebind.example:80")
    assert status == 403 and "Host" in json.loads(body)["error"]["message"]
    assert explorer.sessions.token == token  # type: ignore[union-attr]  # not spent


def test_the_login_sets_a_strict_http_only_cookie_and_burns_the_token(
    explorer: ExplorerServer, tmp_path: Path
) -> None:
    login = tmp_path / "explorer_login"
    assert stat.S_IMODE(login.stat().st_mode) == 0o600
    assert login.read_text().strip() == explorer.login_url
    token = explorer.sessions.token  # type: ignore[union-attr]
    status, headers, _ = _call(explorer, "GET", f"/?token={token}")
    cookie = headers["set-cookie"]
    assert status == 303 and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert "Secure" not in cookie  # plain HTTP on loopback
    assert _call(explorer, "GET", f"/?token={token}")[0] == 403
    assert token not in login.read_text() and explorer.login_url in login.read_text()
    status, headers, page = _call(explorer, "GET", "/", headers={"Cookie": cookie.split(";")[0]})
    assert status == 200 and b"explorer.js" in page
    assert "default-src 'none'" in headers["content-security-policy"]
    assert "access-control-allow-origin" not in headers


def test_the_api_lists_models_and_describes_them(explorer: ExplorerServer) -> None:
    cookie = _login(explorer)
    status, _, body = _call(explorer, "GET", "/api/models", headers=cookie)
    found = json.loads(body)
    assert status == 200 and found["models"] == ["lite"]
    assert found["key_file"].endswith("key_file.json") and "k-123" not in body.decode()
    status, _, body = _call(explorer, "GET", "/api/models/lite", headers=cookie)
    assert status == 200 and json.loads(body)["model"] == "lite"
    status, _, body = _call(explorer, "GET", "/api/models/nope", headers=cookie)
    assert status == 404 and json.loads(body)["error"]["field"] == "model"
    assert _call(explorer, "GET", "/static/../server.py", headers=cookie)[0] == 404


def test_changes_need_the_page_s_origin_and_json(explorer: ExplorerServer) -> None:
    cookie = _login(explorer)
    body = {"model": "lite", "sample": "cat"}
    assert _post(explorer, cookie, body, Origin="http://evil.example")[0] == 403
    no_origin = {**cookie, "Content-Type": "application/json"}
    status = _call(explorer, "POST", "/api/explain", headers=no_origin, body=body)[0]
    assert status == 403
    assert _post(explorer, cookie, body, **{"Content-Type": "text/plain"})[0] == 415
    assert _post(explorer, {}, body)[0] == 401


def test_an_explanation_is_proxied_with_the_key_and_a_deadline(explorer: ExplorerServer) -> None:
    cookie = _login(explorer)
    _FakeTorchServe.seen.clear()
    options = {"nt_samples": 8, "noise": "adaptive", "seed": "9223372036854775807"}
    status, _, body = _post(
        explorer, cookie, {"model": "lite", "sample": "cat", "options": options}
    )
    answer = json.loads(body)
    assert status == 200, answer
    ((headers, sent),) = _FakeTorchServe.seen
    assert headers["Authorization"] == "Bearer k-123"
    assert sent["explain"] and base64.b64decode(sent["input"]["image"]) == _png()
    assert sent["options"]["noise"] == "NOISE_ADAPTIVE"
    assert sent["options"]["seed"] == "9223372036854775807"  # every bit of the seed
    assert sent["options"]["encoding"] == "ENCODING_FLOAT32" and int(sent["deadline_unix_ms"]) > 0
    view = Image.open(io.BytesIO(base64.b64decode(answer["view"]["image_png"])))
    assert view.size == (8, 8)  # the photo as the model saw it: the answer's crop


def test_field_errors_name_their_field(explorer: ExplorerServer) -> None:
    cookie = _login(explorer)
    _FakeTorchServe.seen.clear()
    for options, field in (
        ({"nt_samples": 0}, "options.nt_samples"),
        ({"method": "magic"}, "options.method"),
        ({"encoding": "png"}, "options"),
    ):
        status, _, body = _post(
            explorer, cookie, {"model": "lite", "sample": "cat", "options": options}
        )
        assert status == 400 and json.loads(body)["error"]["field"] == field, body
    assert not _FakeTorchServe.seen, "refused before any call to TorchServe"
    status, _, body = _post(explorer, cookie, {"model": "lite", "sample": "dog"})
    assert status == 400 and json.loads(body)["error"]["field"] == "sample"
    # A server limit is the handler's to judge: its answer comes back as it is.
    over = {"model": "lite", "sample": "cat", "options": {"nt_samples": 501}}
    status, _, body = _post(explorer, cookie, over)
    assert status == 400 and json.loads(body)["error"]["field"] == "options.nt_samples"


def _raw(server: ExplorerServer, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send `request` as it is, bytes and all, and read the answer up to the close."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as connection:
        connection.sendall(request)
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    pairs = (line.split(": ", 1) for line in lines[1:])
    headers = {name.lower(): value for name, value in pairs}
    return int(lines[0].split()[1]), headers, body


def test_every_method_passes_the_guard_and_only_get_and_post_are_answered(
    explorer: ExplorerServer,
) -> None:
    for method in ("HEAD", "OPTIONS", "PUT", "DELETE", "PATCH", "BREW"):
        here = f"{method} / HTTP/1.1\r\nHost: 127.0.0.1:{explorer.port}\r\n\r\n"
        status, headers, _ = _raw(explorer, here.encode())
        assert status == 405 and headers["allow"] == "GET, POST", method
        assert "default-src 'none'" in headers["content-security-policy"]
        foreign = f"{method} / HTTP/1.1\r\nHost: rebind.example\r\n\r\n".encode()
        assert _raw(explorer, foreign)[0] == 403, method  # the Host check comes first
    too_long = b"GET / HTTP/1.1\r\nX-Filler: " + b"a" * 70_000 + b"\r\n\r\n"
    status, headers, body = _raw(explorer, too_long)  # refused by http.server itself
    assert 400 <= status < 500 and json.loads(body)["error"]["http_status"] == status
    assert headers["x-content-type-options"] == "nosniff"


def test_two_host_headers_or_an_absolute_target_are_refused(explorer: ExplorerServer) -> None:
    cookie = _login(explorer)["Cookie"]
    mine = f"Host: 127.0.0.1:{explorer.port}\r\n"
    twice = f"GET /api/models HTTP/1.1\r\n{mine}Host: rebind.example\r\nCookie: {cookie}\r\n\r\n"
    status, _, body = _raw(explorer, twice.encode())
    assert status == 400 and "one Host header" in json.loads(body)["error"]["message"]
    for target in ("http://rebind.example/api/models", "https://127.0.0.1/api/models"):
        absolute = f"GET {target} HTTP/1.1\r\n{mine}Cookie: {cookie}\r\n\r\n"
        status, _, body = _raw(explorer, absolute.encode())
        assert status == 400 and "a path" in json.loads(body)["error"]["message"], target
    plain = f"GET /api/models HTTP/1.1\r\n{mine}Cookie: {cookie}\r\nConnection: close\r\n\r\n"
    assert _raw(explorer, plain.encode())[0] == 200


def test_deeply_nested_json_is_a_400_and_the_explorer_stays_up(explorer: ExplorerServer) -> None:
    cookie = _login(explorer)
    deep = "[" * 100_000 + "]" * 100_000
    origin = {"Origin": f"http://127.0.0.1:{explorer.port}", "Content-Type": "application/json"}
    connection = http.client.HTTPConnection("127.0.0.1", explorer.port, timeout=10)
    here = {"Host": f"127.0.0.1:{explorer.port}", **cookie, **origin}
    connection.request("POST", "/api/explain", body=deep.encode(), headers=here)
    reply = connection.getresponse()
    status, body = reply.status, json.loads(reply.read())
    connection.close()
    assert status == 400 and "nested too deeply" in body["error"]["message"]
    assert _call(explorer, "GET", "/api/models", headers=cookie)[0] == 200


def test_an_unexpected_failure_is_a_500_answer_not_a_dropped_connection(
    explorer: ExplorerServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    cookie = _login(explorer)

    def broken(*_: object) -> None:
        raise KeyError("defect")

    monkeypatch.setattr(explorer._upstream, "explain", broken)
    status, _, body = _post(explorer, cookie, {"model": "lite", "sample": "cat"})
    assert status == 500 and "KeyError" in json.loads(body)["error"]["message"]
    assert _call(explorer, "GET", "/api/models", headers=cookie)[0] == 200


def test_a_silent_client_is_dropped_after_the_socket_timeout(
    explorer: ExplorerServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_Handler, "timeout", 0.5)
    with socket.create_connection(("127.0.0.1", explorer.port), timeout=10) as connection:
        connection.sendall(b"GET / HTTP/1.1\r\nHost: 127.0")  # and then nothing
        started = time.monotonic()
        assert connection.recv(1024) == b""  # closed by the explorer, no answer
        assert time.monotonic() - started < 5
    assert SOCKET_TIMEOUT >= 10  # the shipped value gives a slow network its time


def _posted(server: ExplorerServer, cookie: dict[str, str], head: str, body: bytes) -> Any:
    """A raw POST /api/explain from the page, with `head` as extra header lines."""
    origin = f"Origin: http://127.0.0.1:{server.port}\r\nContent-Type: application/json\r\n"
    here = f"Host: 127.0.0.1:{server.port}\r\nCookie: {cookie['Cookie']}\r\n{origin}"
    request = f"POST /api/explain HTTP/1.1\r\n{here}{head}Connection: close\r\n\r\n"
    return _raw(server, request.encode("latin-1") + body)


def test_bodies_are_framed_by_one_ascii_content_length_that_all_arrives(
    explorer: ExplorerServer,
) -> None:
    cookie = _login(explorer)
    good = json.dumps({"model": "lite", "sample": "cat"}).encode()
    for head, body, status in (
        ("Content-Length: 4\r\n", b"null", 400),  # JSON null is a body, and no object
        ("Content-Length: \xb2\r\n", b"{}", 400),  # '²' passes str.isdigit()
        (f"Content-Length: {len(good)}\r\nContent-Length: 5\r\n", good, 400),
        (f"Transfer-Encoding: chunked\r\nContent-Length: {len(good)}\r\n", good, 501),
        ("", good, 411),
    ):
        got, headers, answer = _posted(explorer, cookie, head, body)
        assert got == status and json.loads(answer)["error"]["http_status"] == status, head
        assert "default-src 'none'" in headers["content-security-policy"]
    with socket.create_connection(("127.0.0.1", explorer.port), timeout=10) as connection:
        origin = f"Origin: http://127.0.0.1:{explorer.port}\r\nContent-Type: application/json"
        head = f"Host: 127.0.0.1:{explorer.port}\r\nCookie: {cookie['Cookie']}\r\n{origin}"
        connection.sendall(
            f"POST /api/explain HTTP/1.1\r\n{head}\r\nContent-Length: 100\r\n\r\n".encode() + good
        )
        connection.shutdown(socket.SHUT_WR)  # 31 of 100 bytes, then the end
        answer = b""
        while chunk := connection.recv(65536):  # the headers and the body may come apart
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400") and b"ended after" in answer


def test_numbers_as_strings_are_ascii_decimals_or_a_400_naming_the_option(
    explorer: ExplorerServer,
) -> None:
    cookie = _login(explorer)
    for name, value in (("seed", "\u00b2"), ("nt_samples", "9" * 5000), ("n_steps", "\uff11")):
        body = {"model": "lite", "sample": "cat", "options": {name: value}}
        status, _, answer = _post(explorer, cookie, body)
        assert status == 400 and json.loads(answer)["error"]["field"] == f"options.{name}", name


def test_odd_static_names_and_request_lines_are_refused_with_the_headers(
    explorer: ExplorerServer,
) -> None:
    cookie = _login(explorer)
    assert _call(explorer, "GET", "/static/" + "a" * 300 + ".js", headers=cookie)[0] == 404
    here = f"Host: 127.0.0.1:{explorer.port}\r\nCookie: {cookie['Cookie']}\r\n\r\n"
    for line, status in (
        ("GET / HTTP/2.0", 505),
        ("GET / HTTP/1.1.1", 400),
        ("GET /api/models", 400),
    ):
        got, headers, _ = _raw(explorer, f"{line}\r\n{here}".encode())
        assert got == status and headers["x-content-type-options"] == "nosniff", line


def test_a_body_on_a_get_is_never_read_as_the_next_request(explorer: ExplorerServer) -> None:
    cookie = _login(explorer)["Cookie"]
    host = f"Host: 127.0.0.1:{explorer.port}\r\nCookie: {cookie}\r\n"
    smuggled = f"GET /api/samples HTTP/1.1\r\n{host}\r\n"
    request = f"GET /api/models HTTP/1.1\r\n{host}Content-Length: {len(smuggled)}\r\n\r\n"
    with socket.create_connection(("127.0.0.1", explorer.port), timeout=10) as connection:
        connection.sendall((request + smuggled).encode())
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
    assert received.count(b"HTTP/1.1 ") == 1 and b'"models"' in received


def test_a_client_that_drips_its_request_is_cut_at_the_read_deadline(
    explorer: ExplorerServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server_module, "READ_SECONDS", 1.0)
    with socket.create_connection(("127.0.0.1", explorer.port), timeout=10) as connection:
        connection.sendall(f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{explorer.port}\r\n".encode())
        started = time.monotonic()
        closed = False
        while time.monotonic() - started < 8 and not closed:
            time.sleep(0.2)  # a header line well inside SOCKET_TIMEOUT, again and again
            try:
                connection.sendall(b"X-Drip: 1\r\n")
                connection.settimeout(0.01)
                closed = connection.recv(1024) == b""
            except TimeoutError:
                pass
            except OSError:
                closed = True
            connection.settimeout(10)
    assert closed and time.monotonic() - started < 5


def test_connections_beyond_the_limit_are_closed_and_the_explorer_recovers(
    explorer: ExplorerServer,
) -> None:
    cookie = _login(explorer)
    idle = [
        socket.create_connection(("127.0.0.1", explorer.port), timeout=10)
        for _ in range(MAX_CONNECTIONS)
    ]
    try:
        time.sleep(0.5)  # every idle one has its thread
        with socket.create_connection(("127.0.0.1", explorer.port), timeout=10) as extra:
            extra.sendall(f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{explorer.port}\r\n\r\n".encode())
            assert extra.recv(1024) == b""  # closed unanswered: nothing more is held
    finally:
        for connection in idle:
            connection.close()
    time.sleep(0.5)
    assert _call(explorer, "GET", "/api/models", headers=cookie)[0] == 200


def test_make_run_prints_the_login_link_and_the_tunnel(tmp_path: Path) -> None:
    from smoothexplain.demo.run import _explorer_lines

    assert _explorer_lines({"explorer": None}, tmp_path) == []
    (tmp_path / "explorer_login").write_text("http://127.0.0.1:8084/?token=abc\n")
    lines = _explorer_lines({"explorer": "http://127.0.0.1:8084/"}, tmp_path)
    assert "http://127.0.0.1:8084/?token=abc" in lines[0]
    assert "ssh -L 8084:127.0.0.1:8084" in lines[1]
