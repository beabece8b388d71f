"""A typed client for smoothexplain models served by TorchServe, over gRPC or REST.

    with SmoothExplainClient(transport="grpc") as client:
        response = client.explain("resnet18", Path("cat.jpg").read_bytes(), seed=1)
        heat = attribution(response)  # float32 (C, H, W)

Both transports send the same `smoothexplain.v1.Request` and return the same `Response`. Every
failure the server reports (a bad field, a wrong token, an unknown model) is raised as an
`ExplainError`, a `grpc.RpcError` with `code()`, `details()`, `.field` and `.http_status`, so
callers handle one exception type whatever the transport. Errors raised by the gRPC channel
itself (unreachable server, deadline, TorchServe's own auth check) are `grpc.RpcError`s too
and are passed through unchanged. Argument mistakes found before any network call (a bad
enum string, an unreadable key file) raise `smoothexplain.protocol.errors.InvalidArgument`.

Retries: a prediction, and an explanation with a seed, are idempotent, so when TorchServe (not
our handler) answers that the worker died or is unavailable, the request is sent once more,
after `RETRY_BACKOFF_S`, if the call's timeout and deadline leave time for it. An explanation
without a seed gets one drawn here first, so both tries compute the same thing.

The token is never logged and never put into an exception message.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self, TypeAlias
from urllib.parse import quote

import grpc
import numpy as np
import requests
from google.protobuf import json_format
from google.protobuf.message import DecodeError

from .._proto.smoothexplain.v1 import explain_pb2 as pb
from .._proto.torchserve import inference_pb2, inference_pb2_grpc
from ..protocol.checks import check_integer, check_option
from ..protocol.errors import InvalidArgument, grpc_code_of_http, http_of_grpc_code
from ..protocol.keyfile import read_key
from ..protocol.local_server import read_record
from ..protocol.options import option, refuse_unknown, to_proto
from ..protocol.tensors import GRPC_KEY, array_to_message, message_to_array

if TYPE_CHECKING:
    from torch import Tensor as TorchTensor
else:
    TorchTensor = Any

__all__ = [
    "KEY_FILE_ENV",
    "RETRY_BACKOFF_S",
    "TOKEN_ENV",
    "ExplainError",
    "ImageInput",
    "SmoothExplainClient",
    "Transport",
    "attribution",
    "is_retryable",
    "resolve_token",
    "status_for_http",
]

Transport = Literal["grpc", "rest"]
TOKEN_ENV = "SMOOTHEXPLAIN_TOKEN"
KEY_FILE_ENV = "SMOOTHEXPLAIN_KEY_FILE"
DEFAULT_KEY_FILE = Path("key_file.json")
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # above TorchServe's max_response_size (32 MiB)
RETRY_BACKOFF_S = 0.5  # lets TorchServe put a restarting worker back in front of the queue
SEED_BITS = 63  # fits a signed 64-bit integer wherever the seed ends up

# TorchServe 0.12 rejects a missing or wrong REST token with 400 and this exception type.
_TORCHSERVE_AUTH_TYPES = frozenset({"InvalidKeyException"})
# TorchServe 0.12's answer to every request of a batch whose worker process died: REST 500 or
# 507 (exit status 137), gRPC INTERNAL or RESOURCE_EXHAUSTED (docs/reliability.md).
_WORKER_DIED = "Worker died"
_WORKER_DIED_HTTP = frozenset({500, 507})
_WORKER_DIED_GRPC = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.RESOURCE_EXHAUSTED})


class ExplainError(grpc.RpcError):
    """A request the server (or TorchServe in front of it) refused or failed.

    `code()` is a `grpc.StatusCode`, `details()` the human message, `field` the offending
    request field ("" when none) and `http_status` the HTTP status of the same error.
    `retryable` is true when TorchServe or the network, not our handler, failed the call (a dead
    worker, no worker, no connection): the same request sent again may well succeed.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        field: str = "",
        http_status: int = 0,
        retryable: bool = False,
    ) -> None:
        super().__init__(message)
        self._code, self._message = code, message
        self.field, self.http_status, self.retryable = field, http_status, retryable

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._message

    def trailing_metadata(self) -> tuple[Any, ...]:
        return ()

    def redact(self, secret: str | None) -> None:
        """Replace every occurrence of `secret` (the token) in the message."""
        if secret and secret in self._message:
            self._message = self._message.replace(secret, "<token>")
            self.args = (self._message,)

    def __str__(self) -> str:
        where = f" (field: {self.field})" if self.field else ""
        return f"{self._code.name}: {self._message}{where}"

    @classmethod
    def from_response(cls, error: pb.Error) -> ExplainError:
        """The exception for a `Response.error` sent by our handler. Its only UNAVAILABLE is
        `errors.Overloaded` (batch-mates took the batch's time; nothing was computed), the one
        handler error worth sending again."""
        code = grpc.StatusCode.__members__.get(error.grpc_code, grpc.StatusCode.INTERNAL)
        http_status = error.http_status or _http_for(code)
        retryable = code is grpc.StatusCode.UNAVAILABLE
        return cls(
            code, error.message, field=error.field, http_status=http_status, retryable=retryable
        )


def _http_for(code: grpc.StatusCode) -> int:
    """HTTP status for a code, when a Response.error came without one (errors.py's table)."""
    return http_of_grpc_code(code.name)


def status_for_http(status: int) -> grpc.StatusCode:
    """The gRPC code for an HTTP error status (anything unlisted is INTERNAL)."""
    return grpc.StatusCode[grpc_code_of_http(status)]


def is_retryable(error: grpc.RpcError) -> bool:
    """Whether sending the same request again may succeed: the worker died or is unavailable.

    Errors our handler put in a Response (bad fields, deadline, out of memory after its own
    chunk halving) are never retryable: the same worker would answer the same again.
    """
    if isinstance(error, ExplainError):
        return error.retryable
    code_of = getattr(error, "code", None)
    code = code_of() if callable(code_of) else None
    details = _details(error)
    if code is grpc.StatusCode.UNAVAILABLE:  # no worker, a full queue, no connection
        return True
    return code in _WORKER_DIED_GRPC and _WORKER_DIED in details


# -- tokens -----------------------------------------------------------------------------------

# TorchServe's answer to a wrong or expired key (REST 400 and gRPC), in its two spellings.
_KEY_REFUSED = ("Token Authorization failed", "Token Authentication failed")


def _details(error: grpc.RpcError) -> str:
    """The message of a gRPC error or an ExplainError ("" when it has none)."""
    details_of = getattr(error, "details", None)
    return (details_of() if callable(details_of) else None) or ""


def _key_refused(error: grpc.RpcError) -> bool:
    return any(text in _details(error) for text in _KEY_REFUSED)


def _read_inference_key(path: Path) -> str:
    """The `inference.key` of a TorchServe key_file.json (never echoed in errors)."""
    return read_key(path, "inference")


@dataclass
class _KeyFile:
    """A key file token, re-read when the file changes (TorchServe rotates expired keys)."""

    path: Path
    token: str = ""
    stamp: tuple[int, int] = (-1, -1)

    def current(self) -> str:
        try:
            stat = self.path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
        except OSError:
            stamp = (-1, -1)
        if not self.token or stamp != self.stamp:
            self.token, self.stamp = _read_inference_key(self.path), stamp
        return self.token


def _key_file_path(token_file: Path | None, env: Mapping[str, str]) -> Path | None:
    if token_file is not None:
        return Path(token_file)
    if env.get(KEY_FILE_ENV):
        return Path(env[KEY_FILE_ENV])
    if DEFAULT_KEY_FILE.is_file():
        return DEFAULT_KEY_FILE
    record = read_record(env)  # the local `smoothexplain serve`, from any folder
    return Path(record.key_file) if record is not None and record.key_file else None


def _token_source(
    token: str | None, token_file: Path | None, env: Mapping[str, str]
) -> str | _KeyFile | None:
    if token:
        return token
    if env.get(TOKEN_ENV):
        return env[TOKEN_ENV]
    path = _key_file_path(token_file, env)
    if path is None:
        return None
    source = _KeyFile(path)
    source.current()  # fail now, not on the first call, when the file is unusable
    return source


def resolve_token(
    token: str | None = None,
    token_file: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> str | None:
    """The inference token: `token`, else $SMOOTHEXPLAIN_TOKEN, else a key file's inference key.

    The key file is `token_file`, else $SMOOTHEXPLAIN_KEY_FILE, else ./key_file.json when it
    exists, else the one of the local server `smoothexplain serve` recorded. None when there
    is no token at all (TorchServe with token auth off).
    """
    source = _token_source(token, token_file, os.environ if env is None else env)
    return source.current() if isinstance(source, _KeyFile) else source


def _tls_settings(
    tls: bool | None, root_certificates: str | Path | None, record_tls: bool
) -> tuple[bool, str | None, bytes | None]:
    """(use TLS, CA file for requests, CA bytes for gRPC). TLS is on when asked, when CA
    certificates are given, or when the local server's record says so; certificates are
    always verified (against `root_certificates`, else the system's trusted roots)."""
    if root_certificates is None:
        return (record_tls if tls is None else bool(tls)), None, None
    if tls is False:
        raise InvalidArgument(
            "root_certificates needs tls (it verifies the server's certificate)",
            field="root_certificates",
        )
    path = Path(root_certificates)
    try:
        pem = path.read_bytes()
    except OSError as error:
        raise InvalidArgument(
            f"cannot read root_certificates {path}: {error.strerror or error}",
            field="root_certificates",
        ) from None
    if b"-----BEGIN CERTIFICATE-----" not in pem:
        raise InvalidArgument(
            f"root_certificates {path} holds no PEM certificate", field="root_certificates"
        )
    return True, str(path), pem


# -- request building -------------------------------------------------------------------------


# What `explain` and `predict` take: encoded image bytes, or a (C, H, W) float array (a numpy
# array, or a torch tensor where torch is installed) of preprocessed model input.
ImageInput: TypeAlias = "bytes | np.ndarray[Any, Any] | TorchTensor"


def _input(image: object) -> pb.Input:
    if isinstance(image, bytes | bytearray | memoryview):
        if not image:
            raise InvalidArgument("input.image is empty", field="input.image")
        return pb.Input(image=bytes(image))
    array = _as_array(image)
    if array is None:
        raise InvalidArgument(
            "image must be PNG/JPEG bytes, a numpy array or a torch.Tensor, got "
            f"{type(image).__name__}",
            field="input",
        )
    if array.ndim != 3 or array.dtype.kind != "f":
        raise InvalidArgument(
            "input.tensor must be a floating-point (C, H, W) tensor, got "
            f"{_dtype_name(image)} of shape {tuple(array.shape)}",
            field="input.tensor",
        )
    return pb.Input(tensor=array_to_message(array, pb.DTYPE_FLOAT32))


def _as_array(image: object) -> np.ndarray[Any, Any] | None:
    """A numpy array, or a torch tensor's values (detached, on the CPU; bfloat16 as float32),
    without importing torch; None for anything else."""
    if isinstance(image, np.ndarray):
        return image
    if type(image).__module__.split(".")[0] == "torch" and hasattr(image, "detach"):
        values = image.detach().cpu()
        if str(values.dtype) == "torch.bfloat16":  # numpy has no bfloat16
            values = values.float()
        array: np.ndarray[Any, Any] = values.numpy()
        return array
    return None


def _dtype_name(image: object) -> str:
    return str(getattr(image, "dtype", type(image).__name__))


def _options(values: Mapping[str, object]) -> pb.ExplainOptions:
    """ExplainOptions from `explain`'s keywords, each value checked against the options table
    here, before any network call (an unknown name is a TypeError)."""
    refuse_unknown(values)
    return to_proto(
        {
            name: check_option(option(name), value, f"options.{name}")
            for name, value in values.items()
            if value is not None
        }
    )


def _in_range(field: str, value: int | None, low: int, high: int) -> int | None:
    return None if value is None else check_integer(field, value, low, high)


def _set(message: Any, name: str, value: object, field: str) -> None:
    """Set one optional scalar field; out-of-range or mistyped values name their field."""
    if value is None:
        return
    try:
        setattr(message, name, value)
    except (TypeError, ValueError) as error:
        raise InvalidArgument(f"{field}: {error}", field=field) from None


def attribution(response: pb.Response) -> Any:
    """The attribution map of an explain response as a float32 (C, H, W) array: a torch tensor
    where torch is installed (the engine or serving extra), else a numpy array (the client
    extra alone).

    Works for the float32 and float16 encodings; raises `InvalidArgument` when the response
    has none (a predict call, or encoding "png").
    """
    message = response.attribution
    if not response.HasField("attribution") or message.dtype == pb.DTYPE_UNSPECIFIED:
        raise InvalidArgument(
            "the response carries no attribution (a predict call, or encoding 'png')",
            field="attribution",
        )
    array = message_to_array(message)
    if importlib.util.find_spec("torch") is None:
        return array
    import torch

    return torch.from_numpy(array)


# -- answers ----------------------------------------------------------------------------------


def _checked(response: pb.Response) -> pb.Response:
    if response.HasField("error"):
        raise ExplainError.from_response(response.error)
    return response


def _parse_grpc_answer(model: str, data: bytes) -> pb.Response:
    if not data:
        raise ExplainError(
            grpc.StatusCode.INTERNAL, f"model {model!r} sent an empty answer", http_status=500
        )
    try:
        return pb.Response.FromString(data)
    except DecodeError:
        raise ExplainError(
            grpc.StatusCode.INTERNAL,
            f"model {model!r} did not answer with a smoothexplain Response "
            "(is it served by the smoothexplain handler?)",
            http_status=500,
        ) from None


def _rest_error(status: int, body: object, text: str) -> ExplainError:
    """An HTTP error answer: our Response's error when present, else TorchServe's own JSON."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        response = pb.Response()
        try:
            json_format.ParseDict(body["error"], response.error, ignore_unknown_fields=True)
        except json_format.ParseError:
            response.Clear()
        if response.error.grpc_code or response.error.message:
            error = ExplainError.from_response(response.error)
            error.http_status = status
            return error
    code = status_for_http(status)
    message = f"HTTP {status}"
    if isinstance(body, dict):
        kind, detail = str(body.get("type", "")), str(body.get("message", ""))
        if kind in _TORCHSERVE_AUTH_TYPES:
            code = grpc.StatusCode.UNAUTHENTICATED
        message = ": ".join(part for part in (kind, detail) if part) or message
    elif text.strip():
        message = f"HTTP {status}: {text.strip()[:200]}"
    died = status in _WORKER_DIED_HTTP and _WORKER_DIED in message
    return ExplainError(code, message, http_status=status, retryable=died or status == 503)


def _parse_rest_answer(model: str, status: int, text: str) -> pb.Response:
    try:
        body: object = json.loads(text) if text.strip() else None
    except json.JSONDecodeError:
        body = None
    if not 200 <= status < 300:
        raise _rest_error(status, body, text)
    if not isinstance(body, dict):
        raise ExplainError(
            grpc.StatusCode.INTERNAL,
            f"model {model!r} did not answer with a JSON smoothexplain Response",
            http_status=status,
        )
    try:
        return json_format.ParseDict(body, pb.Response(), ignore_unknown_fields=True)
    except json_format.ParseError as error:
        raise ExplainError(
            grpc.StatusCode.INTERNAL,
            f"model {model!r} answered an invalid Response: {error}",
            http_status=status,
        ) from None


def _copy(request: pb.Request) -> pb.Request:
    copy = pb.Request()
    copy.CopyFrom(request)
    return copy


def _with_seed(request: pb.Request) -> pb.Request:
    """An explain request with a seed: its own, else a fresh random one (for a same retry)."""
    if not request.explain or request.options.HasField("seed"):
        return request
    seeded = _copy(request)
    seeded.options.seed = secrets.randbits(SEED_BITS)
    return seeded


def _seconds_left(ends_monotonic: float, deadline_unix_ms: int) -> float:
    """Time left to a `request()` call: to its timeout's end or the request's deadline."""
    return min(ends_monotonic - time.monotonic(), deadline_unix_ms / 1000 - time.time())


def _host_port(host: str, port: int) -> str:
    bracketed = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"{bracketed}:{port}"


# -- the client -------------------------------------------------------------------------------


class SmoothExplainClient:
    """Calls smoothexplain models on one TorchServe, over gRPC (default) or REST.

    The token is `token`, else $SMOOTHEXPLAIN_TOKEN, else the `inference` key of TorchServe's
    key_file.json (`token_file`, else $SMOOTHEXPLAIN_KEY_FILE, else ./key_file.json if it
    exists, else the key file of the local server that `smoothexplain serve` recorded); the
    host and ports left None also come from that record (else 127.0.0.1, 8080, 7070); a key
    file is re-read when TorchServe rewrites it. `timeout` is in seconds per
    call, a retry included. With `retry` (the default) a call that TorchServe failed because
    the worker died or was unavailable (`is_retryable`) is sent once more with the same seed.
    The gRPC channel and the HTTP session are reused; call `close()` or use `with`.
    """

    def __init__(
        self,
        *,
        transport: Transport = "grpc",
        host: str | None = None,
        rest_port: int | None = None,
        grpc_port: int | None = None,
        token: str | None = None,
        token_file: Path | None = None,
        timeout: float = 120.0,
        retry: bool = True,
        tls: bool | None = None,
        root_certificates: str | Path | None = None,
    ) -> None:
        if transport not in ("grpc", "rest"):
            raise InvalidArgument(
                f"transport must be 'grpc' or 'rest', got {transport!r}", field="transport"
            )
        if not timeout > 0:
            raise InvalidArgument(f"timeout must be > 0, got {timeout!r}", field="timeout")
        if not isinstance(retry, bool):
            raise InvalidArgument(f"retry must be True or False, got {retry!r}", field="retry")
        if tls is not None and not isinstance(tls, bool):
            raise InvalidArgument(f"tls must be True, False or None, got {tls!r}", field="tls")
        self.transport: Transport = transport
        # Unset address parts come from the local server's record, else TorchServe's defaults.
        record = read_record() if None in (host, rest_port, grpc_port) else None
        self.host = host or (record.host if record else "127.0.0.1")
        self.rest_port = rest_port or (record.rest_port if record else 8080)
        self.grpc_port = grpc_port or (record.grpc_port if record else 7070)
        self.timeout = float(timeout)
        self.retry = retry
        self._token = _token_source(token, token_file, os.environ)
        self.tls, self._ca_file, self._ca = _tls_settings(
            tls, root_certificates, bool(record and record.tls)
        )
        self._lock = threading.Lock()
        self._channel: grpc.Channel | None = None
        self._stub: inference_pb2_grpc.InferenceAPIsServiceStub | None = None
        self._session: requests.Session | None = None

    # -- public API ---------------------------------------------------------------------------

    def predict(self, model: str, image: ImageInput, *, top_k: int | None = None) -> pb.Response:
        """Classify one image (PNG/JPEG bytes) or preprocessed (C, H, W) tensor."""
        request = pb.Request(input=_input(image))
        _set(request, "top_k", _in_range("top_k", top_k, 1, 2**32 - 1), "top_k")
        return self.request(model, request)

    def explain(
        self,
        model: str,
        image: ImageInput,
        *,
        target: int | None = None,
        top_k: int | None = None,
        **options: object,
    ) -> pb.Response:
        """Explain one image or (C, H, W) tensor; an option left out (or None) takes the
        model's configured default.

        `options` are the wire options of the options table (`smoothexplain.protocol.options.
        OPTIONS`, listed in docs/api.md): method, nt_type, noise, nt_samples, stdevs, sigma,
        confidence, seed, n_steps, ig_rule, ig_sampling, noise_sampling, tolerance, precision,
        return_convergence_delta, baseline, layer, cam_resolution, encoding. Enum options take
        the lower-case names of the proto values ("integrated_gradients", "smoothgrad_sq",
        "float32_and_png", ...).
        `tolerance` stops sampling early (the samples used and the error estimate come back as
        `nt_samples` and `relative_error`). An unknown option is a TypeError and a bad value
        `InvalidArgument`, both before any network call. `target` defaults to the top-1 class;
        the same `seed` gives the same attribution.
        """
        request = pb.Request(input=_input(image), explain=True, options=_options(options))
        _set(request, "target", _in_range("target", target, 0, 2**31 - 1), "target")
        _set(request, "top_k", _in_range("top_k", top_k, 1, 2**32 - 1), "top_k")
        return self.request(model, request)

    def request(self, model: str, request: pb.Request) -> pb.Response:
        """Send one Request; the Response, or `ExplainError` if it carries an error.

        Without a `deadline_unix_ms` the request is sent with now + `timeout`, so the server
        skips it if it is still queued when this client has given up (needs synced clocks).
        With `retry`, an explain request without a seed is sent with a random one, and a
        retryable failure is tried once more within what is left of the timeout and deadline.
        """
        if not isinstance(model, str) or not model:
            raise InvalidArgument("model must be a non-empty model name", field="model")
        ends = time.monotonic() + self.timeout
        if not request.HasField("deadline_unix_ms"):
            request = _copy(request)
            request.deadline_unix_ms = int(1000 * (time.time() + self.timeout))
        if not self.retry:
            return self._send(model, request, self.timeout)
        return self._send_retrying(model, _with_seed(request), ends)

    attribution = staticmethod(attribution)

    def close(self) -> None:
        """Close the gRPC channel and HTTP session (a later call opens new ones)."""
        with self._lock:
            channel, session = self._channel, self._session
            self._channel = self._stub = self._session = None
        if channel is not None:
            channel.close()
        if session is not None:
            session.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:  # never shows the token
        port = self.grpc_port if self.transport == "grpc" else self.rest_port
        return f"SmoothExplainClient(transport={self.transport!r}, target={self.host}:{port})"

    # -- transports ---------------------------------------------------------------------------

    def _send(self, model: str, request: pb.Request, timeout: float) -> pb.Response:
        """One call; sent again at once if TorchServe refused a key that `serve` has just
        renewed in the key file (the renewal ends the old key before its expiry)."""
        token = self._current_token()
        try:
            return self._send_with(model, request, timeout, token)
        except grpc.RpcError as error:
            if not _key_refused(error) or (renewed := self._current_token()) == token:
                raise
            return self._send_with(model, request, timeout, renewed)

    def _send_with(
        self, model: str, request: pb.Request, timeout: float, token: str | None
    ) -> pb.Response:
        if self.transport == "grpc":
            return _checked(self._grpc_call(model, request, timeout, token))
        return _checked(self._rest_call(model, request, timeout, token))

    def _send_retrying(self, model: str, request: pb.Request, ends: float) -> pb.Response:
        """`_send`, and once more after a back-off if the failure is retryable and time allows."""
        try:
            return self._send(model, request, self.timeout)
        except grpc.RpcError as error:
            left = _seconds_left(ends, request.deadline_unix_ms)
            if not is_retryable(error) or left <= RETRY_BACKOFF_S:
                raise
            time.sleep(RETRY_BACKOFF_S)  # the first failure stays attached as __context__
            return self._send(model, request, left - RETRY_BACKOFF_S)

    def _current_token(self) -> str | None:
        source = self._token
        return source.current() if isinstance(source, _KeyFile) else source

    def _grpc_stub(self) -> inference_pb2_grpc.InferenceAPIsServiceStub:
        with self._lock:
            if self._stub is None:
                target = _host_port(self.host, self.grpc_port)
                options = [
                    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ]
                if self.tls:  # verified against root_certificates, else the system's roots
                    credentials = grpc.ssl_channel_credentials(root_certificates=self._ca)
                    self._channel = grpc.secure_channel(target, credentials, options=options)
                else:
                    self._channel = grpc.insecure_channel(target, options=options)
                self._stub = inference_pb2_grpc.InferenceAPIsServiceStub(self._channel)
            return self._stub

    def _grpc_call(
        self, model: str, request: pb.Request, timeout: float, token: str | None
    ) -> pb.Response:
        metadata = (("authorization", f"Bearer {token}"),) if token else ()
        call = inference_pb2.PredictionsRequest(
            model_name=model, input={GRPC_KEY: request.SerializeToString()}
        )
        reply = self._grpc_stub().Predictions(call, metadata=metadata, timeout=timeout)
        return _parse_grpc_answer(model, reply.prediction)

    def _http(self) -> requests.Session:
        with self._lock:
            if self._session is None:
                self._session = requests.Session()
            return self._session

    def _rest_call(
        self, model: str, request: pb.Request, timeout: float, token: str | None
    ) -> pb.Response:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        verb = "explanations" if request.explain else "predictions"
        scheme = "https" if self.tls else "http"
        url = f"{scheme}://{_host_port(self.host, self.rest_port)}/{verb}/{quote(model, safe='')}"
        body = json_format.MessageToJson(request, preserving_proto_field_name=True, indent=None)
        try:
            answer = self._http().post(
                url, data=body, headers=headers, timeout=timeout, verify=self._ca_file or True
            )
        except requests.Timeout:
            raise ExplainError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"no answer from {url} within {timeout:g} s",
                http_status=504,
            ) from None
        except requests.RequestException as error:
            raise ExplainError(
                grpc.StatusCode.UNAVAILABLE,
                f"cannot reach {url}: {type(error).__name__}",
                http_status=503,
                retryable=True,
            ) from None
        try:
            text = answer.content.decode("utf-8", errors="replace")
            return _parse_rest_answer(model, answer.status_code, text)
        except ExplainError as error:
            error.redact(token)  # in case a server echoes the Authorization header
            raise
