"""The client room: `SmoothExplainClient` over REST and gRPC, and the `smoothexplain` CLI.

Needs only the `client` extra (numpy, grpcio, protobuf, requests, Pillow); never imports
serving code.
"""

from .remote import (
    KEY_FILE_ENV,
    RETRY_BACKOFF_S,
    TOKEN_ENV,
    ExplainError,
    SmoothExplainClient,
    Transport,
    attribution,
    is_retryable,
    resolve_token,
    status_for_http,
)

__all__ = [
    "KEY_FILE_ENV",
    "RETRY_BACKOFF_S",
    "TOKEN_ENV",
    "ExplainError",
    "SmoothExplainClient",
    "Transport",
    "attribution",
    "is_retryable",
    "resolve_token",
    "status_for_http",
]
