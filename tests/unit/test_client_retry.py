"""The client's one retry, against scripted stand-ins for TorchServe's gRPC and REST front ends.

Each fake answers the faults a test scripts, in order, then good answers, and records every
Request it was sent: so a test sees how many tries there were, what each carried (the seed,
the deadline) and when it came. TorchServe's own failures are scripted as it sends them
(docs/reliability.md); our handler's errors as a Response carrying `error`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch
from google.protobuf import json_format

from smoothexplain._proto.smoothexplain.v1 import explain_pb2 as pb
from smoothexplain._proto.torchserve import inference_pb2, inference_pb2_grpc
from smoothexplain.client.cli import build_parser, main
from smoothexplain.client.remote import (
    KEY_FILE_ENV,
    RETRY_BACKOFF_S,
    TOKEN_ENV,
    ExplainError,
    SmoothExplainClient,
    Transport,
    is_retryable,
)
from smoothexplain.protocol.errors import InvalidArgument
from smoothexplain.protocol.local_server import STATE_DIR_ENV
from smoothexplain.serving.codec import GRPC_KEY, tensor_to_message

from .fake_frontends import JsonHandler, serving_grpc, serving_http

MODEL = "tiny"
TOKEN = "retry-test-token"
IMAGE = b"image bytes"  # the fakes never decode it
DIED = "Worker died."
INTERNAL, EXHAUSTED = grpc.StatusCode.INTERNAL, grpc.StatusCode.RESOURCE_EXHAUSTED
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
NO_WORKER = (
    f'Model "{MODEL}" has no worker to serve inference request. Please use scale workers API.'
)


# -- scripted faults --------------------------------------------------------------------------


@dataclass(frozen=True)
class GrpcFault:
    """TorchServe's gRPC front end ends the call with this status."""

    code: grpc.StatusCode
    details: str


@dataclass(frozen=True)
class RestFault:
    """TorchServe's REST front end answers this status with its own JSON error body."""

    status: int
    kind: str
    message: str


@dataclass(frozen=True)
class HandlerError:
    """Our handler's error, in a Response: gRPC OK, REST `http_status` (as ts_handler does)."""

    grpc_code: str
    http_status: int
    message: str


Fault = GrpcFault | RestFault | HandlerError


def died(answered: grpc.StatusCode | int) -> Fault:
    """TorchServe's answer when the worker died: a gRPC code or an HTTP status."""
    if isinstance(answered, grpc.StatusCode):
        return GrpcFault(answered, DIED)
    return RestFault(answered, "InternalServerException", DIED)


def died_over(transport: Transport) -> Fault:
    return died(INTERNAL if transport == "grpc" else 500)


@dataclass
class Script:
    """What the fakes answer, and what they were sent (both fakes share one)."""

    faults: list[Fault] = field(default_factory=list)
    seen: list[pb.Request] = field(default_factory=list)
    arrived: list[float] = field(default_factory=list)  # time.monotonic() per call
    grpc_time_left: list[float] = field(default_factory=list)  # the deadline each call had
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self, *faults: Fault) -> None:
        with self.lock:
            self.faults = list(faults)
            self.seen.clear()
            self.arrived.clear()
            self.grpc_time_left.clear()

    def receive(self, request: pb.Request, grpc_time_left: float | None = None) -> Fault | None:
        """Record one call; the fault to answer it with, or None for a good answer."""
        with self.lock:
            self.seen.append(request)
            self.arrived.append(time.monotonic())
            if grpc_time_left is not None:
                self.grpc_time_left.append(grpc_time_left)
            return self.faults.pop(0) if self.faults else None

    def answer(self, request: pb.Request, fault: HandlerError | None) -> pb.Response:
        """The Response for a call: `rows` numbers the calls so a test knows which answered."""
        response = pb.Response(model=MODEL, rows=len(self.seen), seed=request.options.seed)
        if fault is not None:
            response.error.grpc_code, response.error.message = fault.grpc_code, fault.message
            response.error.http_status = fault.http_status
        elif request.explain:
            response.attribution.CopyFrom(tensor_to_message(torch.zeros(3, 2, 2)))
        return response


class ScriptedInference(inference_pb2_grpc.InferenceAPIsServiceServicer):
    def __init__(self, script: Script) -> None:
        self.script = script

    def Predictions(
        self, request: inference_pb2.PredictionsRequest, context: grpc.ServicerContext
    ) -> inference_pb2.PredictionResponse:
        sent = pb.Request.FromString(request.input[GRPC_KEY])
        fault = self.script.receive(sent, context.time_remaining() or 0.0)
        if isinstance(fault, GrpcFault):
            context.abort(fault.code, fault.details)
        ours = fault if isinstance(fault, HandlerError) else None
        answer = self.script.answer(sent, ours)
        return inference_pb2.PredictionResponse(prediction=answer.SerializeToString())


class ScriptedRest(JsonHandler):
    script: Script  # set on a subclass per server

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        sent = json_format.Parse(body, pb.Request())
        fault = self.script.receive(sent)
        if isinstance(fault, RestFault):
            error = {"code": fault.status, "type": fault.kind, "message": fault.message}
            self.send_json(fault.status, json.dumps(error).encode())
            return
        ours = fault if isinstance(fault, HandlerError) else None
        answer = json_format.MessageToJson(self.script.answer(sent, ours))
        self.send_json(ours.http_status if ours else 200, answer.encode())


# -- servers ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Servers:
    script: Script
    grpc_port: int
    rest_port: int

    def client(self, transport: Transport, **kwargs: Any) -> SmoothExplainClient:
        kwargs.setdefault("timeout", 10.0)
        return SmoothExplainClient(
            transport=transport,
            host="127.0.0.1",
            grpc_port=self.grpc_port,
            rest_port=self.rest_port,
            token=TOKEN,
            **kwargs,
        )


@pytest.fixture(scope="module")
def shared_script() -> Script:
    return Script()


@pytest.fixture(scope="module")
def grpc_port(shared_script: Script) -> Iterator[int]:
    with serving_grpc(ScriptedInference(shared_script)) as port:  # type: ignore[abstract]
        yield port


@pytest.fixture(scope="module")
def rest_port(shared_script: Script) -> Iterator[int]:
    handler = type("BoundScriptedRest", (ScriptedRest,), {"script": shared_script})
    with serving_http(handler) as port:
        yield port


@pytest.fixture
def servers(
    shared_script: Script,
    grpc_port: int,
    rest_port: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Servers:
    shared_script.reset()
    monkeypatch.setenv(STATE_DIR_ENV, str(tmp_path / "state"))  # no local server record
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    monkeypatch.delenv(KEY_FILE_ENV, raising=False)
    return Servers(shared_script, grpc_port, rest_port)


# -- retried: TorchServe's worker died or is unavailable ----------------------------------------

# (transport, TorchServe's answer, the code raised when not retried, its ExplainError.http_status)
TRANSIENT: list[tuple[Transport, Fault, grpc.StatusCode, int]] = [
    ("grpc", died(INTERNAL), INTERNAL, 0),
    ("grpc", died(EXHAUSTED), EXHAUSTED, 0),  # the worker's exit status was 137
    ("grpc", GrpcFault(UNAVAILABLE, NO_WORKER), UNAVAILABLE, 0),
    ("rest", died(500), INTERNAL, 500),
    ("rest", died(507), INTERNAL, 507),
    ("rest", RestFault(503, "ServiceUnavailableException", NO_WORKER), UNAVAILABLE, 503),
]
# Our handler's one retryable error, errors.Overloaded: batch-mates took the batch's time and
# nothing was computed.
OVERLOADED: list[tuple[Transport, Fault]] = [
    (transport, HandlerError("UNAVAILABLE", 503, "send it again")) for transport in ("grpc", "rest")
]


@pytest.mark.parametrize(("transport", "fault"), [case[:2] for case in TRANSIENT] + OVERLOADED)
def test_a_dead_worker_is_retried_once_with_the_same_drawn_seed(
    servers: Servers, transport: Transport, fault: Fault
) -> None:
    servers.script.reset(fault)
    with servers.client(transport) as client:
        response = client.explain(MODEL, IMAGE, nt_samples=4)
    first, second = servers.script.seen
    assert response.rows == 2  # the second answer
    assert first.options.HasField("seed") and 0 <= first.options.seed < 2**63
    assert second == first  # same seed, same deadline, same everything
    assert response.seed == first.options.seed  # the answer reports the seed drawn
    waited = servers.script.arrived[1] - servers.script.arrived[0]
    assert waited >= RETRY_BACKOFF_S * 0.95


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_the_callers_seed_is_kept_and_predictions_get_none(
    servers: Servers, transport: Transport
) -> None:
    fault = died_over(transport)
    with servers.client(transport) as client:
        servers.script.reset(fault)
        assert client.explain(MODEL, IMAGE, seed=7).seed == 7
        assert [r.options.seed for r in servers.script.seen] == [7, 7]
        servers.script.reset(fault)
        predicted = client.predict(MODEL, IMAGE, top_k=2)
    assert predicted.rows == 2 and len(servers.script.seen) == 2
    assert all(not r.explain and not r.HasField("options") for r in servers.script.seen)


def test_every_explanation_draws_its_own_seed(servers: Servers) -> None:
    with servers.client("grpc") as client:
        seeds = {client.explain(MODEL, IMAGE).seed for _ in range(4)}
    assert len(seeds) == 4


def test_the_retry_gets_only_the_time_left(servers: Servers) -> None:
    servers.script.reset(died(INTERNAL))
    with servers.client("grpc", timeout=5.0) as client:
        client.explain(MODEL, IMAGE, seed=1)
    first, second = servers.script.grpc_time_left
    assert 4.0 < first <= 5.0 + 0.05  # gRPC's time_remaining rounds up a little
    assert second <= first - RETRY_BACKOFF_S + 0.05  # not a fresh 5 s


def test_a_second_failure_is_raised_with_the_first_attached(servers: Servers) -> None:
    unavailable = GrpcFault(UNAVAILABLE, NO_WORKER)
    servers.script.reset(died(INTERNAL), unavailable, unavailable)
    with servers.client("grpc") as client, pytest.raises(grpc.RpcError) as caught:
        client.predict(MODEL, IMAGE)
    assert caught.value.code() is UNAVAILABLE
    first = caught.value.__context__
    assert isinstance(first, grpc.RpcError) and first.code() is INTERNAL
    assert len(servers.script.seen) == 2  # once, not until it works


# -- retry off: the same errors as without retries -------------------------------------------


@pytest.mark.parametrize(("transport", "fault", "code", "http_status"), TRANSIENT)
def test_with_retry_off_the_first_failure_is_raised(
    servers: Servers,
    transport: Transport,
    fault: Fault,
    code: grpc.StatusCode,
    http_status: int,
) -> None:
    servers.script.reset(fault)
    with servers.client(transport, retry=False) as client, pytest.raises(grpc.RpcError) as caught:
        client.explain(MODEL, IMAGE)
    error = caught.value
    assert error.code() is code and is_retryable(error)
    # gRPC's own errors pass through unchanged; REST ones are ExplainErrors with the status
    assert isinstance(error, ExplainError) == (transport == "rest")
    assert getattr(error, "http_status", 0) == http_status
    expected = fault.details if isinstance(fault, GrpcFault) else fault.message
    assert expected in (error.details() or "")
    (sent,) = servers.script.seen
    assert not sent.options.HasField("seed")  # the server draws it, as before


def test_retry_must_be_a_bool(servers: Servers) -> None:
    with pytest.raises(InvalidArgument) as caught:
        servers.client("grpc", retry=1)
    assert caught.value.field == "retry"


# -- never retried ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("transport", "fault", "code"),
    [
        ("grpc", GrpcFault(grpc.StatusCode.INVALID_ARGUMENT, "bad"), "INVALID_ARGUMENT"),
        ("grpc", GrpcFault(grpc.StatusCode.DEADLINE_EXCEEDED, "late"), "DEADLINE_EXCEEDED"),
        ("grpc", GrpcFault(grpc.StatusCode.PERMISSION_DENIED, "token"), "PERMISSION_DENIED"),
        ("grpc", GrpcFault(INTERNAL, f"Model not found: {MODEL}"), "INTERNAL"),
        ("rest", RestFault(400, "InvalidKeyException", "Token failed"), "UNAUTHENTICATED"),
        ("rest", RestFault(404, "ModelNotFoundException", "no model"), "NOT_FOUND"),
        ("rest", RestFault(413, "TooLongFrameException", "too big"), "RESOURCE_EXHAUSTED"),
        ("rest", RestFault(500, "ErrorDataDecoderException", "bad body"), "INTERNAL"),
        # our handler's errors, on either transport
        *(
            (transport, HandlerError(code, status, "from the handler"), code)
            for transport in ("grpc", "rest")
            for code, status in (
                ("INVALID_ARGUMENT", 400),
                ("DEADLINE_EXCEEDED", 504),
                ("RESOURCE_EXHAUSTED", 503),  # out of memory after the handler's own halving
            )
        ),
        ("rest", HandlerError("INTERNAL", 500, f"model output after {DIED}"), "INTERNAL"),
    ],
)
def test_other_errors_are_not_retried(
    servers: Servers, transport: Transport, fault: Fault, code: str
) -> None:
    servers.script.reset(fault)
    with servers.client(transport) as client, pytest.raises(grpc.RpcError) as caught:
        client.explain(MODEL, IMAGE, seed=3)
    assert caught.value.code().name == code and not is_retryable(caught.value)
    assert len(servers.script.seen) == 1


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_no_retry_once_the_deadline_has_passed(servers: Servers, transport: Transport) -> None:
    fault = died_over(transport)
    servers.script.reset(fault)
    passed = pb.Request(input=pb.Input(image=IMAGE), deadline_unix_ms=int(time.time() * 1000))
    with servers.client(transport) as client, pytest.raises(grpc.RpcError) as caught:
        client.request(MODEL, passed)
    assert DIED in (caught.value.details() or "") and len(servers.script.seen) == 1


def test_no_retry_when_the_timeout_leaves_no_room_for_the_back_off(servers: Servers) -> None:
    servers.script.reset(died(507))
    client = servers.client("rest", timeout=RETRY_BACKOFF_S * 0.8)
    with client, pytest.raises(ExplainError) as caught:
        client.predict(MODEL, IMAGE)
    assert caught.value.http_status == 507 and len(servers.script.seen) == 1


# -- CLI --------------------------------------------------------------------------------------


def _argv(servers: Servers, command: str, image: Path, transport: Transport) -> list[str]:
    port = servers.grpc_port if transport == "grpc" else servers.rest_port
    connection = ["--model", MODEL, "--transport", transport, "--host", "127.0.0.1"]
    return [command, str(image), *connection, f"--{transport}-port", str(port), "--timeout", "10"]


@pytest.fixture
def image_file(tmp_path: Path) -> Path:
    path = tmp_path / "in.png"
    path.write_bytes(IMAGE)
    return path


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_cli_retries_by_default(
    servers: Servers,
    transport: Transport,
    image_file: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    servers.script.reset(died_over(transport))
    assert main(_argv(servers, "explain", image_file, transport)) == 0
    first, second = servers.script.seen
    assert first == second and first.options.HasField("seed")
    assert f"seed {first.options.seed}," in capsys.readouterr().out


@pytest.mark.parametrize("command", ["explain", "predict"])
@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_cli_no_retry_fails_on_the_first_error(
    servers: Servers,
    command: str,
    transport: Transport,
    image_file: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    servers.script.reset(died_over(transport))
    assert main([*_argv(servers, command, image_file, transport), "--no-retry"]) == 1
    assert DIED in capsys.readouterr().err and len(servers.script.seen) == 1


def test_cli_retry_flag_defaults_on() -> None:
    parser = build_parser()
    for command in ("explain", "predict"):
        assert parser.parse_args([command, "x.png", "--model", "m"]).retry is True
        assert parser.parse_args([command, "x.png", "--model", "m", "--no-retry"]).retry is False
