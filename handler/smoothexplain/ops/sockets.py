"""TCP ports for a TorchServe instance, and which sockets its processes listen on (Linux /proc)."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = [
    "Address",
    "Ports",
    "decode_proc_addr",
    "free_port",
    "free_ports",
    "is_loopback",
    "listening_sockets",
]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

#: ``st`` column value of a listening socket in /proc/net/tcp{,6}.
_TCP_LISTEN: Final = "0A"
_SOCKET_LINK: Final = "socket:["


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that was free a moment ago (bind to port 0)."""
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Return ``count`` distinct free ports (all sockets are held until every port is picked)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass(frozen=True)
class Ports:
    """The five TCP ports one TorchServe instance listens on."""

    inference: int
    management: int
    metrics: int
    grpc_inference: int
    grpc_management: int

    @classmethod
    def pick(cls, host: str = "127.0.0.1") -> Ports:
        return cls(*free_ports(5, host))

    def all(self) -> tuple[int, ...]:
        return (
            self.inference,
            self.management,
            self.metrics,
            self.grpc_inference,
            self.grpc_management,
        )


def decode_proc_addr(hex_addr: str) -> Address:
    """Decode an address from /proc/net/tcp{,6} (host-endian 32-bit words, hex)."""
    raw = bytes.fromhex(hex_addr)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    if len(words) == 4:
        return ipaddress.IPv4Address(words)
    return ipaddress.IPv6Address(words)


def is_loopback(addr: Address) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback (::ffff:127.x.y.z)."""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped.is_loopback
    return addr.is_loopback


def _socket_inodes(pids: Iterable[int]) -> set[str]:
    """Inodes of the sockets the processes ``pids`` hold open (unreadable fds are skipped)."""
    inodes: set[str] = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith(_SOCKET_LINK):
                        inodes.add(target[len(_SOCKET_LINK) : -1])
    return inodes


def listening_sockets(pids: Iterable[int]) -> list[tuple[Address, int]]:
    """``(address, port)`` of every TCP socket in LISTEN state held by one of ``pids``."""
    inodes = _socket_inodes(pids)
    result: list[tuple[Address, int]] = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                if len(cols) < 10 or cols[3] != _TCP_LISTEN or cols[9] not in inodes:
                    continue
                addr_hex, port_hex = cols[1].split(":")
                result.append((decode_proc_addr(addr_hex), int(port_hex, 16)))
    return sorted(result, key=lambda item: (item[1], str(item[0])))
