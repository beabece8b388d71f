"""The explorer's logins: one-time tokens exchanged for sessions held in an HttpOnly cookie.

`serve` prints a URL carrying a login token. The page's first request spends it: the token is
burnt, a fresh one is minted for the next browser (`on_token` is told, so the login file stays
current), and the browser gets a session id in a cookie that scripts cannot read. Sessions
expire after `SESSION_SECONDS` unused; at most `MAX_SESSIONS` live at once (the oldest goes).
Tokens and session ids are compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections.abc import Callable

__all__ = ["COOKIE", "MAX_SESSIONS", "SESSION_SECONDS", "Sessions", "session_cookie"]

COOKIE = "smoothexplain_session"
SESSION_SECONDS = 12 * 3600.0
MAX_SESSIONS = 64
_TOKEN_BYTES = 32


def _nothing(_token: str) -> None:
    pass


class Sessions:
    """The current login token and the live sessions; thread-safe."""

    def __init__(
        self,
        on_token: Callable[[str], None] = _nothing,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._on_token, self._clock = on_token, clock
        self._lock = threading.Lock()
        self._sessions: dict[str, float] = {}  # session id → last use
        self._token = self._mint()

    @property
    def token(self) -> str:
        """The login token not yet spent."""
        with self._lock:
            return self._token

    def _mint(self) -> str:
        token = secrets.token_urlsafe(_TOKEN_BYTES)
        self._on_token(token)
        return token

    def redeem(self, token: str) -> str | None:
        """A new session id for the current login token (which is then burnt), else None."""
        with self._lock:
            if not hmac.compare_digest(token.encode(), self._token.encode()):
                return None
            self._token = self._mint()
            self._forget_expired()
            if len(self._sessions) >= MAX_SESSIONS:
                del self._sessions[min(self._sessions, key=self._sessions.__getitem__)]
            session = secrets.token_urlsafe(_TOKEN_BYTES)
            self._sessions[session] = self._clock()
            return session

    def valid(self, session: str | None) -> bool:
        """Whether `session` is live (its use is recorded: it stays live while used)."""
        if not session:
            return False
        with self._lock:
            self._forget_expired()
            found = next(
                (s for s in self._sessions if hmac.compare_digest(s.encode(), session.encode())),
                None,
            )
            if found is None:
                return False
            self._sessions[found] = self._clock()
            return True

    def _forget_expired(self) -> None:
        now = self._clock()
        for session, used in list(self._sessions.items()):
            if now - used > SESSION_SECONDS:
                del self._sessions[session]


def session_cookie(session: str, secure: bool) -> str:
    """The Set-Cookie value: HttpOnly (no script reads it), SameSite=Strict (no other site's
    page sends it), Secure over TLS."""
    flags = f"; Max-Age={int(SESSION_SECONDS)}; Path=/; HttpOnly; SameSite=Strict"
    return f"{COOKIE}={session}{flags}{'; Secure' if secure else ''}"
