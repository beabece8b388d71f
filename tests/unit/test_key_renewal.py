"""Key renewal (serve's supervisor, keyrotation.py) and the client's resend with a renewed key."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest

from smoothexplain._proto.smoothexplain.v1 import explain_pb2 as pb
from smoothexplain.client.remote import ExplainError, SmoothExplainClient
from smoothexplain.ops.keyrotation import KeyRenewer, seconds_left

NOW = 1_800_000_000.0


def _stamp(at: float) -> str:  # as TorchServe writes it
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class FakeServer:
    def __init__(self, management_left: float, inference_left: float) -> None:
        self.keys: dict[str, Any] = {
            "management": {"key": "m", "expiration time": _stamp(NOW + management_left)},
            "inference": {"key": "i", "expiration time": _stamp(NOW + inference_left)},
            "API": {"key": "a"},
        }
        self.renewed: list[str] = []

    def read_keys(self) -> dict[str, Any]:
        return self.keys

    def renew_key(self, kind: str) -> None:
        self.renewed.append(kind)
        self.keys[kind]["expiration time"] = _stamp(NOW + 3600)


def test_seconds_left_reads_torchserve_stamps() -> None:
    keys = FakeServer(90.5, -3).keys
    assert seconds_left(keys, "management", NOW) == pytest.approx(90.5, abs=1e-5)
    assert seconds_left(keys, "inference", NOW) == pytest.approx(-3, abs=1e-5)
    assert seconds_left({"inference": {"key": "i"}}, "inference", NOW) is None
    assert seconds_left({"inference": {"expiration time": "soon"}}, "inference", NOW) is None
    assert seconds_left({}, "management", NOW) is None


def test_only_keys_within_a_quarter_of_their_lifetime_are_renewed() -> None:
    server = FakeServer(management_left=14 * 60, inference_left=16 * 60)
    renewer = KeyRenewer(server, lifetime_s=3600, margin_s=10, clock=lambda: NOW)
    assert renewer.check() == ["management"]
    assert renewer.check() == []  # renewed: a full lifetime again
    assert server.renewed == ["management"]


def test_an_expired_key_is_renewed() -> None:
    server = FakeServer(management_left=-60, inference_left=-1)
    renewer = KeyRenewer(server, lifetime_s=3600, margin_s=10, clock=lambda: NOW)
    assert renewer.check() == ["management", "inference"]


def test_a_short_lifetime_is_renewed_at_least_margin_ahead() -> None:
    server = FakeServer(management_left=9, inference_left=11)
    renewer = KeyRenewer(server, lifetime_s=15, margin_s=10, clock=lambda: NOW)
    assert renewer.lead_s == 10
    assert renewer.check() == ["management"]


def _key_file(path: Path, key: str) -> None:
    path.write_text(json.dumps({"inference": {"key": key, "expiration time": _stamp(NOW)}}))


REFUSED = "Token Authorization failed. Token either incorrect, expired, or not provided correctly"


def _client_seeing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: str, renewed_to: str | None
) -> tuple[SmoothExplainClient, list[str | None]]:
    """A client on a key file holding `key`, whose transport refuses `key` (renewing the file
    to `renewed_to` first, if given) and answers any other; the tokens it sent."""
    key_file = tmp_path / "key_file.json"
    _key_file(key_file, key)
    client = SmoothExplainClient(transport="rest", token_file=key_file, retry=False)
    seen: list[str | None] = []

    def send(model: str, request: pb.Request, timeout: float, token: str | None) -> pb.Response:
        seen.append(token)
        if token != key:
            return pb.Response(model=model)
        if renewed_to is not None:
            _key_file(key_file, renewed_to)  # serve renewed it meanwhile
        raise ExplainError(grpc.StatusCode.INVALID_ARGUMENT, REFUSED, http_status=400)

    monkeypatch.setattr(client, "_send_with", send)
    return client, seen


def test_the_client_resends_once_with_a_key_renewed_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, seen = _client_seeing(tmp_path, monkeypatch, "old-key", "new-key-of-other-size")
    assert client.request("shapes", pb.Request()).model == "shapes"
    assert seen == ["old-key", "new-key-of-other-size"]


def test_a_refused_key_that_did_not_change_is_not_resent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, seen = _client_seeing(tmp_path, monkeypatch, "wrong-key", None)
    with pytest.raises(ExplainError, match="Token Authorization failed"):
        client.request("shapes", pb.Request())
    assert seen == ["wrong-key"]
