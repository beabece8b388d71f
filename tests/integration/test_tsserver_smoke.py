"""Smoke test of the serving platform: a real TorchServe 0.12.0 with our secure config.

Builds a tiny ``.mar`` around an echo handler, starts one TorchServe instance through
``tsserver.TorchServeInstance`` (token auth on, model API off, loopback only) and checks
REST and gRPC inference, authentication, the management API lock-down, the bind addresses,
and the TorchServe request/response behaviours our explanation handler relies on.

Needs Java 17 and the ``serve`` extras; run ``tools/gen_protos.py`` first (the module
generates the stubs itself if they are missing).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

grpc = pytest.importorskip("grpc")
requests = pytest.importorskip("requests")

from smoothexplain.ops.launcher import TorchServeInstance, is_loopback  # noqa: E402

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL = "echo"

# Written into the .mar. Returns one JSON document per request describing what the backend
# saw, unless the request's "mode" input asks for a specific reply shape.
ECHO_HANDLER = textwrap.dedent(
    '''
    """Echo handler used by tests/integration/test_tsserver_smoke.py."""
    import json

    from ts.utils.util import PredictionException


    def _text(value):
        if isinstance(value, (bytes, bytearray)):
            return bytes(value).decode("utf-8", "replace")
        return value


    def handle(data, context):
        if data is None:  # TorchServe calls handle(None, context) once at load time
            return None
        mode = _text(data[0].get("mode")) if data else None
        if mode == "raise400":
            raise PredictionException("bad input from test", 400)
        out = []
        for idx, request in enumerate(data):
            # REST requests always carry the string header "explain" ("True"/"False");
            # gRPC requests carry no HTTP headers at all.
            rest = isinstance(context.get_request_header(idx, "explain"), str)
            if not rest:
                # gRPC StreamPredictions needs an explicit final marker, otherwise the
                # frontend hits a NullPointerException and restarts the worker. Never set it
                # on REST: there "false" is taken as the end of a chunked stream that was
                # never started and the client gets no response at all.
                context.set_response_header(idx, "ts_stream_next", "false")
            mode = _text(request.get("mode"))
            if mode == "stream_false":
                context.set_response_header(idx, "ts_stream_next", "false")
            if mode == "bytes":
                out.append(b"\\x00\\x01\\xffRAW")
                continue
            if mode == "status":
                context.set_response_status(418, "teapot", idx)
            headers = context.get_all_request_header(idx)
            out.append(
                json.dumps(
                    {
                        "keys": sorted(request),
                        "types": {k: type(v).__name__ for k, v in request.items()},
                        "values": {k: _text(v) for k, v in request.items()},
                        "explain": context.get_request_header(idx, "explain"),
                        "transport": "rest" if rest else "grpc",
                        "has_authorization": "Authorization" in headers,
                        "request_id": context.get_request_id(idx),
                    },
                    default=str,
                )
            )
        return out
    '''
)


def _bin(name: str) -> str:
    exe = Path(sys.executable).parent / name
    found = str(exe) if exe.is_file() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} not installed")
    return found


def _ensure_protos() -> None:
    """Generate the gRPC stubs if missing/stale (a no-op taking ~50 ms otherwise)."""
    gen = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tools" / "gen_protos.py")],
        capture_output=True,
        text=True,
    )
    if gen.returncode != 0:
        pytest.fail(f"tools/gen_protos.py failed:\n{gen.stdout}{gen.stderr}")


@pytest.fixture(scope="module")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("java") is None:
        pytest.skip("java not on PATH")
    src = tmp_path_factory.mktemp("echo_src")
    store = tmp_path_factory.mktemp("store")
    handler = src / "echo_handler.py"
    handler.write_text(ECHO_HANDLER, encoding="utf-8")
    subprocess.run(
        [
            _bin("torch-model-archiver"),
            "--model-name",
            MODEL,
            "--version",
            "1.0",
            "--handler",
            str(handler),
            "--export-path",
            str(store),
        ],
        check=True,
        capture_output=True,
    )
    assert (store / f"{MODEL}.mar").is_file()
    return store


@pytest.fixture(scope="module")
def ts(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorchServeInstance]:
    _bin("torchserve")
    workdir = tmp_path_factory.mktemp("ts")
    # The context manager stops the whole process group on teardown, also after failures;
    # start() cleans up itself (and raises with the log tail) if startup fails.
    with TorchServeInstance(model_store, {MODEL: f"{MODEL}.mar"}, workdir) as instance:
        yield instance
    assert instance.process_pids() == []


@pytest.fixture(scope="module")
def pb() -> Any:
    _ensure_protos()
    from smoothexplain._proto.torchserve import inference_pb2

    return inference_pb2


@pytest.fixture(scope="module")
def stub(ts: TorchServeInstance) -> Iterator[Any]:
    _ensure_protos()
    from smoothexplain._proto.torchserve import inference_pb2_grpc

    channel = grpc.insecure_channel(
        ts.grpc_target, options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    )
    try:
        yield inference_pb2_grpc.InferenceAPIsServiceStub(channel)
    finally:
        channel.close()


def _post(ts: TorchServeInstance, path: str, **kwargs: Any) -> Any:
    kwargs.setdefault("headers", ts.inference_headers())
    kwargs.setdefault("timeout", 30)
    return requests.post(f"{ts.inference_url}{path}", **kwargs)


# ---------------------------------------------------------------------------- startup


def test_startup_time_and_processes(ts: TorchServeInstance, record_property: Any) -> None:
    assert ts.startup_seconds is not None
    record_property("torchserve_startup_seconds", round(ts.startup_seconds, 2))
    print(f"TorchServe startup (launch -> model READY): {ts.startup_seconds:.1f}s")
    assert ts.startup_seconds < 120
    workers = ts.worker_pids()
    assert len(workers) == 1  # default_workers_per_model=1
    assert set(workers) <= set(ts.process_pids())


def test_key_file_layout(ts: TorchServeInstance) -> None:
    keys = ts.read_keys()
    assert set(keys) == {"management", "inference", "API"}
    assert set(keys["inference"]) == {"key", "expiration time"}
    assert set(keys["management"]) == {"key", "expiration time"}
    assert set(keys["API"]) == {"key"}
    assert ts.key_file.parent == ts.workdir  # written to the JVM's working directory
    assert ts.key_file.stat().st_mode & 0o777 == 0o600


def test_all_ports_bound_to_loopback(ts: TorchServeInstance) -> None:
    sockets = ts.listening_sockets()
    assert sorted(port for _, port in sockets) == sorted(ts.ports.all())
    assert all(is_loopback(addr) for addr, _ in sockets), sockets


# ---------------------------------------------------------------------------- REST


def test_rest_prediction_with_token(ts: TorchServeInstance) -> None:
    r = _post(
        ts,
        f"/predictions/{MODEL}",
        data=b"\x00\x01abc",
        headers={**ts.inference_headers(), "Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 200, r.text
    echo = r.json()
    assert echo["keys"] == ["body"]  # a raw REST body arrives as data[i]["body"]
    assert echo["types"] == {"body": "bytearray"}
    assert echo["explain"] == "False"
    assert echo["transport"] == "rest"
    assert echo["has_authorization"] is True  # handlers can see the caller's token!


def test_rest_json_body_is_decoded(ts: TorchServeInstance) -> None:
    r = _post(ts, f"/predictions/{MODEL}", json={"a": 1})
    assert r.status_code == 200, r.text
    assert r.json()["types"] == {"body": "dict"}


def test_rest_explanations_marks_explain_header(ts: TorchServeInstance) -> None:
    r = _post(ts, f"/explanations/{MODEL}", data=b"x")
    assert r.status_code == 200, r.text
    assert r.json()["explain"] == "True"


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "<raw token, no Bearer>"}],
    ids=["missing", "wrong", "not-bearer"],
)
def test_rest_prediction_without_valid_token_is_rejected(
    ts: TorchServeInstance, headers: dict[str, str]
) -> None:
    if headers.get("Authorization") == "<raw token, no Bearer>":
        headers = {"Authorization": ts.inference_token}
    r = _post(ts, f"/predictions/{MODEL}", data=b"x", headers=headers)
    # TorchServe 0.12.0 answers 400 InvalidKeyException, not 401.
    assert r.status_code in (400, 401), r.text
    assert r.json()["type"] == "InvalidKeyException"


def test_ping_requires_inference_token(ts: TorchServeInstance) -> None:
    assert requests.get(f"{ts.inference_url}/ping", timeout=10).status_code in (400, 401)
    wrong = requests.get(f"{ts.inference_url}/ping", headers=ts.management_headers(), timeout=10)
    assert wrong.status_code in (400, 401)
    r = requests.get(f"{ts.inference_url}/ping", headers=ts.inference_headers(), timeout=10)
    assert r.status_code == 200
    assert r.json() == {"status": "Healthy"}


def test_rest_bytes_reply_is_sent_raw(ts: TorchServeInstance) -> None:
    r = _post(ts, f"/predictions/{MODEL}", files={"mode": (None, "bytes")})
    assert r.status_code == 200
    assert r.content == b"\x00\x01\xffRAW"


def test_rest_per_request_status_is_honoured(ts: TorchServeInstance) -> None:
    r = _post(ts, f"/predictions/{MODEL}", files={"mode": (None, "status")})
    assert (r.status_code, r.reason) == (418, "teapot")
    assert r.json()["keys"] == ["mode"]  # body still delivered


def test_rest_prediction_exception_maps_to_status(ts: TorchServeInstance) -> None:
    r = _post(ts, f"/predictions/{MODEL}", files={"mode": (None, "raise400")})
    assert r.status_code == 400
    assert "bad input from test" in r.text


def test_rest_stream_marker_hangs_the_reply(ts: TorchServeInstance) -> None:
    """Pins a TorchServe 0.12.0 defect: ts_stream_next="false" on a REST request (no chunk
    sent before) produces no HTTP response at all. Handlers must only set it for gRPC."""
    with pytest.raises(requests.exceptions.ReadTimeout):
        _post(ts, f"/predictions/{MODEL}", files={"mode": (None, "stream_false")}, timeout=2)
    r = _post(ts, f"/predictions/{MODEL}", data=b"x")  # the worker itself is fine
    assert r.status_code == 200


# ---------------------------------------------------------------------------- management / metrics


def test_management_refuses_model_registration(ts: TorchServeInstance) -> None:
    url = f"{ts.management_url}/models?url={MODEL}.mar&model_name=other"
    r = requests.post(url, headers=ts.management_headers(), timeout=10)
    assert r.status_code == 405, r.text  # enable_model_api=false
    unauth = requests.post(url, timeout=10)
    assert unauth.status_code in (400, 401)
    listing = requests.get(
        f"{ts.management_url}/models", headers=ts.management_headers(), timeout=10
    )
    assert [m["modelName"] for m in listing.json()["models"]] == [MODEL]


def test_management_rejects_inference_token(ts: TorchServeInstance) -> None:
    r = requests.get(f"{ts.management_url}/models", headers=ts.inference_headers(), timeout=10)
    assert r.status_code in (400, 401)


def test_metrics_endpoint_is_prometheus(ts: TorchServeInstance) -> None:
    # No token on the metrics endpoint: this is why it must stay on loopback.
    r = requests.get(f"{ts.metrics_url}/metrics", timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    assert "# TYPE" in r.text


# ---------------------------------------------------------------------------- gRPC


def test_grpc_ping(ts: TorchServeInstance, stub: Any) -> None:
    from google.protobuf import empty_pb2

    reply = stub.Ping(empty_pb2.Empty(), metadata=ts.grpc_metadata(), timeout=10)
    assert json.loads(reply.health) == {"status": "Healthy"}
    with pytest.raises(grpc.RpcError) as err:
        stub.Ping(empty_pb2.Empty(), timeout=10)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_grpc_prediction_with_token(ts: TorchServeInstance, stub: Any, pb: Any) -> None:
    request = pb.PredictionsRequest(
        model_name=MODEL, input={"data": b"\x00\x01", "params": b'{"n": 1}'}
    )
    reply = stub.Predictions(request, metadata=ts.grpc_metadata(), timeout=30)
    echo = json.loads(reply.prediction)
    # Map keys become data[i] keys; values arrive undecoded (no content type over gRPC).
    assert echo["keys"] == ["data", "params"]
    assert echo["types"] == {"data": "bytearray", "params": "bytearray"}
    assert echo["values"]["params"] == '{"n": 1}'
    assert echo["explain"] is None  # no HTTP headers (and no "explain") over gRPC
    assert echo["transport"] == "grpc"
    assert echo["has_authorization"] is False


def test_grpc_prediction_without_token_is_rejected(stub: Any, pb: Any) -> None:
    request = pb.PredictionsRequest(model_name=MODEL, input={"data": b"x"})
    for metadata in [(), (("authorization", "Bearer wrong"),)]:
        with pytest.raises(grpc.RpcError) as err:
            stub.Predictions(request, metadata=metadata, timeout=10)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_grpc_bytes_reply_is_sent_raw(ts: TorchServeInstance, stub: Any, pb: Any) -> None:
    request = pb.PredictionsRequest(model_name=MODEL, input={"mode": b"bytes"})
    reply = stub.Predictions(request, metadata=ts.grpc_metadata(), timeout=30)
    assert reply.prediction == b"\x00\x01\xffRAW"


def test_grpc_ignores_per_request_status(ts: TorchServeInstance, stub: Any, pb: Any) -> None:
    request = pb.PredictionsRequest(model_name=MODEL, input={"mode": b"status"})
    reply = stub.Predictions(request, metadata=ts.grpc_metadata(), timeout=30)
    # context.set_response_status() is dropped on gRPC: the call succeeds with the body.
    assert json.loads(reply.prediction)["keys"] == ["mode"]


def test_grpc_prediction_exception_maps_to_status(
    ts: TorchServeInstance, stub: Any, pb: Any
) -> None:
    request = pb.PredictionsRequest(model_name=MODEL, input={"mode": b"raise400"})
    with pytest.raises(grpc.RpcError) as err:
        stub.Predictions(request, metadata=ts.grpc_metadata(), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "bad input from test" in (err.value.details() or "")


def test_grpc_stream_predictions_single_final_reply(
    ts: TorchServeInstance, stub: Any, pb: Any
) -> None:
    request = pb.PredictionsRequest(model_name=MODEL, input={"data": b"s"})
    workers_before = ts.worker_pids()
    replies = list(stub.StreamPredictions(request, metadata=ts.grpc_metadata(), timeout=30))
    assert len(replies) == 1
    assert json.loads(replies[0].prediction)["keys"] == ["data"]
    assert ts.worker_pids() == workers_before  # worker survived


def test_grpc_model_version_field(ts: TorchServeInstance, stub: Any, pb: Any) -> None:
    """model_version (field 2) reaches the server: a known version works, unknown fails."""
    ok = pb.PredictionsRequest(model_name=MODEL, model_version="1.0", input={"data": b"v"})
    reply = stub.Predictions(ok, metadata=ts.grpc_metadata(), timeout=30)
    assert json.loads(reply.prediction)["keys"] == ["data"]
    bad = pb.PredictionsRequest(model_name=MODEL, model_version="9.9", input={"data": b"v"})
    with pytest.raises(grpc.RpcError) as err:
        stub.Predictions(bad, metadata=ts.grpc_metadata(), timeout=30)
    # 0.12.0 reports an unknown version as INTERNAL (not NOT_FOUND), Java class name included.
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert "Model version: 9.9 does not exist" in (err.value.details() or "")
