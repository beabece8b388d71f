"""Which models have lost their TorchServe worker, and bringing them back (serve's supervisor).

TorchServe 0.12 restarts a worker whose process exits, from the frontend thread that drives it.
When that thread itself dies (it threw while answering: a StreamPredictions2 answer to a call
its client had ended did, before ts_handler.py stopped answering those), nothing restarts it:
the management API keeps listing the worker READY with the dead process's PID, /ping stays
Healthy, and the model's requests queue for ever. Scaling the model to no workers and back
through the management API drops the lost thread and starts a new worker; `Watchdog` does that
once a model has looked lost for `grace` seconds.

    unserved_models   models without a READY worker whose process is alive (/readyz: 503)
    lost_models       models with a READY worker whose process is gone (the Watchdog's cue)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

__all__ = ["Watchdog", "lost_models", "unserved_models"]


class Server(Protocol):
    """What the checks need of a TorchServeInstance."""

    @property
    def models(self) -> Mapping[str, str]: ...

    def describe_model(self, name: str) -> dict[str, Any]: ...

    def process_pids(self) -> list[int]: ...

    def scale_workers(self, name: str, min_worker: int, max_worker: int) -> None: ...


def _ready_pids(described: Mapping[str, Any]) -> list[object]:
    workers = described.get("workers", [])
    return [w.get("pid") for w in workers if isinstance(w, dict) and w.get("status") == "READY"]


def _models(server: Server, keep: Callable[[list[object], set[int]], bool]) -> list[str]:
    live = set(server.process_pids())  # workers are in the server's process group
    return [
        name
        for name in sorted(server.models)
        if keep(_ready_pids(server.describe_model(name)), live)
    ]


def unserved_models(server: Server) -> list[str]:
    """Models that cannot answer now: no READY worker, or none whose process is alive."""
    return _models(server, lambda ready, live: not any(pid in live for pid in ready))


def lost_models(server: Server) -> list[str]:
    """Models listing a READY worker whose process no longer exists. A worker TorchServe is
    restarting is listed otherwise (not READY, or with its new PID) for the few seconds it
    takes, so only a lasting mismatch means the frontend thread is gone."""
    return _models(server, lambda ready, live: any(pid not in live for pid in ready))


class Watchdog:
    """Restarts the workers of models lost for at least `grace` seconds (call `check` often)."""

    def __init__(
        self, server: Server, grace: float = 15.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.server, self.grace, self.clock = server, grace, clock
        self._lost_since: dict[str, float] = {}

    def check(self) -> list[str]:
        """One look at every model; returns the models whose workers were restarted."""
        now = self.clock()
        lost = lost_models(self.server)
        self._lost_since = {name: self._lost_since.get(name, now) for name in lost}
        due = [name for name, since in self._lost_since.items() if now - since >= self.grace]
        for name in due:
            self.restart(name)
            del self._lost_since[name]
        return due

    def restart(self, name: str) -> None:
        """No workers, then the model's own worker counts again."""
        described = self.server.describe_model(name)
        low, high = int(described["minWorkers"]), int(described["maxWorkers"])
        self.server.scale_workers(name, 0, high)
        self.server.scale_workers(name, low, high)
