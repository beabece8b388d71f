"""The explorer's one call to the inference API, made server-side with TorchServe's key.

The page sends `{"model", "sample" | "image" (base64), "options" (the table's names), "target",
"top_k", "seconds"}`. Options are checked by the options table here, as the Python client
checks them; server limits (max_nt_samples, ...) are left to the model's handler, whose
message comes back unchanged. The Request carries `deadline_unix_ms` = now + `seconds`: a
page that gives up leaves work that stops at the next chunk once that time has passed. Every
error is answered as the API answers it: `{"error": {http_status, grpc_code, message, field}}`.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from google.protobuf import json_format

from .._proto.smoothexplain.v1 import explain_pb2 as pb
from ..protocol.checks import check_integer, check_option, check_real
from ..protocol.errors import (
    InternalError,
    InvalidArgument,
    SmoothExplainError,
    grpc_code_of_http,
    status_of,
)
from ..protocol.images import load_image
from ..protocol.keyfile import KeyFileError, bearer, read_key
from ..protocol.options import option, refuse_unknown, to_proto
from .describe import EXPLORER_ENCODING, ModelFacts, form_options

__all__ = ["Answer", "Upstream", "error_answer"]

Answer = tuple[int, dict[str, Any]]  # HTTP status and JSON body for the page
MAX_SECONDS = 3600.0
_FORM = {o.name for o in form_options()}


def error_answer(error: BaseException) -> Answer:
    """The API's error shape for `error`, with its status from the one table (errors.py)."""
    status = status_of(error)
    message = error.message if isinstance(error, SmoothExplainError) else "internal error"
    field = error.field if isinstance(error, SmoothExplainError) else ""
    body = {"http_status": status.http, "grpc_code": status.grpc, "message": message}
    return status.http, {"error": {**body, "field": field}}


_DECIMAL = re.compile(r"[0-9]{1,20}")  # ASCII digits only; a uint64 has at most 20


def _number(name: str, value: object) -> object:
    """Seeds travel as decimal strings (a browser's numbers hold only 53 bits); any other
    string is left for the option's check to refuse, naming it."""
    if option(name).kind is int and isinstance(value, str) and _DECIMAL.fullmatch(value):
        return int(value)
    return value


def _options(raw: object) -> dict[str, object]:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise InvalidArgument("options must be an object", field="options")
    unknown = sorted(set(raw) - _FORM)
    if unknown:
        raise InvalidArgument(f"unknown explain options {unknown}", field="options")
    checked = {
        name: check_option(option(name), _number(name, value), f"options.{name}")
        for name, value in raw.items()
        if value is not None
    }
    checked["encoding"] = EXPLORER_ENCODING
    refuse_unknown(checked)
    return checked


def _image(body: Mapping[str, Any], samples: Callable[[str], bytes | None]) -> bytes:
    if ("sample" in body) == ("image" in body):
        raise InvalidArgument("send exactly one of sample and image", field="image")
    if "sample" in body:
        data = samples(str(body["sample"]))
        if data is None:
            raise InvalidArgument(f"no sample photograph {body['sample']!r}", field="sample")
        return data
    try:
        return base64.b64decode(str(body["image"]), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument("image must be base64", field="image") from None


@dataclass(frozen=True)
class _Call:
    model: str
    image: bytes
    request: pb.Request
    seconds: float


def _call(
    body: object, models: Mapping[str, ModelFacts], samples: Callable[[str], bytes | None]
) -> _Call:
    if not isinstance(body, Mapping):
        raise InvalidArgument("the body must be a JSON object", field="")
    model = str(body.get("model", ""))
    if model not in models:
        raise InvalidArgument(f"no served model {model!r}; served: {sorted(models)}", field="model")
    image = _image(body, samples)
    seconds = check_real("seconds", body.get("seconds", 120.0), low=1.0, high=MAX_SECONDS)
    request = pb.Request(input=pb.Input(image=image), explain=True)
    request.options.CopyFrom(to_proto(_options(body.get("options"))))
    for name, low, high in (("target", 0, 2**31 - 1), ("top_k", 1, 2**32 - 1)):
        if body.get(name) is not None:
            setattr(request, name, check_integer(name, body[name], low, high))
    request.deadline_unix_ms = int(1000 * (time.time() + seconds))
    return _Call(model, image, request, seconds)


def _view(image: bytes, answer: Mapping[str, Any], facts: ModelFacts) -> str:
    """The photo as the model saw it (base64 PNG): the page lays the map over it."""
    crop = answer.get("crop") or {}
    resize, size = int(crop.get("resize", facts.resize)), int(crop.get("size", facts.size))
    buffer = io.BytesIO()
    load_image(image, crop=(resize, size)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _torchserve_error(status: int, body: object) -> dict[str, Any]:
    """TorchServe's own refusals (no worker, unknown model) in the API's error shape."""
    text = f"HTTP {status}"
    if isinstance(body, Mapping):
        text = ": ".join(str(body[k]) for k in ("type", "message") if body.get(k)) or text
    grpc = grpc_code_of_http(status)
    return {"error": {"http_status": status, "grpc_code": grpc, "message": text, "field": ""}}


class Upstream:
    """TorchServe's REST inference API at `base_url`, called with the key in `key_file`
    (re-read on every call: serve renews keys; None when token auth is off)."""

    def __init__(self, base_url: str, key_file: Path | None) -> None:
        self.base_url, self.key_file = base_url.rstrip("/"), key_file
        self._context: ssl.SSLContext | None = None
        if base_url.startswith("https"):
            # Our own serve's TorchServe on loopback: its certificate need not name
            # 127.0.0.1, so it is not checked here (browsers check the explorer's).
            self._context = ssl.create_default_context()
            self._context.check_hostname, self._context.verify_mode = False, ssl.CERT_NONE

    def explain(
        self,
        body: object,
        models: Mapping[str, ModelFacts],
        samples: Callable[[str], bytes | None],
    ) -> Answer:
        try:
            call = _call(body, models, samples)
            status, answer = self._post(call)
            if status == 200 and "error" not in answer:
                answer["view"] = {"image_png": _view(call.image, answer, models[call.model])}
            return status, answer
        except (SmoothExplainError, TypeError) as error:
            if isinstance(error, TypeError):
                error = InvalidArgument(str(error), field="options")
            return error_answer(error)

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.key_file is not None:
            try:
                headers.update(bearer(read_key(self.key_file, "inference")))
            except KeyFileError as error:
                raise InternalError(f"the explorer cannot read the key: {error}") from None
        return headers

    def _post(self, call: _Call) -> tuple[int, dict[str, Any]]:
        data = json_format.MessageToJson(
            call.request, preserving_proto_field_name=True, indent=None
        ).encode()
        url = f"{self.base_url}/explanations/{quote(call.model, safe='')}"
        request = urllib.request.Request(url, data=data, headers=self._headers(), method="POST")
        try:
            with urllib.request.urlopen(
                request, timeout=call.seconds + 10, context=self._context
            ) as reply:
                status, text = reply.status, reply.read()
        except urllib.error.HTTPError as error:
            status, text = error.code, error.read()
        except OSError as error:  # refused, reset, timed out
            raise InternalError(f"the inference API did not answer: {error}") from None
        try:
            answer: object = json.loads(text)
        except ValueError:
            answer = None
        if isinstance(answer, dict) and (status == 200 or isinstance(answer.get("error"), dict)):
            return status, answer
        return status, _torchserve_error(status, answer)
