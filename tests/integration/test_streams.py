"""gRPC StreamPredictions2 (TorchServe's bidirectional sequence RPC) against a real TorchServe.

Our handler serves Predictions and StreamPredictions only. TorchServe 0.12's frontend ends a
StreamPredictions2 call as soon as its client half-closes, and an answer to an ended call throws
in the frontend thread that drives the worker: the worker was lost for good (model still READY
with the dead PID, requests queued for ever, /ping Healthy). The handler now leaves those
messages unanswered, /readyz names a model without a live worker, and serve's watchdog restarts
one TorchServe lost. "unguarded" is our handler without the guard (reliability/unguarded_entry.py),
to show the original defect and the recovery.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
import requests
from conftest import build_store
from reliability.archives import UNGUARDED, build_archive
from reliability.faults import until, wait_for_new_worker
from reliability.payloads import sample_png

from smoothexplain._proto.smoothexplain.v1 import explain_pb2 as pb
from smoothexplain._proto.torchserve import inference_pb2 as ts
from smoothexplain._proto.torchserve import inference_pb2_grpc as ts_grpc
from smoothexplain.ops.exporter import Exporter
from smoothexplain.ops.launcher import TorchServeInstance, free_port
from smoothexplain.ops.serve import server_probes
from smoothexplain.ops.watchdog import Watchdog, lost_models, unserved_models
from smoothexplain.serving.codec import GRPC_KEY

pytestmark = pytest.mark.integration

PREDICT = pb.Request(input=pb.Input(image=sample_png(3, 5)), top_k=3)
EXPLAIN = pb.Request(
    input=pb.Input(image=sample_png(2, 7)),
    explain=True,
    options=pb.ExplainOptions(nt_samples=4, seed=3),
)
UNANSWERED = re.compile(r"(\d+) StreamPredictions2 message\(s\) left unanswered")
TS_INTERNAL = grpc.StatusCode.INTERNAL.value[0]  # 13, TorchServe's code for its own refusals
FAILED = grpc.StatusCode.UNKNOWN  # how TorchServe ends a StreamPredictions2 call with an id
ATTEMPTS = 20  # one-shot StreamPredictions2 calls the unguarded handler may survive
ATTACKS = 5  # one-shot calls the guarded handler must survive, per request kind


class Server:
    """The TorchServe, a gRPC stub to it and a /readyz wired as `smoothexplain serve` wires it."""

    def __init__(self, instance: TorchServeInstance) -> None:
        self.instance = instance
        self.channel = grpc.insecure_channel(instance.grpc_target)
        self.stub = ts_grpc.InferenceAPIsServiceStub(self.channel)
        self.exporter = Exporter("127.0.0.1", free_port(), [], server_probes(instance, None))

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return self.instance.grpc_metadata()

    def predict(self, model: str = "shapes", timeout: float = 60) -> pb.Response:
        reply = self.stub.Predictions(call(PREDICT, model), metadata=self.metadata, timeout=timeout)
        return pb.Response.FromString(reply.prediction)

    def stream2(
        self, messages: Iterable[ts.PredictionsRequest], timeout: float = 60
    ) -> tuple[grpc.StatusCode, list[ts.PredictionResponse]]:
        """Sends `messages` (a list: half-closed right after, as a one-shot client does), reads
        every reply; returns the call's final status and the replies."""
        replies: list[ts.PredictionResponse] = []
        call = self.stub.StreamPredictions2(iter(messages), metadata=self.metadata, timeout=timeout)
        try:
            replies.extend(call)
        except grpc.RpcError as error:
            return error.code(), replies
        return grpc.StatusCode.OK, replies

    def readyz(self) -> tuple[int, str]:
        answer = requests.get(f"{self.exporter.url}/readyz", timeout=30)
        return answer.status_code, answer.text

    def wait_unanswered(self, expected: int) -> None:
        """The handler's log reaches `expected` unanswered messages, and no more."""
        until(lambda: self.unanswered_so_far() >= expected, seconds=30)
        assert self.unanswered_so_far() == expected

    def unanswered_so_far(self) -> int:
        """Stream2 messages the handler has left unanswered, from the worker logs."""
        log = self.instance.log_dir / "model_log.log"
        text = log.read_text(errors="replace") if log.is_file() else ""
        return sum(int(n) for n in UNANSWERED.findall(text))

    def close(self) -> None:
        self.channel.close()
        self.exporter.stop()


def call(
    request: pb.Request, model: str = "shapes", sequence_id: str | None = None, **inputs: bytes
) -> ts.PredictionsRequest:
    message = ts.PredictionsRequest(
        model_name=model, input={GRPC_KEY: request.SerializeToString(), **inputs}
    )
    if sequence_id is not None:
        message.sequence_id = sequence_id
    return message


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, demo_artifacts: Path) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("streams")
    store = build_store(root / "store", ["shapes"], demo_artifacts, batchSize=4, maxBatchDelay=50)
    build_archive(store, "unguarded", demo_artifacts, handler=UNGUARDED)
    models = {"shapes": "shapes.mar", "unguarded": "unguarded.mar"}
    with TorchServeInstance(store, models, root / "ts") as instance:
        served = Server(instance)
        served.exporter.start()
        try:
            yield served
        finally:
            served.close()


def _answered_normally(response: pb.Response) -> bool:
    return not response.HasField("error") and len(response.top_k) == 3


def _assert_shapes_unharmed(server: Server, pids: list[int]) -> None:
    """A later request is answered by the same worker process, and /readyz is ok."""
    assert _answered_normally(server.predict())
    assert server.instance.worker_pids("shapes") == pids
    assert server.readyz() == (200, "ok\n")


@pytest.mark.parametrize("request_", [PREDICT, EXPLAIN], ids=["predict", "explain"])
def test_a_sequence_message_is_left_unanswered_and_the_worker_lives(
    server: Server, request_: pb.Request
) -> None:
    pids, seen = server.instance.worker_pids("shapes"), server.unanswered_so_far()
    # TorchServe fails each call itself (UNKNOWN: its sequence code throws on a model without
    # sequence batching), after it has queued the message for the worker. The unguarded
    # handler loses its worker to the first such call as a rule (last test).
    for attack in range(ATTACKS):
        message = call(request_, sequence_id=f"attack-{attack}")
        assert server.stream2([message]) == (FAILED, [])
    # The next request queues behind the messages, so once it is answered the worker saw them.
    _assert_shapes_unharmed(server, pids)
    server.wait_unanswered(seen + ATTACKS)


def test_several_messages_on_one_stream(server: Server) -> None:
    pids, seen = server.instance.worker_pids("shapes"), server.unanswered_so_far()
    messages = [call(r, sequence_id="attack-many") for r in (PREDICT, EXPLAIN, PREDICT)]
    assert server.stream2(messages) == (FAILED, [])
    _assert_shapes_unharmed(server, pids)
    server.wait_unanswered(seen + 1)  # the failed call took no message after the first


def test_a_stream_kept_open_fails_too_and_the_worker_lives(server: Server) -> None:
    pids, seen = server.instance.worker_pids("shapes"), server.unanswered_so_far()
    release = threading.Event()

    def messages() -> Iterator[ts.PredictionsRequest]:
        yield call(PREDICT, sequence_id="kept-open")
        release.wait(60)  # no half-close until the worker has handled the message

    with ThreadPoolExecutor(1) as pool:
        outcome = pool.submit(server.stream2, messages())
        try:
            until(lambda: server.unanswered_so_far() > seen, seconds=60)
            assert _answered_normally(server.predict())
        finally:
            release.set()
        assert outcome.result(timeout=60) == (FAILED, [])
    _assert_shapes_unharmed(server, pids)
    server.wait_unanswered(seen + 1)


@pytest.mark.parametrize(
    "message",
    [
        call(PREDICT),
        call(PREDICT, sequence_id=""),
        # TorchServe reads this flag through ByteString.toString() (never "true"): no effect.
        call(PREDICT, ts_request_sequence_start=b"true"),
    ],
    ids=["no-sequence-id", "empty-sequence-id", "start-flag-without-id"],
)
def test_without_a_sequence_id_torchserve_refuses_in_the_status_field(
    server: Server, message: ts.PredictionsRequest
) -> None:
    """TorchServe answers this itself, before any worker: the handler cannot change the reply.
    The error is in PredictionResponse.status; `prediction` is empty (an empty Response)."""
    pids, seen = server.instance.worker_pids("shapes"), server.unanswered_so_far()
    status, (reply,) = server.stream2([message])
    assert status == grpc.StatusCode.OK and reply.prediction == b""
    assert reply.HasField("status") and reply.status.code == TS_INTERNAL
    assert reply.status.message == "Parameter sequenceId is required."
    _assert_shapes_unharmed(server, pids)
    assert server.unanswered_so_far() == seen


def test_a_sequence_id_on_the_other_rpcs_is_ignored(server: Server) -> None:
    pids, seen = server.instance.worker_pids("shapes"), server.unanswered_so_far()
    message = call(PREDICT, sequence_id="ignored")
    reply = server.stub.Predictions(message, metadata=server.metadata, timeout=60)
    assert _answered_normally(pb.Response.FromString(reply.prediction))
    (streamed,) = server.stub.StreamPredictions(message, metadata=server.metadata, timeout=60)
    assert _answered_normally(pb.Response.FromString(streamed.prediction))
    # An input named like the header is an input, not the header.
    named = call(PREDICT, ts_request_sequence_id=b"x")
    reply = server.stub.Predictions(named, metadata=server.metadata, timeout=60)
    assert _answered_normally(pb.Response.FromString(reply.prediction))
    _assert_shapes_unharmed(server, pids)
    assert server.unanswered_so_far() == seen


def test_a_rest_request_with_the_sequence_header_is_answered(server: Server) -> None:
    answer = requests.post(
        f"{server.instance.inference_url}/predictions/shapes",
        data=sample_png(3, 5),
        headers={**server.instance.inference_headers(), "ts_request_sequence_id": "x"},
        timeout=60,
    )
    assert answer.status_code == 200 and len(answer.json()["top_k"]) == 5


def test_a_killed_worker_makes_readyz_fail_until_torchserve_restarts_it(server: Server) -> None:
    (pid,) = server.instance.worker_pids("shapes")
    watchdog = Watchdog(server.instance)  # default grace: TorchServe's own restart is left alone
    os.kill(pid, signal.SIGKILL)
    # SIGKILL lands asynchronously: look only once the process is gone (or a zombie).
    until(lambda: pid not in server.instance.process_pids(), seconds=30)
    answers: list[tuple[int, str]] = [server.readyz()]
    restarted: list[str] = []
    deadline = time.monotonic() + 120
    while answers[-1][0] != 200 or len(answers) == 1:
        assert time.monotonic() < deadline, answers[-3:]
        restarted += watchdog.check()
        answers.append(server.readyz())
    assert (503, "unavailable: no live worker for shapes\n") in answers
    assert restarted == []
    wait_for_new_worker(server.instance, "shapes", [pid])
    _assert_shapes_unharmed(server, server.instance.worker_pids("shapes"))


def test_the_unguarded_handler_loses_its_worker_and_the_watchdog_restarts_it(
    server: Server, record_property: pytest.RecordProperty
) -> None:
    """Before the guard: a StreamPredictions2 message lost the worker for good. It takes the
    client's half-close to reach the frontend before the call fails, a race most calls win."""
    instance = server.instance
    (pid,) = instance.worker_pids("unguarded")
    for attempt in range(1, ATTEMPTS + 1):
        message = call(PREDICT, "unguarded", sequence_id=f"attack-{attempt}")
        assert server.stream2([message]) == (FAILED, [])
        try:
            assert _answered_normally(server.predict("unguarded", timeout=10))
        except grpc.RpcError as hung:  # queued behind the message, never served
            assert hung.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            break
    else:
        pytest.fail(f"{ATTEMPTS} StreamPredictions2 calls did not lose the unguarded worker")
    record_property("stream2_calls_to_lose_the_worker", attempt)
    until(lambda: lost_models(instance) == ["unguarded"], seconds=30)
    workers = instance.describe_model("unguarded")["workers"]
    assert [(w["pid"], w["status"]) for w in workers] == [(pid, "READY")]  # a dead PID
    frontend = (instance.log_dir / "ts_log.log").read_text(errors="replace")
    assert "Stream is already completed" in frontend
    assert server_probes(instance, None).ready()  # /ping alone still says Healthy
    assert server.readyz() == (503, "unavailable: no live worker for unguarded\n")
    assert unserved_models(instance) == ["unguarded"]

    with ThreadPoolExecutor(1) as pool:
        queued = pool.submit(server.predict, "unguarded", 120)  # waits for a worker
        assert Watchdog(instance, grace=0).check() == ["unguarded"]
        assert _answered_normally(queued.result(timeout=120))
    assert instance.worker_pids("unguarded") != [pid]
    assert unserved_models(instance) == lost_models(instance) == []
    assert server.readyz() == (200, "ok\n")
