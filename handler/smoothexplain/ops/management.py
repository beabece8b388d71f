"""The few calls the launcher makes to TorchServe's management API (stdlib HTTP, loopback).

Every HTTP error answer becomes a :class:`TorchServeError` naming the call and the status;
connection errors stay ``OSError``s, so a caller polling a starting server can tell them apart.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

from ..protocol.keyfile import bearer
from .keyrotation import KeyKind
from .process_group import TorchServeError

__all__ = ["describe_model", "has_ready_worker", "renew_key", "scale_workers", "worker_pids"]


def _call(request: urllib.request.Request, timeout: float, what: str) -> bytes:
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            body: bytes = resp.read()
    except urllib.error.HTTPError as exc:
        raise TorchServeError(f"{what}: HTTP {exc.code}") from exc
    return body


def describe_model(url: str, name: str, headers: Mapping[str, str]) -> dict[str, Any]:
    """``GET /models/{name}`` on the management API at ``url`` (first entry of the reply)."""
    request = urllib.request.Request(f"{url}/models/{name}", headers=dict(headers))
    body = json.loads(_call(request, 5, f"describe {name}"))
    if isinstance(body, list) and body and isinstance(body[0], dict):
        return body[0]
    raise TorchServeError(f"describe {name}: unexpected reply {body!r}")


def scale_workers(
    url: str,
    name: str,
    min_worker: int,
    max_worker: int,
    headers: Mapping[str, str],
    timeout: float,
) -> None:
    """``PUT /models/{name}``, answered once the workers are there (``synchronous=true``)."""
    query = f"min_worker={min_worker}&max_worker={max_worker}&synchronous=true"
    request = urllib.request.Request(
        f"{url}/models/{name}?{query}", method="PUT", headers=dict(headers)
    )
    _call(request, timeout, f"scale {name}")


def renew_key(url: str, kind: KeyKind, api_key: str) -> None:
    """A fresh ``kind`` key and expiry in key_file.json, through the token API
    (``GET /token?type=...`` on the management port, authorised by the API key)."""
    request = urllib.request.Request(f"{url}/token?type={kind}", headers=bearer(api_key))
    _call(request, 5, f"renew the {kind} key")


def has_ready_worker(description: Mapping[str, Any]) -> bool:
    return any(w.get("status") == "READY" for w in description.get("workers", []))


def worker_pids(description: Mapping[str, Any]) -> list[int]:
    """PIDs of the backend workers in a ``describe_model`` reply."""
    pids = (worker.get("pid") for worker in description.get("workers", []))
    return [pid for pid in pids if isinstance(pid, int) and pid > 0]
