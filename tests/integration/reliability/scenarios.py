"""Fault scenarios against the fault server (faults.py): each runs once and reports what
happened; test_faults.py asserts on one run, the soak repeats them and writes the figures."""

from __future__ import annotations

import os
import signal
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import requests
import torch
from google.protobuf import json_format

from smoothexplain._proto.smoothexplain.v1 import explain_pb2 as pb
from smoothexplain._proto.torchserve import inference_pb2 as ts
from smoothexplain._proto.torchserve import inference_pb2_grpc as ts_grpc
from smoothexplain.client.remote import SmoothExplainClient
from smoothexplain.ops.launcher import TorchServeInstance
from smoothexplain.serving.codec import GRPC_KEY, message_to_tensor

from .expected import LocalEngine
from .faults import HANG_GUARD, calls, slow_calls, until, wait_for_new_worker
from .payloads import sample_png

__all__ = [
    "DIED",
    "FaultKit",
    "costly_batch",
    "deadline_in_queue",
    "deadline_while_running",
    "kill_mid_batch",
    "oom_split",
    "response_timeout_budget",
    "single_long_call",
]

# TorchServe's answer to requests of a batch whose worker died: REST 500 or 507, gRPC INTERNAL
# or RESOURCE_EXHAUSTED (507 when the exit status looks like the OOM killer's SIGKILL).
DIED = frozenset(
    f"{kind} Worker died."
    for kind in ("REST 500", "REST 507", "gRPC INTERNAL", "gRPC RESOURCE_EXHAUSTED")
)


def explain_request(nt_samples: int, seed: int = 1, label: int = 2) -> pb.Request:
    return pb.Request(
        input=pb.Input(image=sample_png(label, 40 + label)),
        explain=True,
        options=pb.ExplainOptions(nt_samples=nt_samples, seed=seed),
    )


PREDICT = pb.Request(input=pb.Input(image=sample_png(0, 1)))


@dataclass
class FaultKit:
    """The fault server, a gRPC channel to it, its call logs and the direct engine."""

    server: TorchServeInstance
    logs: Path
    engine: LocalEngine
    channel: grpc.Channel = field(init=False)
    stub: ts_grpc.InferenceAPIsServiceStub = field(init=False)

    def __post_init__(self) -> None:
        self.channel = grpc.insecure_channel(self.server.grpc_target)
        self.stub = ts_grpc.InferenceAPIsServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def rest(self, model: str, request: pb.Request) -> tuple[int, Any]:
        answer = requests.post(
            f"{self.server.inference_url}/explanations/{model}",
            data=json_format.MessageToJson(request),
            headers={**self.server.inference_headers(), "Content-Type": "application/json"},
            timeout=HANG_GUARD,
        )
        return answer.status_code, answer.json()

    def grpc(self, model: str, request: pb.Request) -> pb.Response:
        call = ts.PredictionsRequest(
            model_name=model, input={GRPC_KEY: request.SerializeToString()}
        )
        reply = self.stub.Predictions(
            call, metadata=self.server.grpc_metadata(), timeout=HANG_GUARD
        )
        return pb.Response.FromString(reply.prediction)

    def client(self, timeout: float) -> SmoothExplainClient:
        return SmoothExplainClient(
            transport="grpc",
            grpc_port=self.server.ports.grpc_inference,
            token=self.server.inference_token,
            timeout=timeout,
        )

    def exact(self, response: pb.Response, request: pb.Request) -> bool:
        if response.HasField("error"):
            return False
        expected = self.engine.attribution(request, response.target, response.seed)
        got = message_to_tensor(response.attribution)
        return bool(torch.allclose(got, expected, rtol=1e-4, atol=1e-6))


@dataclass
class KillResult:
    outcomes: list[str]  # per request: "REST 500 Worker died.", "gRPC OK", ...
    failed_fast: int  # answered TorchServe's "Worker died." instead of hanging
    served_exactly: int  # still queued at the kill, served by the new worker, exact
    restart_seconds: float  # kill → a new READY worker
    exact_after_restart: bool


def kill_mid_batch(kit: FaultKit) -> KillResult:
    """Four long explanations (REST and gRPC) on "slow"; SIGKILL the worker once they run."""
    (pid,) = kit.server.worker_pids("slow")
    kit.grpc("slow", PREDICT)  # a warm channel, so all four reach the same batch
    log, started = kit.logs / "slow.calls", slow_calls(kit.logs / "slow.calls")
    long = explain_request(nt_samples=96)  # 12 chunks each

    def rest() -> tuple[str, pb.Response | None]:
        status, body = kit.rest("slow", long)
        if status != 200:
            return f"REST {status} {body.get('message', '')}", None
        return "REST 200", json_format.ParseDict(body, pb.Response(), ignore_unknown_fields=True)

    def grpc_call() -> tuple[str, pb.Response | None]:
        try:
            return "gRPC OK", kit.grpc("slow", long)
        except grpc.RpcError as error:
            return f"gRPC {error.code().name} {(error.details() or '').splitlines()[0]}", None

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(call) for call in (rest, grpc_call, rest, grpc_call)]
        until(lambda: slow_calls(log) > started + 1)  # mid-batch
        os.kill(pid, signal.SIGKILL)
        outcomes = [future.result() for future in futures]  # an exception here: a hang
    restart = wait_for_new_worker(kit.server, "slow", [pid])
    request = explain_request(nt_samples=8, seed=5)
    return KillResult(
        outcomes=[o for o, _ in outcomes],
        failed_fast=sum(o in DIED for o, _ in outcomes),
        served_exactly=sum(r is not None and kit.exact(r, long) for _, r in outcomes),
        restart_seconds=restart,
        exact_after_restart=kit.exact(kit.grpc("slow", request), request),
    )


@dataclass
class OomResult:
    answers: int
    exact: int
    oom_events: int  # calls that ran out of memory (and were halved and retried)
    largest_call_after_oom: int  # rows; the halved size is kept


def oom_split(kit: FaultKit, seeds: tuple[int, ...] = (7, 8)) -> OomResult:
    """Concurrent explanations on "oom" (out of memory above 8 rows, chunks of 64)."""
    log_before = len(calls(kit.logs / "oom.calls"))
    asked = [explain_request(nt_samples=24, seed=s, label=s % 7) for s in seeds]
    with ThreadPoolExecutor(len(asked)) as pool:
        responses = list(pool.map(lambda r: kit.grpc("oom", r), asked))
    log = calls(kit.logs / "oom.calls")[log_before:]
    ooms = [i for i, line in enumerate(log) if line.startswith("oom ")]
    after = (
        [int(line.split()[1]) for line in log[ooms[0] :] if line.startswith("call")] if ooms else []
    )
    return OomResult(
        answers=sum(not r.HasField("error") for r in responses),
        exact=sum(kit.exact(r, q) for r, q in zip(responses, asked, strict=True)),
        oom_events=len(ooms),
        largest_call_after_oom=max(after, default=0),
    )


@dataclass
class QueuedResult:
    code: str  # what the impatient client got
    first_status: int  # the request that held the worker
    chunks: int  # explain chunks computed in all
    chunks_of_first: int  # ... of which the first request needed


def deadline_in_queue(kit: FaultKit) -> QueuedResult:
    """A client gives up (0.5 s) while its request waits behind an 8-chunk one on "slow"."""
    log = kit.logs / "slow.calls"
    before = slow_calls(log)
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(kit.rest, "slow", explain_request(nt_samples=64, seed=2))
        until(lambda: slow_calls(log) > before)  # the first one holds the worker
        code = "OK"
        with kit.client(timeout=0.5) as client:  # sends deadline_unix_ms = now + 0.5 s
            try:
                client.explain("slow", sample_png(1, 9), nt_samples=64, seed=3)
            except grpc.RpcError as error:
                code = error.code().name
        status = first.result()[0]
    kit.grpc("slow", PREDICT)  # queued behind the abandoned one: it has had its turn
    return QueuedResult(code, status, slow_calls(log) - before, 64 // 8)


@dataclass
class RunningResult:
    code: str
    chunks: int  # explain chunks computed for it
    chunks_asked: int
    worker_kept: bool


def deadline_while_running(kit: FaultKit, timeout: float = 1.0) -> RunningResult:
    """A client gives up after `timeout` s on a 20-chunk explanation that is running."""
    log = kit.logs / "slow.calls"
    workers, before = kit.server.worker_pids("slow"), slow_calls(log)
    code = "OK"
    with kit.client(timeout=timeout) as client:
        try:
            client.explain("slow", sample_png(4, 9), nt_samples=160, seed=3)
        except grpc.RpcError as error:
            code = error.code().name
    kit.grpc("slow", PREDICT)  # answered once the abandoned work has stopped
    return RunningResult(
        code, slow_calls(log) - before, 160 // 8, kit.server.worker_pids("slow") == workers
    )


@dataclass
class BudgetResult:
    status: int
    code: str
    message: str
    predict_ok: bool  # a prediction in the same batch
    worker_kept: bool


def response_timeout_budget(kit: FaultKit) -> BudgetResult:
    """A 12 s explanation on "tight" (responseTimeout 4 s) next to a prediction."""
    workers = kit.server.worker_pids("tight")
    predict = pb.Request(input=pb.Input(image=sample_png(3, 3)))
    with ThreadPoolExecutor(2) as pool:
        cut = pool.submit(kit.rest, "tight", explain_request(nt_samples=480))
        answered = pool.submit(kit.grpc, "tight", predict)
        status, body = cut.result()
        predict_ok = not answered.result().HasField("error")
    error = body.get("error", {})
    return BudgetResult(
        status,
        str(error.get("grpc_code", "")),
        str(error.get("message", "")),
        predict_ok,
        kit.server.worker_pids("tight") == workers,
    )


@dataclass
class LongCallResult:
    status: int
    message: str
    restart_seconds: float
    predicts_after: bool  # the restarted worker answers exactly


def single_long_call(kit: FaultKit) -> LongCallResult:
    """One 5 s model call on "one_long_call" (responseTimeout 3 s): nothing to cut."""
    (pid,) = kit.server.worker_pids("one_long_call")
    status, body = kit.rest("one_long_call", explain_request(nt_samples=8))
    restart = wait_for_new_worker(kit.server, "one_long_call", [pid])
    request = pb.Request(input=pb.Input(image=sample_png(5, 2)))  # one row: no sleep
    response = kit.grpc("one_long_call", request)
    want = kit.engine.probabilities(request).topk(5).indices.tolist()
    return LongCallResult(
        status, str(body.get("message", "")), restart, [c.index for c in response.top_k] == want
    )


@dataclass
class CostlyResult:
    too_dear: tuple[int, str, str]  # (HTTP status, field, message) of one above the limit
    outcomes: list[str]  # the three big ones of one batch: "200" or "503 UNAVAILABLE"
    exact: int  # big ones answered, and equal to the engine run in-process
    small_ok: bool  # the small batch-mate answered
    chunks: int  # explain chunks computed during the batch
    chunks_per_big: int


def costly_batch(kit: FaultKit) -> CostlyResult:
    """On "capped" (limits.max_batch_seconds = 4, 0.2 s per 8-row chunk): one explanation
    whose estimate alone is above the limit, then three 8-chunk ones (about 1.6 s each) and
    a small one sent together: the small one and what fits are computed, the rest get 503 at
    once without a chunk computed for them."""
    log = kit.logs / "capped.calls"
    # Teaches the worker its rate on a request as large as the big ones: a request's fixed
    # overhead is then spread over as many rows as theirs (a 16-sample lesson under load made
    # one big request look dearer than the limit; 4 s leaves a loaded machine 2 s of slack).
    kit.grpc("capped", explain_request(nt_samples=64, seed=4))
    status, body = kit.rest("capped", explain_request(nt_samples=480))
    error = body.get("error", {})
    too_dear = (status, str(error.get("field", "")), str(error.get("message", "")))
    big = [explain_request(nt_samples=64, seed=10 + i, label=i) for i in range(3)]
    small = explain_request(nt_samples=4, seed=9)
    before = slow_calls(log)
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(kit.grpc, "capped", r) for r in big]
        small_answer = pool.submit(kit.rest, "capped", small)
        answers = [f.result() for f in futures]
        small_ok = small_answer.result()[0] == 200
    outcomes = [
        f"{a.error.http_status} {a.error.grpc_code}" if a.HasField("error") else "200"
        for a in answers
    ]
    exact = sum(kit.exact(a, r) for a, r in zip(answers, big, strict=True))
    return CostlyResult(too_dear, outcomes, exact, small_ok, slow_calls(log) - before, 64 // 8)
