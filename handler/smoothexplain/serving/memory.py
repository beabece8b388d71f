"""Process and device memory readings for the metrics and the default memory budget (Linux
/proc and cgroups, CUDA).

Every reader returns `None` when the number cannot be had (no /proc, no permission, no CUDA)
instead of raising: metrics must never break serving.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

__all__ = [
    "AUTO_BUDGET_SHARE",
    "cuda_peak_bytes",
    "default_memory_budget",
    "free_memory_bytes",
    "host_memory_limit_bytes",
    "peak_rss_bytes",
    "reset_cuda_peak",
    "reset_peak_rss",
    "rss_bytes",
    "serving_memory_budget",
    "total_rss_bytes",
    "worker_count",
]

log = logging.getLogger(__name__)

_PAGE = os.sysconf("SC_PAGE_SIZE")
_UNLIMITED = 1 << 60  # cgroup v1 reports "no limit" as a number near 2**63
# Share of the free memory the automatic budgets of a host's workers take together.
AUTO_BUDGET_SHARE = 0.5
CLEAR_REFS = Path("/proc/self/clear_refs")
# What other threads may allocate between the reset and the check of it.
_RESET_SLACK = 32 * 2**20


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
    """Reset this process's peak RSS (VmHWM); Linux >= 4.0 accepts "5" in clear_refs for that.
    False when the reset did not take (a kernel or sandbox that accepts the write and ignores
    it): the peak then stays within _RESET_SLACK of the RSS only where the reset worked."""
    try:
        CLEAR_REFS.write_text("5")
    except OSError:
        return False
    peak, rss = peak_rss_bytes(), rss_bytes()
    return peak is not None and rss is not None and peak <= rss + _RESET_SLACK


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


# Per cgroup version: the limit, the usage and the memory.stat key of reclaimable page cache.
_V2_FILES = ("memory.max", "memory.current", "inactive_file")
_V1_FILES = ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
_ROOT = Path("/")


def _memory_cgroups(root: Path) -> Iterator[tuple[Path, tuple[str, str, str]]]:
    """This process's memory cgroup directories (its own path, else the hierarchy's root, as
    seen inside a container), each with its version's file names."""
    try:
        lines = (root / "proc/self/cgroup").read_text().splitlines()
    except OSError:
        return
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":  # cgroup v2: the unified hierarchy
            base, names = root / "sys/fs/cgroup", _V2_FILES
        elif "memory" in controllers.split(","):
            base, names = root / "sys/fs/cgroup/memory", _V1_FILES
        else:
            continue
        for directory in (base / path.lstrip("/"), base):
            if (directory / names[0]).is_file():
                yield directory, names
                break


def _read_bytes(path: Path) -> int | None:
    """A byte count from a cgroup file; None for "max", a v1 "no limit" or an unreadable file."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and int(text) < _UNLIMITED else None


def _stat_value(path: Path, key: str) -> int:
    """One `key value` line of a memory.stat (0 when missing)."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return 0
    for line in lines:
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return 0


def _cgroup_limits(root: Path = _ROOT) -> Iterator[int]:
    for directory, (limit_file, _, _) in _memory_cgroups(root):
        limit = _read_bytes(directory / limit_file)
        if limit is not None:
            yield limit


def _cgroup_free(root: Path) -> Iterator[int]:
    """Each limited cgroup's limit less its working set (usage less the inactive page cache
    the kernel reclaims before it kills)."""
    for directory, (limit_file, usage_file, inactive_key) in _memory_cgroups(root):
        limit, usage = _read_bytes(directory / limit_file), _read_bytes(directory / usage_file)
        if limit is None or usage is None:
            continue
        working_set = max(usage - _stat_value(directory / "memory.stat", inactive_key), 0)
        yield max(limit - working_set, 0)


def _meminfo_available(root: Path) -> int | None:
    try:
        text = (root / "proc/meminfo").read_text()
    except OSError:
        return None
    match = re.search(r"^MemAvailable:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else None


def free_memory_bytes(root: Path = _ROOT) -> int | None:
    """Memory this process may still take without the kernel's OOM killer: the least of each
    limited cgroup's room and the host's MemAvailable (both count what every process,
    this one included, already uses). None when neither can be read."""
    candidates = list(_cgroup_free(root))
    available = _meminfo_available(root)
    if available is not None:
        candidates.append(available)
    return min(candidates) if candidates else None


def worker_count() -> int:
    """TorchServe's default workers per model on a host without GPUs: one per usable CPU."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except (AttributeError, OSError):
        return max(os.cpu_count() or 1, 1)


def default_memory_budget(workers: int, root: Path = _ROOT) -> int | None:
    """Bytes one worker's model calls may use when the config sets no budget:
    AUTO_BUDGET_SHARE of the free memory, split evenly between `workers` (each may be in a
    pass at once; the rest is headroom for what the per-row probe does not count: the
    backward's transient gradients, the batch's inputs and answers). None: memory unknown."""
    free = free_memory_bytes(root)
    if free is None:
        return None
    return max(int(free * AUTO_BUDGET_SHARE) // max(workers, 1), 1)


def serving_memory_budget(
    budget_mb: int | None, automatic: bool, device: torch.device
) -> tuple[int | None, bool]:
    """The serving scheduler's memory budget in bytes (None: none) and whether it is hard.

    A configured `memory_budget_mb` is a target, as ever (a row above it still runs alone).
    Without one, a CPU model with `automatic` gets `default_memory_budget` for TorchServe's
    default worker count, hard: a row that cannot fit is refused, not left to the OOM killer.
    CUDA models get none: running out of device memory is an exception there, which the
    scheduler answers by halving its passes.
    """
    if budget_mb is not None:
        return budget_mb * 2**20, False
    if not automatic or device.type != "cpu":
        return None, False
    budget = default_memory_budget(worker_count())
    log.info("automatic memory budget: %s MiB a model call", budget and budget // 2**20)
    return budget, budget is not None


def host_memory_limit_bytes() -> int | None:
    """The memory this process's container may use: its cgroup limit, else physical memory."""
    limits = list(_cgroup_limits())
    try:
        pages = os.sysconf("SC_PHYS_PAGES")
        limits.append(pages * _PAGE)
    except (OSError, ValueError):
        pass
    return min(limits) if limits else None
