"""A short load run: 4 clients mixing predict and explain over REST and gRPC, every answer
checked against the engine (the long version with k = 1, 4, 8, 16 is `make soak`)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import shapes_server
from reliability.expected import LocalEngine
from reliability.loadgen import LoadPlan, LoadReport, percentile, run_load, verify

from smoothexplain._proto.smoothexplain.v1 import explain_pb2 as pb
from smoothexplain.ops.launcher import TorchServeInstance
from smoothexplain.serving.codec import message_to_tensor, tensor_to_message

pytestmark = pytest.mark.integration

PLAN = LoadPlan(clients=4, requests_per_client=10, max_seconds=300, seed=1)


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, demo_artifacts: Path
) -> Iterator[TorchServeInstance]:
    root = tmp_path_factory.mktemp("load")
    with shapes_server(root, demo_artifacts, batchSize=4, maxBatchDelay=20) as instance:
        yield instance


def test_load_loses_nothing_and_every_answer_matches_the_engine(
    server: TorchServeInstance, record_property: pytest.RecordProperty
) -> None:
    workers = server.worker_pids("shapes")
    report = run_load(server.inference_url, server.grpc_target, server.inference_token, PLAN)
    assert len(report.samples) == PLAN.clients * PLAN.requests_per_client  # none cut short
    assert [s.failure for s in report.lost] == []
    assert [s.response.error.message for s in report.server_errors if s.response] == []
    engine = LocalEngine()
    assert verify(report, engine) == []
    assert verify(_tampered(report), engine) != []  # the check itself can fail
    assert {s.transport for s in report.samples} == {"grpc", "rest"}
    assert {s.kind for s in report.samples} == {"predict", "explain"}
    assert server.worker_pids("shapes") == workers
    latencies = report.latencies()
    record_property("load_requests_per_second", round(report.throughput, 2))
    record_property("load_p50_seconds", round(percentile(latencies, 50), 3))
    record_property("load_p99_seconds", round(percentile(latencies, 99), 3))


def _tampered(report: LoadReport) -> LoadReport:
    """One explain answer of `report` with its map nudged by 1e-3."""
    sample = next(s for s in report.samples if s.kind == "explain" and s.response is not None)
    assert sample.response is not None
    response = pb.Response()
    response.CopyFrom(sample.response)
    response.attribution.CopyFrom(tensor_to_message(message_to_tensor(response.attribution) + 1e-3))
    return LoadReport(report.plan, samples=[replace(sample, response=response)])


def test_the_generator_refuses_non_loopback_targets() -> None:
    with pytest.raises(ValueError, match="loopback"):
        run_load("http://10.0.0.1:8080", "127.0.0.1:7070", "token", PLAN)
    with pytest.raises(ValueError, match="loopback"):
        run_load("http://127.0.0.1:8080", "192.168.1.5:7070", "token", PLAN)
