"""Where the local `smoothexplain serve` runs: a record the CLI and the client fall back to.

`serve` writes one JSON file per user once its models are ready and removes it when it stops:
`$SMOOTHEXPLAIN_STATE_DIR/server.json`, else `$XDG_STATE_HOME/smoothexplain/server.json`, else
`~/.local/state/smoothexplain/server.json`. It holds addresses, TLS and the *path* of
TorchServe's key file, never a token. A record whose process is gone is ignored, so a crashed
server cannot send clients to a stale port. Deliberately free of grpc/requests/torch imports.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path

__all__ = [
    "STATE_DIR_ENV",
    "ServerRecord",
    "clear_record",
    "read_record",
    "record_path",
    "stale_record",
    "write_record",
]

STATE_DIR_ENV = "SMOOTHEXPLAIN_STATE_DIR"


@dataclass(frozen=True)
class ServerRecord:
    host: str
    rest_port: int
    grpc_port: int
    tls: bool
    key_file: str  # absolute path of TorchServe's key_file.json ("" with token auth off)
    pid: int  # the `serve` process
    workdir: str
    models: tuple[str, ...] = ()


def record_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get(STATE_DIR_ENV):
        return Path(env[STATE_DIR_ENV]) / "server.json"
    state = Path(env["XDG_STATE_HOME"]) if env.get("XDG_STATE_HOME") else None
    return (state or Path.home() / ".local" / "state") / "smoothexplain" / "server.json"


def write_record(record: ServerRecord, env: Mapping[str, str] | None = None) -> Path:
    path = record_path(env)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(asdict(record), indent=2) + "\n")
    partial.replace(path)  # readers never see half a record
    return path


def _alive(pid: object) -> bool:
    # 0 and negative numbers name process groups, not a process: never a server's pid.
    if isinstance(pid, bool) or not isinstance(pid, int) or not 0 < pid < 2**31:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):  # gone, or another user's process
        return False
    return True


def _parse(raw: object) -> ServerRecord | None:
    """A record from JSON; keys a newer `serve` may add are ignored, wrong types refused."""
    if not isinstance(raw, dict):
        return None
    known = {f.name: f.type for f in fields(ServerRecord)}
    values = {k: v for k, v in raw.items() if k in known}
    values["models"] = tuple(str(m) for m in values.get("models", ()) or ())
    kinds = {"host": str, "rest_port": int, "grpc_port": int, "tls": bool, "key_file": str}
    kinds |= {"pid": int, "workdir": str}
    if any(not isinstance(values.get(k), t) for k, t in kinds.items()):
        return None
    return ServerRecord(**values)


def read_record(env: Mapping[str, str] | None = None) -> ServerRecord | None:
    """The running local server, or None (no record, unreadable, or its process is gone)."""
    try:
        record = _parse(json.loads(record_path(env).read_text()))
    except (OSError, ValueError, TypeError):
        return None
    return record if record is not None and _alive(record.pid) else None


def stale_record(env: Mapping[str, str] | None = None) -> str | None:
    """A description of a record left by a server that no longer runs (for error hints)."""
    path = record_path(env)
    if not path.exists() and not path.is_symlink():
        return None
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return f"{path} is not a readable server record; remove it"
    if read_record(env) is not None:
        return None
    pid = raw.get("pid") if isinstance(raw, dict) else None
    return f"{path} records a server (pid {pid}) that no longer runs; start one or remove it"


def clear_record(pid: int, env: Mapping[str, str] | None = None) -> None:
    """Remove the record if it still describes server `pid` (a newer server keeps its own)."""
    path = record_path(env)
    try:
        if json.loads(path.read_text()).get("pid") == pid:
            path.unlink()
    except (OSError, ValueError, AttributeError):
        pass
