"""`smoothexplain serve` as the container runs it: a child process, stopped with SIGTERM."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from smoothexplain.ops.launcher import free_ports

PORT_FLAGS = ("inference", "management", "metrics", "grpc-inference", "grpc-management", "exporter")


class ServeProcess:
    """`python -m smoothexplain.client.cli serve` on free loopback ports, files under `workdir`.

    The explorer page is off (`--no-explorer`) unless `explorer`: then it gets a free port too,
    so no test server ever takes the default 8084 of a server `make run` left running."""

    def __init__(
        self,
        workdir: Path,
        store: Path,
        models: Sequence[str],
        extra: Sequence[str] = (),
        explorer: bool = False,
    ) -> None:
        self.workdir, self.store, self.models, self.extra = workdir, store, models, extra
        flags = (*PORT_FLAGS, "explorer") if explorer else PORT_FLAGS
        self.ports = dict(zip(flags, free_ports(len(flags)), strict=True))
        self.explorer = explorer
        self.log = workdir.parent / f"{workdir.name}.serve.log"
        self.endpoints: dict[str, Any] = {}
        self.returncode: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        ports = [arg for k, v in self.ports.items() for arg in (f"--{k}-port", str(v))]
        return [
            sys.executable,
            "-m",
            "smoothexplain.client.cli",
            "serve",
            "--workdir",
            str(self.workdir),
            "--model-store",
            str(self.store),
            "--models",
            *self.models,
            *ports,
            *([] if self.explorer else ["--no-explorer"]),
            *self.extra,
        ]

    def start(self, timeout: float = 240.0) -> ServeProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self._proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        endpoints = self.workdir / "endpoints.json"
        deadline = time.monotonic() + timeout
        while not endpoints.is_file():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"serve did not start:\n{self.log.read_text()[-4000:]}")
            time.sleep(0.25)
        self.endpoints = json.loads(endpoints.read_text())
        return self

    def keys(self) -> dict[str, dict[str, str]]:
        """The server's key_file.json as it is now (TorchServe rewrites it on renewal)."""
        keys: dict[str, dict[str, str]] = json.loads(Path(self.endpoints["key_file"]).read_text())
        return keys

    def leftover_pids(self) -> list[int]:
        """Live processes started for this server (their command line names its workdir)."""
        mark = str(self.workdir).encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                with contextlib.suppress(OSError):
                    status = (entry / "stat").read_text()
                    if mark in (entry / "cmdline").read_bytes() and ") Z " not in status:
                        pids.append(int(entry.name))
        return pids

    def terminate(self, timeout: float = 60.0) -> int | None:
        """SIGTERM serve (what Kubernetes sends) and wait for it; its exit code."""
        proc, self._proc = self._proc, None
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                self.returncode = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                self.returncode = proc.wait(timeout=10)
        return self.returncode

    def stop(self) -> int | None:
        """`terminate`, then SIGKILL whatever it left running (teardown after a failure)."""
        self.terminate()
        for pid in self.leftover_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return self.returncode

    def __enter__(self) -> ServeProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
