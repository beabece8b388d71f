"""Fault-injection servers and helpers shared by test_faults.py and the soak.

The models are the demo weights behind faulty.py: "slow" sleeps SLEEP seconds in every
explain-sized call (8 rows per chunk), "tight" too with a 4 s responseTimeout, "one_long_call"
sleeps 5 s in one call with a 3 s responseTimeout, "oom" runs out of memory above 8 rows, and
"capped" is "slow" with limits.max_batch_seconds = 4 (admission by cost).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from smoothexplain.ops.launcher import TorchServeInstance

from .archives import FAULTY, build_archive

__all__ = [
    "HANG_GUARD",
    "SLEEP",
    "build_fault_store",
    "calls",
    "slow_calls",
    "until",
    "wait_for_new_worker",
]

CLASS = "faulty:FaultyShapesNet"
SLEEP = 0.2  # seconds per explain chunk of the slow models
HANG_GUARD = 120.0  # waiting this long for anything is a hang


def build_fault_store(store: Path, artifacts: Path, logs: Path) -> dict[str, str]:
    """The four fault models' archives in `store`; call logs go to `logs/<model>.calls`."""
    slow = {"slow_above": 4, "sleep": SLEEP}
    batching = {"batchSize": 4, "maxBatchDelay": 300}
    models: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
        "slow": ({**slow, "calls_file": str(logs / "slow.calls")}, batching),
        "tight": ({**slow, "calls_file": str(logs / "tight.calls")}, {"responseTimeout": 4}),
        "one_long_call": ({"slow_above": 4, "sleep": 5.0}, {"responseTimeout": 3}),
        "oom": ({"oom_above": 8, "calls_file": str(logs / "oom.calls")}, batching),
        "capped": ({**slow, "calls_file": str(logs / "capped.calls")}, batching),
    }
    limits = {"capped": {"max_batch_seconds": 4.0}}
    for name, (kwargs, keys) in models.items():
        build_archive(
            store, name, artifacts, model_class=CLASS, model_kwargs=kwargs, torchserve=keys,
            limits=limits.get(name), extra_files=[FAULTY],
            nt_samples_batch_size=8 if "sleep" in kwargs else 64,
        )  # fmt: skip
    return {name: f"{name}.mar" for name in models}


def calls(path: Path) -> list[str]:
    """The model's call log: "call <rows>" or "oom <rows>" per model call."""
    return path.read_text().splitlines() if path.exists() else []


def slow_calls(path: Path) -> int:
    """Explain-sized calls (more than 4 rows) so far."""
    return sum(1 for line in calls(path) if line.startswith("call ") and int(line[5:]) > 4)


def until(condition: Callable[[], bool], seconds: float = HANG_GUARD) -> float:
    """Wait for `condition` and return the seconds it took; reaching `seconds` is a hang."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > seconds:
            raise TimeoutError(f"gave up waiting after {seconds:g} s")
        time.sleep(0.05)
    return time.monotonic() - started


def wait_for_new_worker(server: TorchServeInstance, model: str, old: list[int]) -> float:
    """Seconds until `model` has a READY worker whose PID is not in `old`."""

    def ready() -> bool:
        workers = server.describe_model(model).get("workers", [])
        return any(w.get("status") == "READY" and w.get("pid") not in old for w in workers)

    return until(ready)
