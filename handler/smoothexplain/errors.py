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

Every adapter (TorchServe handler, gRPC client, REST client) maps errors through `status_of`, so the
numbers live here only. gRPC codes are kept as names so this module does not import grpc.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
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


def status_of(error: BaseException) -> ErrorStatus:
    """HTTP status and gRPC code name for any exception (unknown ones are internal errors)."""
    for kind, status in _TABLE:
        if isinstance(error, kind):
            return status
    return ErrorStatus(500, "INTERNAL")
