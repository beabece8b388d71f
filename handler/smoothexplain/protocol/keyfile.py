"""TorchServe's `key_file.json`, parsed once into typed values (stdlib only, no torch).

TorchServe 0.12 writes the file into its working directory when token authorization is on::

    {"management": {"key": "...", "expiration time": "2025-01-01T10:00:24.801167Z"},
     "inference": {"key": "...", "expiration time": "..."},
     "API": {"key": "..."}}

and rewrites it whenever a key is renewed through its token API, so callers re-read it rather
than keep a parsed copy for long. The keys are secrets: no error raised here quotes the file,
and no exception chain keeps the text (a `JSONDecodeError` would hold it in `.doc`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from .errors import InvalidArgument

__all__ = [
    "TOKEN_KINDS",
    "KeyEntry",
    "KeyFile",
    "KeyFileError",
    "TokenKind",
    "bearer",
    "load_key_file",
    "parse_key_file",
    "read_key",
]

TokenKind = Literal["inference", "management", "API"]
TOKEN_KINDS: Final[tuple[TokenKind, ...]] = ("management", "inference", "API")

# The argument that names a key file in the client API and the CLI (--token-file).
_FIELD: Final = "token_file"


class KeyFileError(InvalidArgument):
    """The key file cannot be read, is not JSON, or lacks the key asked for."""

    def __init__(self, message: str) -> None:
        super().__init__(message, field=_FIELD)


@dataclass(frozen=True)
class KeyEntry:
    """One kind's key; `expiration_time` as TorchServe writes it (ISO 8601, UTC), if any."""

    key: str = field(repr=False)
    expiration_time: str | None = None


@dataclass(frozen=True)
class KeyFile:
    """A parsed key file: the usable entries by kind, and the JSON object they came from.

    `document` is None when the file holds JSON that is not an object; `entries` then is empty.
    """

    path: Path
    entries: Mapping[TokenKind, KeyEntry]
    document: Mapping[str, Any] | None = field(default=None, repr=False)

    def key(self, kind: TokenKind) -> str:
        entry = self.entries.get(kind)
        if entry is None:
            raise KeyFileError(f"TorchServe key file {self.path} has no {kind}.key entry")
        return entry.key


def _entry(value: object) -> KeyEntry | None:
    if not isinstance(value, dict):
        return None
    key, stamp = value.get("key"), value.get("expiration time")
    if not isinstance(key, str) or not key:
        return None
    return KeyEntry(key, stamp if isinstance(stamp, str) else None)


_NOT_JSON: Final = object()


def parse_key_file(text: str, path: Path) -> KeyFile:
    """Parse key-file `text` (read from `path`, which only names it in errors)."""
    try:
        data: object = json.loads(text)
    except json.JSONDecodeError:
        data = _NOT_JSON  # raised below, outside the handler, so no chain holds the text
    if data is _NOT_JSON:
        raise KeyFileError(f"TorchServe key file {path} is not JSON")
    if not isinstance(data, dict):
        return KeyFile(path, {})
    entries = {kind: entry for kind in TOKEN_KINDS if (entry := _entry(data.get(kind)))}
    return KeyFile(path, entries, data)


def load_key_file(path: Path) -> KeyFile:
    """Read and parse the key file at `path`."""
    try:
        raw = path.read_bytes()
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise KeyFileError(f"cannot read TorchServe key file {path}: {reason}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = ""  # not JSON either way; the decode error would quote the bytes
    return parse_key_file(text, path)


def read_key(path: Path, kind: TokenKind) -> str:
    """The `kind` key in the key file at `path`."""
    return load_key_file(path).key(kind)


def bearer(key: str) -> dict[str, str]:
    """REST headers that present `key` to TorchServe."""
    return {"Authorization": f"Bearer {key}"}
