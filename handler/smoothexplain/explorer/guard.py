"""Which requests reach the explorer at all: the Host header and, on changes, the Origin.

A page on another site can point a name it controls at 127.0.0.1 (DNS rebinding) and so talk
to a loopback port as "its own" origin; the browser then sends that name as the Host header.
Only the names the explorer is really reached by are accepted: its bind address, the loopback
names when it listens on loopback or on every interface, and this machine's own names when it
listens beyond loopback. A state-changing request must also carry an Origin naming the same
scheme and host, which another site's page cannot forge.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

__all__ = [
    "LOOPBACK_NAMES",
    "allowed_hosts",
    "host_allowed",
    "is_loopback",
    "origin_allowed",
]

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
_ANY = ("0.0.0.0", "::", "")
_DEFAULT_PORT = {"http": 80, "https": 443}


def is_loopback(host: str) -> bool:
    """Whether a bind address is loopback only (localhost, 127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bracketed(name: str) -> str:
    return f"[{name}]" if ":" in name and not name.startswith("[") else name


def _machine_names() -> list[str]:
    return [socket.gethostname(), socket.getfqdn()]


def allowed_hosts(
    bind_host: str, port: int, machine_names: Iterable[str] | None = None
) -> frozenset[str]:
    """Every `name:port` a browser may send as Host to an explorer bound to `bind_host`."""
    names = {bind_host} if bind_host not in _ANY else set()
    if is_loopback(bind_host) or bind_host in _ANY:
        names.update(LOOPBACK_NAMES)
    if not is_loopback(bind_host):
        names.update(_machine_names() if machine_names is None else machine_names)
    return frozenset(f"{_bracketed(n).lower()}:{port}" for n in names if n)


def _with_port(host: str, scheme: str) -> str:
    host = host.strip().lower()
    has_port = host.rsplit(":", 1)[-1].isdigit() and not host.endswith("]")
    if has_port and (not host.startswith("[") or "]:" in host):
        return host
    return f"{host}:{_DEFAULT_PORT[scheme]}"


def host_allowed(header: str | None, allowed: frozenset[str], scheme: str) -> bool:
    """Whether the Host header names this explorer (a port left out is the scheme's)."""
    return bool(header) and _with_port(str(header), scheme) in allowed


def origin_allowed(origin: str | None, host_header: str, scheme: str) -> bool:
    """Whether Origin is this very page's: the same scheme and the same host and port."""
    if not origin or "://" not in origin:
        return False
    their_scheme, their_host = origin.strip().lower().split("://", 1)
    if their_scheme != scheme or "/" in their_host:
        return False
    return _with_port(their_host, scheme) == _with_port(host_header, scheme)
