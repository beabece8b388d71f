"""The bad-input corpus (bad_inputs.yaml): load its cases, send each one, check the answer.

A case is one malformed request and what it must get: an HTTP status (a 4xx), the request field
the error names, and the gRPC code; or, for a case with `status: 200` and no field, an answer
without an error (OK on gRPC). It is sent over each transport it lists:

    rest     POST /{path}/{model}           (JSON body, raw bytes, multipart or form fields)
    grpc     InferenceAPIsService.Predictions
    stream   InferenceAPIsService.StreamPredictions (must answer once, the worker must live)
    raw      hand-written HTTP bytes over a socket (HTTP/1.0, no Host header, ...)

Body forms (exactly one per case): `request` (a Request in proto3 JSON with recipes for
input.image / input.tensor), `text`, `hex`, `image` (a recipe, see payloads.py), `form`
(multipart fields), `urlencoded`, `grpc_input` (the raw gRPC input map), `big` (a body of
`size` bytes starting with `start`), `http_raw`.
"""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import requests
import torch
import yaml
from google.protobuf import json_format

from smoothexplain._proto.smoothexplain.v1 import explain_pb2 as pb
from smoothexplain._proto.torchserve import inference_pb2 as ts
from smoothexplain._proto.torchserve import inference_pb2_grpc as ts_grpc
from smoothexplain.engine.cpu import slow_precision_reason
from smoothexplain.protocol.options import Precision
from smoothexplain.serving.codec import GRPC_KEY

from .payloads import MARK, image_bytes, sample_png, tensor_json

__all__ = ["CORPUS", "Case", "Outcome", "Target", "check", "load_cases", "send"]

CORPUS = Path(__file__).with_name("bad_inputs.yaml")
_GRPC_FOR_HTTP = {200: "OK", 400: "INVALID_ARGUMENT", 415: "INVALID_ARGUMENT", 404: "NOT_FOUND"}
_BODY_FORMS = ("request", "text", "hex", "image", "form", "urlencoded", "grpc_input", "big")


@dataclass(frozen=True)
class Case:
    id: str
    transports: tuple[str, ...]
    body: Mapping[str, Any]
    path: str = "explanations"
    content_type: str | None = "application/json"
    model: str = "shapes"
    status: int = 400
    field: str = ""
    grpc: str = ""  # gRPC code of the error (derived from status when empty)
    by: str = "handler"  # "torchserve": refused before our handler, no Response.error

    @property
    def grpc_code(self) -> str:
        return self.grpc or _GRPC_FOR_HTTP.get(self.status, "INTERNAL")


@dataclass(frozen=True)
class Outcome:
    """What one transport answered, normalised: HTTP status (0 when a gRPC error), gRPC code
    name, and our Response.error's field and message (empty when TorchServe answered)."""

    status: int
    grpc: str
    field: str = ""
    message: str = ""
    replies: int = 1  # StreamPredictions replies


@dataclass
class Target:
    """Where to send: the server's addresses and tokens, a channel opened once."""

    rest_url: str
    grpc_target: str
    token: str
    stub: ts_grpc.InferenceAPIsServiceStub = field(init=False)
    channel: grpc.Channel = field(init=False)

    def __post_init__(self) -> None:
        self.channel = grpc.insecure_channel(
            self.grpc_target,
            options=[
                ("grpc.max_send_message_length", 64 << 20),
                ("grpc.max_receive_message_length", 64 << 20),
            ],
        )
        self.stub = ts_grpc.InferenceAPIsServiceStub(self.channel)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),)

    def close(self) -> None:
        self.channel.close()


def load_cases(path: Path = CORPUS) -> list[Case]:
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    cases = []
    for entry in raw["cases"]:
        entry = dict(entry)
        forms = [k for k in (*_BODY_FORMS, "http_raw") if k in entry]
        if len(forms) != 1:
            raise ValueError(f"case {entry.get('id')}: exactly one body form, got {forms}")
        body = {forms[0]: entry.pop(forms[0])}
        default = ["raw"] if "http_raw" in body else ["rest", "grpc", "stream"]
        if "form" in body or "urlencoded" in body:
            default = ["rest"]
        transports = tuple(entry.pop("send", default))
        for precision, name in (
            (Precision.BF16, "PRECISION_BF16"),
            (Precision.FP16, "PRECISION_FP16"),
        ):
            if name in json.dumps(body) and slow_precision_reason(precision, torch.device("cpu")):
                entry["field"] = "options.precision"  # this CPU refuses it first (issue 17)
        cases.append(Case(transports=transports, body=body, **entry))
    ids = [c.id for c in cases]
    if len(ids) != len(set(ids)):
        raise ValueError("case ids must be unique")
    return cases


# -- materialising bodies ----------------------------------------------------------------------


def _text(value: str) -> str:
    return value.replace("$MARK", MARK).replace("$IMAGE", base64.b64encode(sample_png()).decode())


def _request_json(recipe: Mapping[str, Any]) -> dict[str, Any]:
    """The Request in proto3 JSON, image/tensor recipes replaced by their base64 bytes."""
    request = json.loads(_text(json.dumps(recipe)))
    source = request.get("input")
    if isinstance(source, dict):
        if isinstance(source.get("image"), dict):
            source["image"] = base64.b64encode(image_bytes(source["image"])).decode()
        if isinstance(source.get("tensor"), dict) and "fill_spec" in source["tensor"]:
            source["tensor"] = tensor_json(source["tensor"]["fill_spec"])
    return request


def _bytes(body: Mapping[str, Any]) -> bytes:
    if "text" in body:
        return _text(str(body["text"])).encode("utf-8", errors="surrogateescape")
    if "hex" in body:
        return bytes.fromhex(str(body["hex"]))
    if "image" in body:
        return image_bytes(body["image"])
    big = body["big"]
    start = _text(str(big.get("start", ""))).encode()
    filler = str(big.get("fill", "A")).encode()
    size = int(big["size"])
    return (start + filler * size)[: max(size - len(big.get("end", "")), len(start))] + str(
        big.get("end", "")
    ).encode()


def _grpc_request_bytes(case: Case) -> bytes:
    if "request" in case.body:
        request = json_format.ParseDict(_request_json(case.body["request"]), pb.Request())
        if case.path == "explanations":
            request.explain = True  # what the REST path does
        return request.SerializeToString()
    return _bytes(case.body)  # raw bytes (an image body too) where a Request belongs


def _grpc_input(case: Case) -> dict[str, bytes]:
    if "grpc_input" in case.body:
        return {k: _text(str(v)).encode() for k, v in case.body["grpc_input"].items()}
    return {GRPC_KEY: _grpc_request_bytes(case)}


# -- sending -------------------------------------------------------------------------------------


def send(target: Target, case: Case, transport: str, timeout: float = 60.0) -> Outcome:
    if transport == "rest":
        return _rest(target, case, timeout)
    if transport == "raw":
        return _raw(target, case, timeout)
    return _grpc(target, case, transport == "stream", timeout)


def _rest(target: Target, case: Case, timeout: float) -> Outcome:
    headers = {"Authorization": f"Bearer {target.token}"}
    url = f"{target.rest_url}/{case.path}/{case.model}"
    kwargs: dict[str, Any] = {}
    if "form" in case.body:
        kwargs["files"] = {k: (None, _text(str(v))) for k, v in case.body["form"].items()}
    elif "urlencoded" in case.body:
        kwargs["data"] = {k: _text(str(v)) for k, v in case.body["urlencoded"].items()}
    else:
        if case.content_type:
            headers["Content-Type"] = case.content_type
        if "request" in case.body:
            kwargs["data"] = json.dumps(_request_json(case.body["request"])).encode()
        else:
            kwargs["data"] = _bytes(case.body)
    answer = requests.post(url, headers=headers, timeout=timeout, **kwargs)
    return _from_http(answer.status_code, answer.content)


def _from_http(status: int, content: bytes) -> Outcome:
    try:
        body = json.loads(content)
    except ValueError:
        body = None
    grpc_code = _GRPC_FOR_HTTP.get(status, "INTERNAL")
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        return Outcome(
            status,
            str(error.get("grpc_code", "")),
            str(error.get("field", "")),
            str(error.get("message", "")),
        )
    message = str(body.get("message", "")) if isinstance(body, dict) else ""
    return Outcome(status, grpc_code if status != 200 else "OK", message=message)


def _grpc(target: Target, case: Case, stream: bool, timeout: float) -> Outcome:
    call = ts.PredictionsRequest(model_name=case.model, input=_grpc_input(case))
    try:
        if stream:
            replies = list(
                target.stub.StreamPredictions(call, metadata=target.metadata, timeout=timeout)
            )
        else:
            replies = [target.stub.Predictions(call, metadata=target.metadata, timeout=timeout)]
    except grpc.RpcError as error:
        return Outcome(0, error.code().name, message=error.details() or "")
    if not replies:
        return Outcome(0, "OK", replies=0)
    response = pb.Response.FromString(replies[0].prediction)
    if not response.HasField("error"):
        return Outcome(200, "OK", replies=len(replies))
    error = response.error
    return Outcome(error.http_status, error.grpc_code, error.field, error.message, len(replies))


def _raw(target: Target, case: Case, timeout: float) -> Outcome:
    host, port = target.rest_url.removeprefix("http://").rsplit(":", 1)
    text = _text(str(case.body["http_raw"])).replace("$TOKEN", target.token)
    text = text.replace("$PATH", f"/{case.path}/{case.model}")
    payload = text.replace("\n", "\r\n").encode()
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(payload)
        data = _read_answer(sock)
    head, _, content = data.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split()
    status = int(status_line[1]) if len(status_line) > 1 else 0
    return _from_http(status, content)


def _read_answer(sock: socket.socket) -> bytes:
    """Headers and Content-Length bytes of body (TorchServe may reset the socket after)."""
    data = b""
    while b"\r\n\r\n" not in data or len(data) < _answer_length(data):
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data


def _answer_length(data: bytes) -> int:
    head, _, _ = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(head) + 4 + int(value)
    return len(data) + 1  # unknown: read until the server closes


# -- checking ------------------------------------------------------------------------------------


def check(case: Case, transport: str, outcome: Outcome) -> list[str]:
    """Every way `outcome` falls short of the case's expectation (empty: it passed)."""
    problems = []
    if transport == "stream" and outcome.replies != 1:
        problems.append(f"{outcome.replies} stream replies, want 1")
    if case.by == "torchserve":
        want = case.status if transport in ("rest", "raw") else 0
        if outcome.status != want or (
            transport not in ("rest", "raw") and outcome.grpc != case.grpc_code
        ):
            problems.append(f"got {outcome.status}/{outcome.grpc}, want {want}/{case.grpc_code}")
        return problems
    if (outcome.status, outcome.grpc) != (case.status, case.grpc_code):
        problems.append(
            f"got {outcome.status}/{outcome.grpc} ({outcome.message[:120]!r}), "
            f"want {case.status}/{case.grpc_code}"
        )
    field = _text(case.field)
    if outcome.field != field:
        problems.append(f"field {outcome.field!r}, want {field!r}")
    last = field.rsplit(".", 1)[-1]
    if last and last not in outcome.message:
        problems.append(f"message does not name {last!r}: {outcome.message[:160]!r}")
    if "\n" in outcome.message:
        problems.append("message spans several lines")
    return problems
