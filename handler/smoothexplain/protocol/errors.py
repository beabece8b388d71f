"""The exception tree and the one table that maps each error to HTTP and gRPC.

    SmoothExplainError
     ├── InvalidArgument (also a ValueError)   a request field is wrong      400 / INVALID_ARGUMENT
     │    ├── LimitExceeded                     a server-side limit is hit    400 / INVALID_ARGUMENT
     │    └── UnsupportedMediaType              the body cannot be decoded    415 / INVALID_ARGUMENT
     ├── Unauthenticated                        no or wrong token             401 / UNAUTHENTICATED
     ├── ModelOutputError                       the model broke its contract  500 / INTERNAL
     ├── ResourceExhausted                      out of memory after retries 503 / RESOURCE_EXHAUSTED
     ├── Overloaded                             batch-mates took the time   503 / UNAVAILABLE
     ├── DeadlineExceeded                       the client gave up first    504 / DEADLINE_EXCEEDED
     └── InternalError                          anything unexpected           500 / INTERNAL

Every adapter (TorchServe handler, gRPC client, REST client) maps errors through `status_of`,
and the clients translate between transports through `grpc_code_of_http` / `http_of_grpc_code`
(which add what TorchServe's frontend answers by itself), so the numbers live here only. gRPC
codes are kept as names so this module does not import grpc.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Starts the worker-log line of a model whose configuration can never load (a config error,
#: not a transient failure): `serve` stops waiting for it at once and prints the line.
LOAD_REFUSED_MARK = "smoothexplain: model refused at load:"

__all__ = [
    "LOAD_REFUSED_MARK",
    "DeadlineExceeded",
    "ErrorStatus",
    "InternalError",
    "InvalidArgument",
    "LimitExceeded",
    "ModelOutputError",
    "Overloaded",
    "ResourceExhausted",
    "SmoothExplainError",
    "Unauthenticated",
    "UnsupportedMediaType",
    "grpc_code_of_http",
    "http_of_grpc_code",
    "status_of",
]


class SmoothExplainError(Exception):
    """Base of every error this package raises on purpose."""

    def __init__(self, message: str, *, field: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidArgument(SmoothExplainError, ValueError):
    """A request field or API argument has a value outside what is allowed; `field` names it."""


class LimitExceeded(InvalidArgument):
    """A value is valid in itself but above a server-side limit (named in the message)."""


class UnsupportedMediaType(InvalidArgument):
    """The request body is in an encoding we cannot decode."""


class Unauthenticated(SmoothExplainError):
    """The request carried no token or a wrong one."""


class ModelOutputError(SmoothExplainError):
    """The served model returned something other than a (rows, classes) score tensor."""


class ResourceExhausted(SmoothExplainError):
    """The work did not fit in memory even after splitting chunks down to one row."""


class Overloaded(SmoothExplainError):
    """The request fits the server's limits but not beside its batch-mates; not computed, so
    sending it again (with the same seed) is safe."""


class DeadlineExceeded(SmoothExplainError):
    """The request's deadline passed before its work started; it was not computed."""


class InternalError(SmoothExplainError):
    """An unexpected failure; the message is safe to show, details are in the server log."""


@dataclass(frozen=True)
class ErrorStatus:
    http: int
    grpc: str


_TABLE: tuple[tuple[type[SmoothExplainError], ErrorStatus], ...] = (
    (LimitExceeded, ErrorStatus(400, "INVALID_ARGUMENT")),
    (UnsupportedMediaType, ErrorStatus(415, "INVALID_ARGUMENT")),
    (InvalidArgument, ErrorStatus(400, "INVALID_ARGUMENT")),
    (Unauthenticated, ErrorStatus(401, "UNAUTHENTICATED")),
    (ModelOutputError, ErrorStatus(500, "INTERNAL")),
    (ResourceExhausted, ErrorStatus(503, "RESOURCE_EXHAUSTED")),
    (Overloaded, ErrorStatus(503, "UNAVAILABLE")),
    (DeadlineExceeded, ErrorStatus(504, "DEADLINE_EXCEEDED")),
    (InternalError, ErrorStatus(500, "INTERNAL")),
)


# What the platform in front of the handler answers by itself (TorchServe's frontend, the
# network), for the clients' translation between transports. Where a status means something
# else there than in _TABLE, the platform's reading wins for HTTP → gRPC (a bare 503 is
# TorchServe's "no worker", UNAVAILABLE) and _TABLE's for gRPC → HTTP.
_PLATFORM: tuple[ErrorStatus, ...] = (
    ErrorStatus(403, "PERMISSION_DENIED"),
    ErrorStatus(404, "NOT_FOUND"),
    ErrorStatus(408, "DEADLINE_EXCEEDED"),
    # TorchServe's max_request_size; gRPC reports an oversized message as RESOURCE_EXHAUSTED,
    # so both transports give the same code for the same oversized input.
    ErrorStatus(413, "RESOURCE_EXHAUSTED"),
    ErrorStatus(429, "RESOURCE_EXHAUSTED"),
    ErrorStatus(501, "UNIMPLEMENTED"),
    ErrorStatus(502, "UNAVAILABLE"),
    ErrorStatus(503, "UNAVAILABLE"),
)
_OURS = tuple(status for _, status in _TABLE)
_GRPC_OF_HTTP = {s.http: s.grpc for s in (*_OURS, *_PLATFORM)}
_HTTP_OF_GRPC = {s.grpc: s.http for s in (*reversed(_PLATFORM), *reversed(_OURS))}


def grpc_code_of_http(http_status: int) -> str:
    """The gRPC code name for an HTTP error status (anything unlisted is INTERNAL)."""
    return _GRPC_OF_HTTP.get(http_status, "INTERNAL")


def http_of_grpc_code(code: str) -> int:
    """The HTTP status for a gRPC code name (anything unlisted is 500)."""
    return _HTTP_OF_GRPC.get(code, 500)


def status_of(error: BaseException) -> ErrorStatus:
    """HTTP status and gRPC code name for any exception (unknown ones are internal errors)."""
    for kind, status in _TABLE:
        if isinstance(error, kind):
            return status
    return ErrorStatus(500, "INTERNAL")
