"""Prometheus multiprocess files that cannot kill the worker when their disk is full.

prometheus-client memory-maps sparse files in $PROMETHEUS_MULTIPROC_DIR (`<kind>_<pid>.db`,
64 KiB to start, doubled when full). On a full file system the first write into a page with
no block behind it raises SIGBUS, which kills the worker with no exception to catch: TorchServe
restarts it, it dies again while loading, and the model never becomes ready (measured; see
docs/reliability.md). `reserve_multiprocess_files` gives this process's files their blocks up
front with posix_fallocate, which fails with ENOSPC instead, so the caller can stop recording.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["FILE_KINDS", "RESERVED_BYTES", "reserve_multiprocess_files"]

# Every file prefix prometheus-client 0.2x uses: the metric type, and the mode for gauges.
_GAUGE_MODES = ("all", "liveall", "min", "livemin", "max", "livemax", "sum", "livesum")
FILE_KINDS = ("counter", "histogram", "summary", *(f"gauge_{mode}" for mode in _GAUGE_MODES))
# Per file: twice prometheus-client's initial size, so our bounded label sets never make a
# file grow into unallocated space.
RESERVED_BYTES = 128 * 1024


def reserve_multiprocess_files(directory: str | None, pid: int, size: int = RESERVED_BYTES) -> bool:
    """Allocate `size` bytes of real blocks for each of this process's files in `directory`.

    True when every file is backed (or there is no directory: nothing is written to disk);
    False when the file system refused (full, read-only, gone): record nothing then.
    """
    if not directory:
        return True
    for kind in FILE_KINDS:
        path = Path(directory) / f"{kind}_{pid}.db"
        try:
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                os.posix_fallocate(descriptor, 0, max(size, os.fstat(descriptor).st_size))
            finally:
                os.close(descriptor)
        except OSError:
            return False
    return True
