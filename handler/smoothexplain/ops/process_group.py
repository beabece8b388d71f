"""Supervising one command and every process it starts, as its own process group (Linux).

TorchServe's launcher starts a JVM, which starts Python workers; all of them stay in the
launcher's process group, so the group id finds them all in ``/proc`` and one signal reaches
them all. ``ProcessGroup.stop`` shuts them down without leaving orphans for init to reap.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

__all__ = [
    "ProcessGroup",
    "TorchServeError",
    "children",
    "group_pids",
    "proc_stat",
    "read_log",
]


class TorchServeError(RuntimeError):
    """TorchServe failed to start, died, or did not become ready in time."""


def proc_stat(pid: int | str) -> tuple[str, int, int] | None:
    """``(state, ppid, pgrp)`` of a process from ``/proc/<pid>/stat``, or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the parenthesised command name: state ppid pgrp ...
    fields = stat[stat.rfind(")") + 2 :].split()
    if len(fields) < 3:
        return None
    return fields[0], int(fields[1]), int(fields[2])


def group_pids(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid`` (Linux ``/proc`` scan)."""
    pids: list[int] = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            st = proc_stat(entry.name)
            if st is not None and st[2] == pgid and st[0] not in ("Z", "X"):
                pids.append(int(entry.name))
    return sorted(pids)


def children(parent: int, pgid: int) -> list[int]:
    """The processes of group ``pgid`` whose parent is ``parent``."""
    result = []
    for pid in group_pids(pgid):
        st = proc_stat(pid)
        if st is not None and st[1] == parent:
            result.append(pid)
    return result


def _signal_pid(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def read_log(path: Path, offset: int = 0) -> str:
    """The text of a log file from byte ``offset`` on ("" when it cannot be read)."""
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            return fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


class ProcessGroup:
    """``argv`` started in a new session (its pid is the group id), output appended to ``log``."""

    def __init__(
        self, argv: Sequence[str], *, cwd: Path, env: Mapping[str, str], log: Path
    ) -> None:
        self._console: IO[bytes] | None = log.open("ab")
        try:
            self._proc = subprocess.Popen(
                list(argv),
                cwd=cwd,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=self._console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except BaseException:
            self._console.close()
            raise
        self.pgid = self._proc.pid
        atexit.register(self.stop)

    def poll(self) -> int | None:
        """The leader's exit code, or None while it runs."""
        return self._proc.poll()

    def pids(self) -> list[int]:
        return group_pids(self.pgid)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the leader and everything in its group; wait until all are gone.

        First SIGTERM goes to the leader's children only (for TorchServe: the JVM), so that
        the foreground leader reaps them and exits by itself (the JVM's shutdown hook stops
        and reaps the Python workers). Whatever is still alive in the group after
        ``timeout / 2`` gets SIGTERM, and SIGKILL at ``timeout``. Safe to call repeatedly.
        """
        atexit.unregister(self.stop)
        proc, pgid = self._proc, self.pgid
        deadline = time.monotonic() + timeout
        if proc.poll() is None:
            for pid in children(proc.pid, pgid):
                _signal_pid(pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=timeout / 2)
        if not self._wait_empty(2.0):
            _signal_group(pgid, signal.SIGTERM)
            self._wait_empty(max(0.0, deadline - time.monotonic()))
        if not self._wait_empty(0.0):
            _signal_group(pgid, signal.SIGKILL)
            self._wait_empty(10.0)
        if self._console is not None:
            self._console.close()
            self._console = None

    def _wait_empty(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            self._proc.poll()  # reaps the leader once it has exited
            if self._proc.returncode is not None and not group_pids(self.pgid):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
