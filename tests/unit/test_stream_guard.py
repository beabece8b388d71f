"""The StreamPredictions2 guard, /readyz's worker check and the watchdog, without TorchServe
(tests/integration/test_streams.py runs them against a real one)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import requests

from smoothexplain.ops import launcher
from smoothexplain.ops.exporter import Exporter, Probes
from smoothexplain.ops.launcher import TorchServeInstance, free_port
from smoothexplain.ops.watchdog import Watchdog, lost_models, unserved_models
from smoothexplain.serving import ts_handler
from smoothexplain.serving.codec import GRPC_KEY
from smoothexplain.serving.service import Incoming, Outgoing
from smoothexplain.serving.ts_handler import SmoothExplainHandler, stream2_rows

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_only_grpc_rows_with_a_string_sequence_header_are_stream2_messages() -> None:
    explain = [None, "false", None, None, {"content-type": None}]
    sequence = ["s1", "s1", {"content-type": None}, None, "s2"]
    # 0: StreamPredictions2; 1: REST with that HTTP header; 2: a gRPC input named like the
    # header; 3: plain gRPC; 4: a gRPC input named "explain" on a StreamPredictions2 message.
    assert stream2_rows(explain, sequence) == [0, 4]


class FakeContext:
    def __init__(self, headers: list[dict[str, object]]) -> None:
        self.headers = headers
        self.request_ids = {i: f"id-{i}" for i in range(len(headers))}
        self.response_headers: dict[int, dict[str, str]] = {}

    def get_request_header(self, index: int, key: str) -> object:
        return self.headers[index].get(key)

    def set_response_content_type(self, index: int, value: str) -> None:
        self.set_response_header(index, "content-type", value)

    def set_response_header(self, index: int, key: str, value: str) -> None:
        self.response_headers.setdefault(index, {})[key] = value


class FakeService:
    def __init__(self) -> None:
        self.batches: list[list[Incoming]] = []

    def handle(self, batch: Sequence[Incoming]) -> list[Outgoing]:
        self.batches.append(list(batch))
        return [Outgoing(200, f"answer {i.payload!r}".encode()) for i in batch]


def _handle(headers: list[dict[str, object]]) -> tuple[list[bytes | str], FakeContext, FakeService]:
    handler, service, context = SmoothExplainHandler(), FakeService(), FakeContext(headers)
    handler.service = service  # type: ignore[assignment]
    rows: list[Mapping[str, Any]] = [{GRPC_KEY: f"row{i}".encode()} for i in range(3)]
    return handler.handle(rows[: len(headers)], context), context, service


def test_stream2_messages_are_left_out_of_the_reply_and_the_rest_answered() -> None:
    header = ts_handler.SEQUENCE_ID_HEADER
    bodies, context, service = _handle([{header: "s"}, {}, {header: "s"}])
    assert [i.payload for i in service.batches[0]] == [b"row1"]
    assert len(bodies) == 3 and bodies[1] == b"answer b'row1'"
    assert context.request_ids == {1: "id-1"}  # TorchServe sends replies for these keys only
    assert set(context.response_headers) == {1}


def test_a_batch_of_stream2_messages_only_computes_nothing() -> None:
    header = ts_handler.SEQUENCE_ID_HEADER
    bodies, context, service = _handle([{header: "a"}, {header: "b"}])
    assert service.batches == [] and context.request_ids == {} and len(bodies) == 2


def test_the_sequence_header_name_is_pinned_where_torchserve_reads_it(tmp_path: Path) -> None:
    assert launcher.SEQUENCE_ID_HEADER == ts_handler.SEQUENCE_ID_HEADER
    shipped = (REPO_ROOT / "handler" / "smoothexplain" / "ops" / "config.properties").read_text()
    assert f"\n{launcher.SEQUENCE_ID_KEY}={launcher.SEQUENCE_ID_HEADER}\n" in shipped
    renamed = {launcher.SEQUENCE_ID_KEY: "other"}
    instance = TorchServeInstance(tmp_path, ["m=m.mar"], tmp_path / "ts", config_overrides=renamed)
    assert instance.config_values()[launcher.SEQUENCE_ID_KEY] == launcher.SEQUENCE_ID_HEADER


@pytest.fixture
def exporter_for() -> Iterator[Any]:
    started: list[Exporter] = []

    def start(probes: Probes) -> str:
        exporter = Exporter("127.0.0.1", free_port(), [], probes).start()
        started.append(exporter)
        return f"{exporter.url}/readyz"

    yield start
    for exporter in started:
        exporter.stop()


def _failing() -> list[str]:
    raise ConnectionRefusedError("management API not up")


@pytest.mark.parametrize(
    ("ready", "unserved", "status", "text"),
    [
        (True, lambda: [], 200, "ok\n"),
        (True, lambda: ["a", "b"], 503, "unavailable: no live worker for a, b\n"),
        (False, lambda: ["a"], 503, "unavailable: no live worker for a\n"),
        (False, lambda: [], 503, "unavailable\n"),
        (True, _failing, 503, "unavailable\n"),
    ],
)
def test_readyz_names_the_models_without_a_live_worker(
    exporter_for: Any, ready: bool, unserved: Any, status: int, text: str
) -> None:
    url = exporter_for(Probes(alive=lambda: True, ready=lambda: ready, unserved=unserved))
    answer = requests.get(url, timeout=10)
    assert (answer.status_code, answer.text) == (status, text)


class FakeServer:
    """Two models; `workers[name]` is what describe-model lists, `live` the live PIDs."""

    def __init__(self) -> None:
        self.models = {"a": "a.mar", "b": "b.mar"}
        self.workers: dict[str, list[dict[str, Any]]] = {
            "a": [{"pid": 10, "status": "READY"}],
            "b": [{"pid": 20, "status": "READY"}],
        }
        self.live = [1, 10, 20]
        self.scaled: list[tuple[str, int, int]] = []

    def describe_model(self, name: str) -> dict[str, Any]:
        return {"minWorkers": 1, "maxWorkers": 2, "workers": self.workers[name]}

    def process_pids(self) -> list[int]:
        return self.live

    def scale_workers(self, name: str, min_worker: int, max_worker: int) -> None:
        self.scaled.append((name, min_worker, max_worker))


def test_a_restarting_worker_is_unserved_but_not_lost() -> None:
    server = FakeServer()
    assert unserved_models(server) == lost_models(server) == []
    server.workers["a"] = [{"pid": -1, "status": "UNLOADING"}]
    assert (unserved_models(server), lost_models(server)) == (["a"], [])
    server.workers["a"] = [{"pid": 10, "status": "READY"}]
    server.live = [1, 20]  # READY with a dead PID: the frontend thread is gone
    assert unserved_models(server) == lost_models(server) == ["a"]


def test_the_watchdog_restarts_a_model_lost_for_its_grace_period_only() -> None:
    server, now = FakeServer(), [0.0]
    watchdog = Watchdog(server, grace=10, clock=lambda: now[0])
    server.live = [1, 20]
    assert watchdog.check() == []
    now[0] = 5.0
    server.live = [1, 10, 20]  # it came back by itself: the clock starts again
    assert watchdog.check() == []
    server.live = [1, 20]
    now[0] = 9.0
    assert watchdog.check() == []
    now[0] = 18.9
    assert watchdog.check() == []
    now[0] = 19.0
    assert watchdog.check() == ["a"]
    assert server.scaled == [("a", 0, 2), ("a", 1, 2)]
