"""Process and device memory readings for the metrics (Linux /proc and cgroups, CUDA).

Every reader returns `None` when the number cannot be had (no /proc, no permission, no CUDA)
instead of raising: metrics must never break serving.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

import torch

__all__ = [
    "cuda_peak_bytes",
    "host_memory_limit_bytes",
    "peak_rss_bytes",
    "reset_cuda_peak",
    "reset_peak_rss",
    "rss_bytes",
    "total_rss_bytes",
]

_PAGE = os.sysconf("SC_PAGE_SIZE")
_UNLIMITED = 1 << 60  # cgroup v1 reports "no limit" as a number near 2**63


def rss_bytes(pid: int | str = "self") -> int | None:
    """Resident set size of one process (from /proc/<pid>/statm)."""
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def total_rss_bytes(pids: Iterable[int]) -> int:
    """Sum of the RSS of `pids` that still exist (shared pages are counted once per process)."""
    return sum(value for pid in pids if (value := rss_bytes(pid)) is not None)


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM); Linux ≥ 4.0 accepts "5" in clear_refs for that."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss_bytes() -> int | None:
    """This process's peak RSS since the last `reset_peak_rss` (or since it started)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else None


def reset_cuda_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def cuda_peak_bytes(device: torch.device) -> int | None:
    """`torch.cuda.max_memory_allocated` since the last `reset_cuda_peak`; None off CUDA."""
    if device.type != "cuda":
        return None
    return int(torch.cuda.max_memory_allocated(device))


def _cgroup_limits() -> Iterable[int]:
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return
    for line in lines:
        _, controllers, path = line.split(":", 2)
        path = path.lstrip("/")
        if controllers == "":  # cgroup v2: the unified hierarchy
            candidates = [
                Path("/sys/fs/cgroup", path, "memory.max"),
                Path("/sys/fs/cgroup/memory.max"),
            ]
        elif "memory" in controllers.split(","):
            root = Path("/sys/fs/cgroup/memory")
            candidates = [root / path / "memory.limit_in_bytes", root / "memory.limit_in_bytes"]
        else:
            continue
        for candidate in candidates:
            try:
                text = candidate.read_text().strip()
            except OSError:
                continue
            if text.isdigit() and int(text) < _UNLIMITED:
                yield int(text)
            break


def host_memory_limit_bytes() -> int | None:
    """The memory this process's container may use: its cgroup limit, else physical memory."""
    limits = list(_cgroup_limits())
    try:
        pages = os.sysconf("SC_PHYS_PAGES")
        limits.append(pages * _PAGE)
    except (OSError, ValueError):
        pass
    return min(limits) if limits else None
