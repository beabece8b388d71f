"""`smoothexplain serve` renews TorchServe's keys before they expire (keyrotation.py).

A server whose keys live 15 s: after twice that, the supervisor's worker checks, `/readyz` and
typed clients reading the key file still work, each key has been renewed, and a key read at the
start is refused (the renewal is real, not a longer lifetime).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from conftest import build_store
from reliability.payloads import sample_png
from serveproc import ServeProcess

from smoothexplain.client.remote import SmoothExplainClient

pytestmark = pytest.mark.integration

LIFETIME_MIN = 0.25  # 15 s; serve renews 10 s ahead (two of its 5 s looks)


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory, demo_artifacts: Path) -> Iterator[ServeProcess]:
    root = tmp_path_factory.mktemp("renewal")
    store = build_store(root / "store", ["shapes"], demo_artifacts)
    flags = ["--token-expiration-min", str(LIFETIME_MIN)]
    with ServeProcess(root / "srv", store, ["shapes=shapes.mar"], flags) as process:
        yield process


def test_keys_are_renewed_and_clients_follow(serve: ServeProcess) -> None:
    first = serve.keys()
    key_file = Path(serve.endpoints["key_file"])
    clients = [
        SmoothExplainClient(
            transport=transport,
            host="127.0.0.1",
            rest_port=serve.ports["inference"],
            grpc_port=serve.ports["grpc-inference"],
            token_file=key_file,
            timeout=60,
        )
        for transport in ("grpc", "rest")
    ]
    image, answered = sample_png(), 0
    ends = time.monotonic() + 2 * 60 * LIFETIME_MIN  # two lifetimes
    while time.monotonic() < ends:
        for client in clients:
            response = client.explain("shapes", image, nt_samples=2, seed=answered)
            assert response.top_k and response.rows == 2, response
            answered += 1
        time.sleep(1.0)
    now = serve.keys()
    for kind in ("management", "inference"):
        assert now[kind]["key"] != first[kind]["key"], kind
        assert now[kind]["expiration time"] > first[kind]["expiration time"], kind
    assert now["API"]["key"] == first["API"]["key"]  # the token API's own key never expires
    ready = requests.get(serve.endpoints["ready"], timeout=10)
    assert ready.status_code == 200, ready.text
    stale = requests.post(
        f"{serve.endpoints['rest']}/predictions/shapes",
        data=image,
        headers={"Authorization": f"Bearer {first['inference']['key']}"},
        timeout=30,
    )
    assert stale.status_code == 400 and "Token" in stale.text
    log = serve.log.read_text()
    assert "renewed the management key" in log and "renewed the inference key" in log
    assert "worker check failed" not in log and "key renewal failed" not in log
    assert answered >= 20
