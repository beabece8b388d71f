"""The local server record: written by serve, read by the client and CLI, ignored when stale."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import asdict
from pathlib import Path

import pytest

from smoothexplain.client.remote import SmoothExplainClient, resolve_token
from smoothexplain.protocol.local_server import (
    STATE_DIR_ENV,
    ServerRecord,
    clear_record,
    read_record,
    record_path,
    stale_record,
    write_record,
)


def _record(tmp_path: Path, pid: int, key: str = "secret-key") -> ServerRecord:
    key_file = tmp_path / "server" / "key_file.json"
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key_file.write_text(json.dumps({"inference": {"key": key}}))
    return ServerRecord("127.0.0.1", 18080, 17070, False, str(key_file), pid, str(tmp_path))


def test_record_location_follows_the_environment(tmp_path: Path) -> None:
    assert record_path({STATE_DIR_ENV: str(tmp_path)}) == tmp_path / "server.json"
    xdg = record_path({"XDG_STATE_HOME": str(tmp_path)})
    assert xdg == tmp_path / "smoothexplain" / "server.json"
    assert record_path({}).parts[-4:] == (".local", "state", "smoothexplain", "server.json")


def test_a_live_record_gives_ports_and_key_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no ./key_file.json here
    env = {STATE_DIR_ENV: str(tmp_path / "state")}
    write_record(_record(tmp_path, os.getpid()), env)
    found = read_record(env)
    assert found is not None and found.grpc_port == 17070
    assert resolve_token(env=env) == "secret-key"
    monkeypatch.setenv(STATE_DIR_ENV, env[STATE_DIR_ENV])
    for name in ("SMOOTHEXPLAIN_TOKEN", "SMOOTHEXPLAIN_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    client = SmoothExplainClient()
    assert (client.host, client.rest_port, client.grpc_port) == ("127.0.0.1", 18080, 17070)
    explicit = SmoothExplainClient(grpc_port=7999, rest_port=8999, host="localhost")
    assert (explicit.host, explicit.rest_port, explicit.grpc_port) == ("localhost", 8999, 7999)


def test_explicit_sources_win_over_the_record(tmp_path: Path) -> None:
    env = {STATE_DIR_ENV: str(tmp_path / "state")}
    write_record(_record(tmp_path, os.getpid()), env)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"inference": {"key": "from-flag"}}))
    assert resolve_token(token_file=other, env=env) == "from-flag"
    assert resolve_token(env={**env, "SMOOTHEXPLAIN_TOKEN": "from-env"}) == "from-env"


def test_a_record_of_a_dead_process_is_ignored(tmp_path: Path) -> None:
    child = subprocess.Popen(["true"])
    child.wait()  # a pid that no longer runs
    env = {STATE_DIR_ENV: str(tmp_path / "state")}
    write_record(_record(tmp_path, child.pid), env)
    assert read_record(env) is None
    assert resolve_token(env=env) is None


def test_clear_removes_only_its_own_record(tmp_path: Path) -> None:
    env = {STATE_DIR_ENV: str(tmp_path / "state")}
    write_record(_record(tmp_path, os.getpid()), env)
    clear_record(os.getpid() + 1, env)  # another server's stop keeps this record
    assert record_path(env).is_file()
    clear_record(os.getpid(), env)
    assert not record_path(env).exists()


def test_a_corrupt_record_is_ignored(tmp_path: Path) -> None:
    env = {STATE_DIR_ENV: str(tmp_path)}
    record_path(env).write_text("{not json")
    assert read_record(env) is None
    record_path(env).write_text(json.dumps({"host": "x"}))
    assert read_record(env) is None


@pytest.mark.parametrize(
    "pid", ["abc", 99999999999999, -1, 0, True, None, 1.5], ids=lambda p: repr(p)
)
def test_a_record_with_an_impossible_pid_is_ignored(tmp_path: Path, pid: object) -> None:
    """0 and -1 would name process groups to os.kill; strings and huge numbers would raise."""
    env = {STATE_DIR_ENV: str(tmp_path)}
    record = {**asdict(_record(tmp_path, os.getpid())), "pid": pid}
    record_path(env).write_text(json.dumps(record))
    assert read_record(env) is None
    assert resolve_token(env=env) is None
    assert stale_record(env) is not None


def test_a_newer_record_with_extra_keys_is_still_read(tmp_path: Path) -> None:
    env = {STATE_DIR_ENV: str(tmp_path)}
    record = {**asdict(_record(tmp_path, os.getpid())), "future_key": 1}
    record_path(env).write_text(json.dumps(record))
    found = read_record(env)
    assert found is not None and found.pid == os.getpid() and stale_record(env) is None


def test_a_wrongly_typed_record_is_ignored(tmp_path: Path) -> None:
    env = {STATE_DIR_ENV: str(tmp_path)}
    record = {**asdict(_record(tmp_path, os.getpid())), "grpc_port": "7070"}
    record_path(env).write_text(json.dumps(record))
    assert read_record(env) is None


@pytest.mark.parametrize("content", ["-1", "0", "abc", "", "99999999999999", "LIVE"])
def test_stop_signals_nothing_but_a_serve_process(tmp_path: Path, content: str) -> None:
    """`serve.pid` is a hint: -1 or 0 would SIGTERM process groups, a reused number anyone."""
    from smoothexplain.client.cli import main

    bystander = subprocess.Popen(["sleep", "60"])
    try:
        text = str(bystander.pid) if content == "LIVE" else content
        (tmp_path / "serve.pid").write_text(text + "\n")
        assert main(["stop", "--workdir", str(tmp_path), "--timeout", "1"]) == 1
        assert bystander.poll() is None  # still running
    finally:
        bystander.kill()
        bystander.wait()
