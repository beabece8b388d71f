"""What one TorchServe instance is told: its config.properties, environment and command line.

Every value that differs between instances (ports, addresses, the model store) is written on
top of a shipped base config, and every path TorchServe writes to (worker sockets, the
launcher's pid file, logs) is pointed into the instance's work directory.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from .process_group import TorchServeError
from .sockets import Ports

__all__ = [
    "DEFAULT_BASE_CONFIG",
    "SEQUENCE_ID_HEADER",
    "SEQUENCE_ID_KEY",
    "Endpoints",
    "check_socket_dir",
    "derive_config",
    "instance_values",
    "normalise_models",
    "server_env",
    "token_auth_enabled",
    "torchserve_command",
]

# Shipped with the package (package data), so `serve` works from an installed wheel too.
DEFAULT_BASE_CONFIG: Final = Path(__file__).resolve().parent / "config.properties"

#: The config key naming the request header that marks StreamPredictions2 messages, and the
#: name ts_handler.py looks for (kept here too: the launcher must not import the handler).
SEQUENCE_ID_KEY: Final = "ts_header_key_sequence_id"
SEQUENCE_ID_HEADER: Final = "ts_request_sequence_id"

#: Linux limit for a Unix socket path (sun_path is 108 bytes including the NUL).
_MAX_SOCKET_PATH: Final = 107
#: TorchServe names worker sockets ``<java.io.tmpdir>/.ts.sock.<port>``; ports are 5 digits.
_SOCKET_NAME_LEN: Final = len("/.ts.sock.65535")

_KEY_RE: Final = re.compile(r"^\s*([^#!\s=:][^=:\s]*)\s*[=:]")


def _escape_property(value: str) -> str:
    """Escape a value for a Java ``.properties`` file (backslash is the escape char)."""
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def derive_config(base: str, overrides: Mapping[str, str], *, header: str | None = None) -> str:
    """Return ``base`` (properties text) with ``overrides`` applied.

    Existing keys are replaced in place (comments are kept); new keys are appended. Values
    in ``overrides`` are raw strings and are escaped here.
    """
    pending = dict(overrides)
    out: list[str] = [f"# {line}".rstrip() for line in header.splitlines()] if header else []
    for line in base.splitlines():
        m = _KEY_RE.match(line)
        if m and m.group(1) in pending:
            key = m.group(1)
            out.append(f"{key}={_escape_property(pending.pop(key))}")
        else:
            out.append(line)
    if pending:
        out.append("")
        out.append("# --- per-instance additions")
        out.extend(f"{k}={_escape_property(v)}" for k, v in pending.items())
    return "\n".join(out) + "\n"


def normalise_models(models: Mapping[str, str] | Sequence[str]) -> dict[str, str]:
    """Startup models as name -> archive, from a mapping or ``"name=file.mar"`` specs."""
    if isinstance(models, Mapping):
        pairs = list(models.items())
    else:
        pairs = []
        for spec in models:
            name, sep, archive = spec.partition("=")
            if not sep or not name or not archive:
                raise ValueError(f"model spec must be 'name=file.mar', got {spec!r}")
            pairs.append((name, archive))
    result: dict[str, str] = {}
    for name, archive in pairs:
        if name in result:
            raise ValueError(f"duplicate model name {name!r}")
        result[name] = archive
    if not result:
        raise ValueError("at least one startup model is required")
    return result


@dataclass(frozen=True)
class Endpoints:
    """Where an instance on ``host`` with ``ports`` answers."""

    host: str
    ports: Ports

    @property
    def inference_url(self) -> str:
        return f"http://{self.host}:{self.ports.inference}"

    @property
    def management_url(self) -> str:
        return f"http://{self.host}:{self.ports.management}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.ports.metrics}"

    @property
    def grpc_target(self) -> str:
        return f"{self.host}:{self.ports.grpc_inference}"

    @property
    def grpc_management_target(self) -> str:
        return f"{self.host}:{self.ports.grpc_management}"


def token_auth_enabled(base_config: Path, overrides: Mapping[str, str]) -> bool:
    """False when ``disable_token_authorization`` is true in the overrides, else the base."""
    value = overrides.get("disable_token_authorization")
    if value is None:
        found = re.search(
            r"^\s*disable_token_authorization\s*[=:]\s*(\S+)",
            base_config.read_text(encoding="utf-8"),
            re.MULTILINE,
        )
        value = found.group(1) if found else "false"
    return value.strip().lower() != "true"


def instance_values(
    endpoints: Endpoints, model_store: Path, overrides: Mapping[str, str]
) -> dict[str, str]:
    """The per-instance settings written on top of the base config."""
    store_regex = re.escape(model_store.as_posix())
    values = {
        "inference_address": endpoints.inference_url,
        "management_address": endpoints.management_url,
        "metrics_address": endpoints.metrics_url,
        "grpc_inference_address": endpoints.host,
        "grpc_inference_port": str(endpoints.ports.grpc_inference),
        "grpc_management_address": endpoints.host,
        "grpc_management_port": str(endpoints.ports.grpc_management),
        "model_store": str(model_store),
        "allowed_urls": f"file://{store_regex}/[^/]+\\.mar",
    }
    values.update(overrides)
    # The handler finds StreamPredictions2 messages by this header name (ts_handler.py).
    values[SEQUENCE_ID_KEY] = SEQUENCE_ID_HEADER
    return values


def server_env(temp_dir: Path, log_dir: Path, extra: Mapping[str, str]) -> dict[str, str]:
    """This process's environment with TorchServe's temp and log paths redirected."""
    env = dict(os.environ)
    # The launcher prefers TS_CONFIG_FILE over --ts-config; never inherit one.
    env.pop("TS_CONFIG_FILE", None)
    tmp = str(temp_dir)
    env.update(
        {
            # java.io.tmpdir (worker sockets) comes from TEMP; the launcher's pid file
            # goes to tempfile.gettempdir(), which prefers TMPDIR, so set both.
            "TEMP": tmp,
            "TMPDIR": tmp,
            "TMP": tmp,
            "LOG_LOCATION": str(log_dir),
            "METRICS_LOCATION": str(log_dir),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


def torchserve_command(
    model_store: Path, config_path: Path, models: Mapping[str, str]
) -> list[str]:
    """``torchserve --start --foreground`` for this interpreter's environment."""
    exe = Path(sys.executable).parent / "torchserve"
    torchserve = str(exe) if exe.is_file() else shutil.which("torchserve")
    if torchserve is None:
        raise TorchServeError("torchserve executable not found")
    return [
        torchserve,
        "--start",
        "--foreground",
        "--ncs",
        "--model-store",
        str(model_store),
        "--ts-config",
        str(config_path),
        "--models",
        *(f"{name}={archive}" for name, archive in models.items()),
    ]


def check_socket_dir(workdir: Path, temp_dir: Path) -> None:
    """Raise unless worker Unix socket paths under ``temp_dir`` fit the kernel's limit."""
    sock_len = len(str(temp_dir)) + _SOCKET_NAME_LEN
    if sock_len > _MAX_SOCKET_PATH:
        raise TorchServeError(
            f"workdir {workdir} is too long for worker Unix sockets "
            f"({sock_len} > {_MAX_SOCKET_PATH} bytes); use a shorter path"
        )
