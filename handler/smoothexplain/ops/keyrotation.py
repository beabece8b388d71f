"""Renewing TorchServe's management and inference keys before they expire (serve's supervisor).

TorchServe 0.12 gives both keys a lifetime (`token_expiration_min`, 60 minutes by default) and
never renews them itself: once expired, every call answers 400, the supervisor's own worker
checks and `/readyz` included. Its token API (`GET /token?type=...` on the management port,
authorised by the API key) writes a fresh key and expiry into key_file.json. `KeyRenewer`
calls it once a key has less than a quarter of its lifetime left; clients that read the key
file (the typed client re-reads it when it changes) follow without a restart.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Literal, Protocol

__all__ = ["RENEWED_KINDS", "KeyKind", "KeyRenewer", "seconds_left"]

KeyKind = Literal["management", "inference"]
RENEWED_KINDS: tuple[KeyKind, ...] = ("management", "inference")
LEFT_SHARE = 0.25  # renew once less than this share of the lifetime is left


class Server(Protocol):
    """What renewing needs of a TorchServeInstance."""

    def read_keys(self) -> dict[str, Any]: ...

    def renew_key(self, kind: KeyKind) -> None: ...


def seconds_left(keys: Mapping[str, Any], kind: KeyKind, now: float) -> float | None:
    """Seconds until `kind`'s key expires (negative once it has), None if the file says no
    expiry ("expiration time" as TorchServe writes it: ISO 8601 in UTC, e.g. ...24.801167Z)."""
    entry = keys.get(kind)
    stamp = entry.get("expiration time") if isinstance(entry, dict) else None
    if not isinstance(stamp, str):
        return None
    try:
        expires = datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        return None
    return expires - now


class KeyRenewer:
    """Renews each key with less than LEFT_SHARE of `lifetime_s` left (call `check` often).

    `margin_s` is the least lead: at least two of the caller's check intervals, so a key with
    a short lifetime is still renewed before it runs out.
    """

    def __init__(
        self,
        server: Server,
        lifetime_s: float,
        margin_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.server, self.clock = server, clock
        self.lead_s = max(LEFT_SHARE * lifetime_s, margin_s)

    def check(self) -> list[KeyKind]:
        """One look at the key file; returns the kinds renewed."""
        keys, now = self.server.read_keys(), self.clock()
        due = [
            kind
            for kind in RENEWED_KINDS
            if (left := seconds_left(keys, kind, now)) is not None and left < self.lead_s
        ]
        for kind in due:
            self.server.renew_key(kind)
        return due
