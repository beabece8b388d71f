"""TorchServe's key_file.json (protocol/keyfile.py), as the client and the launcher read it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from smoothexplain.client.remote import resolve_token
from smoothexplain.ops.launcher import TorchServeError, TorchServeInstance
from smoothexplain.protocol.errors import InvalidArgument
from smoothexplain.protocol.keyfile import KeyFileError, load_key_file, read_key

SECRET = "s3cr3t-inference-key"
STAMP = "2025-01-01T10:00:24.801167Z"
VALID = {
    "management": {"key": "mgmt-key", "expiration time": STAMP},
    "inference": {"key": SECRET, "expiration time": STAMP},
    "API": {"key": "api-key"},
}


def _write(tmp_path: Path, content: str | bytes) -> Path:
    path = tmp_path / "key_file.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def _chain(error: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def test_a_valid_file_gives_each_kind_its_key_and_expiry(tmp_path: Path) -> None:
    keys = load_key_file(_write(tmp_path, json.dumps(VALID)))
    assert keys.key("inference") == SECRET
    assert keys.key("management") == "mgmt-key"
    assert keys.key("API") == "api-key"
    assert keys.entries["inference"].expiration_time == STAMP
    assert keys.entries["API"].expiration_time is None
    assert keys.document == VALID
    assert SECRET not in repr(keys)


@pytest.mark.parametrize(
    "document",
    [
        {"management": {"key": "m"}},
        {"inference": {"key": ""}},
        {"inference": {"key": 7}},
        {"inference": "not-an-object"},
        ["inference", SECRET],
    ],
)
def test_a_missing_kind_is_named_with_the_field(tmp_path: Path, document: object) -> None:
    path = _write(tmp_path, json.dumps(document))
    with pytest.raises(KeyFileError) as caught:
        read_key(path, "inference")
    assert str(caught.value) == f"TorchServe key file {path} has no inference.key entry"
    assert caught.value.field == "token_file"
    assert isinstance(caught.value, InvalidArgument)


@pytest.mark.parametrize(
    "content",
    [f'{{"inference": {{"key": "{SECRET}"', f"{SECRET}", b'{"k": "\xff' + SECRET.encode()],
)
def test_malformed_json_is_refused_without_quoting_it(tmp_path: Path, content: str | bytes) -> None:
    path = _write(tmp_path, content)
    with pytest.raises(KeyFileError) as caught:
        load_key_file(path)
    assert str(caught.value) == f"TorchServe key file {path} is not JSON"
    for error in _chain(caught.value):
        assert SECRET not in str(error)
        assert SECRET not in repr(vars(error))
    assert caught.value.__context__ is None


def test_an_unreadable_file_says_why(tmp_path: Path) -> None:
    path = tmp_path / "absent.json"
    with pytest.raises(KeyFileError) as caught:
        load_key_file(path)
    assert str(caught.value).startswith(f"cannot read TorchServe key file {path}: No such")


def test_the_client_keeps_its_messages_and_field(tmp_path: Path) -> None:
    assert resolve_token(token_file=_write(tmp_path, json.dumps(VALID)), env={}) == SECRET
    path = _write(tmp_path, json.dumps({"management": {"key": SECRET}}))
    with pytest.raises(InvalidArgument) as caught:
        resolve_token(token_file=path, env={})
    assert caught.value.field == "token_file"
    assert "inference.key" in str(caught.value)
    assert SECRET not in str(caught.value)


def test_the_launcher_reads_tokens_and_raw_keys(tmp_path: Path) -> None:
    instance = TorchServeInstance(tmp_path, ["m=m.mar"], tmp_path / "ts")
    instance.workdir.mkdir()
    instance.key_file.write_text(json.dumps(VALID), encoding="utf-8")
    assert instance.inference_token == SECRET
    assert instance.api_token == "api-key"
    assert instance.read_keys() == VALID
    assert instance.inference_headers() == {"Authorization": f"Bearer {SECRET}"}
    instance.key_file.write_text(json.dumps({"inference": {"key": SECRET}}), encoding="utf-8")
    with pytest.raises(TorchServeError, match="no 'management' key"):
        instance.token("management")
