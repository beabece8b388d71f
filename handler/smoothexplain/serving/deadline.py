"""The deadline policy: how long a batch and each of its requests may compute.

Two bounds meet here: the server's (limits.max_batch_seconds, and RESPONSE_TIMEOUT_SHARE of the
model's responseTimeout, so that a batch is answered before TorchServe kills its worker) and
the client's own deadline_unix_ms. Times are `time.monotonic()` unless named unix.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from .._proto.smoothexplain.v1 import explain_pb2 as pb
from ..protocol.errors import DeadlineExceeded, SmoothExplainError
from .budget import RESPONSE_TIMEOUT_SHARE

__all__ = [
    "batch_seconds",
    "client_deadline",
    "cost_bound",
    "expired",
    "stop_at",
    "time_for",
    "too_late",
]

_SERVER_BOUND = (
    "its batch may take (limits.max_batch_seconds, or 80 % of the model's responseTimeout)"
)


def cost_bound(max_batch_seconds: float, response_timeout: float | None) -> float:
    """The most seconds one batch may compute, from its start."""
    if response_timeout is None:
        return max_batch_seconds
    return min(max_batch_seconds, RESPONSE_TIMEOUT_SHARE * response_timeout)


def batch_seconds(
    max_batch_seconds: float, response_timeout: float | None, batch_started: float, now: float
) -> float:
    """The seconds the batch started at `batch_started` may still compute from `now`."""
    if response_timeout is None:
        return max_batch_seconds
    share = RESPONSE_TIMEOUT_SHARE * response_timeout
    return min(max_batch_seconds, batch_started + share - now)


def time_for(request: pb.Request, seconds: float) -> tuple[float, str]:
    """Seconds `request` may compute, given the batch's `seconds`, and what sets that bound."""
    if request.HasField("deadline_unix_ms"):
        own = request.deadline_unix_ms / 1000 - time.time()
        if own < seconds:
            return own, "left before its deadline_unix_ms"
    return seconds, _SERVER_BOUND


def too_late(cost: float, left: float, why: str) -> DeadlineExceeded:
    """The refusal of an explanation of about `cost` seconds that has `left` seconds (`why`)."""
    return DeadlineExceeded(
        f"this explanation would take about {cost:.1f} s of compute, more "
        f"than the {max(left, 0.0):.1f} s {why}; it was not computed",
        field="deadline_unix_ms" if "deadline" in why else "",
    )


def stop_at(
    requests: Sequence[pb.Request], batch_started: float, response_timeout: float | None
) -> tuple[float | None, str, str]:
    """When the engine must stop, why, and the request field that set it: the batch's share
    of responseTimeout, or the latest client deadline when every request carries one."""
    until: float | None = None
    reason = field = ""
    if response_timeout is not None:
        until = batch_started + RESPONSE_TIMEOUT_SHARE * response_timeout
        reason = (
            f"the batch used its {RESPONSE_TIMEOUT_SHARE:.0%} share of the model's "
            f"responseTimeout ({response_timeout:g} s) before this explanation was done"
        )
    deadlines = [r.deadline_unix_ms for r in requests if r.HasField("deadline_unix_ms")]
    if requests and len(deadlines) == len(requests):
        client = time.monotonic() + max(deadlines) / 1000 - time.time()
        if until is None or client < until:
            until, field = client, "deadline_unix_ms"
            reason = "deadline_unix_ms passed while computing; the rest was not computed"
    return until, reason, field


def expired(request: pb.Request, now_ms: float) -> DeadlineExceeded | None:
    """DEADLINE_EXCEEDED for a request whose client deadline passed before `now_ms` (unix)."""
    if request.HasField("deadline_unix_ms") and request.deadline_unix_ms <= now_ms:
        return DeadlineExceeded(
            "deadline_unix_ms passed before this request's turn; it was not computed",
            field="deadline_unix_ms",
        )
    return None


def client_deadline(error: SmoothExplainError | None) -> bool:
    """Whether a request failed on its own deadline_unix_ms (the client's choice, not a
    server failure: counted apart so that a past deadline cannot fire the 5xx alert)."""
    return isinstance(error, DeadlineExceeded) and error.field == "deadline_unix_ms"
