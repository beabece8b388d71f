"""A bounded load generator: k clients, a mix of predict and explain over REST and gRPC.

Loopback only (it refuses any other address), and it stops by itself: after
`requests_per_client` requests per client or `max_seconds`, whichever comes first. Requests are
drawn from a fixed pool of specs, each with its own seed, so every answer can be checked
against one direct engine computation per spec (`verify`).
"""

from __future__ import annotations

import ipaddress
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import grpc
import requests
import torch
from google.protobuf import json_format

from smoothexplain._proto.smoothexplain.v1 import explain_pb2 as pb
from smoothexplain._proto.torchserve import inference_pb2 as ts
from smoothexplain._proto.torchserve import inference_pb2_grpc as ts_grpc
from smoothexplain.serving.codec import GRPC_KEY, message_to_tensor

from .expected import LocalEngine
from .payloads import sample_png

__all__ = ["SPECS", "LoadPlan", "LoadReport", "Sample", "percentile", "run_load", "verify"]


def _explain(label: int, seed: int, **options: Any) -> pb.Request:
    return pb.Request(
        input=pb.Input(image=sample_png(label, 100 + label)),
        explain=True,
        options=pb.ExplainOptions(seed=seed, **options),
    )


# The request pool: cheap enough for CPU load runs (4-16 samples, IG with 4-6 steps).
SPECS: tuple[pb.Request, ...] = (
    pb.Request(input=pb.Input(image=sample_png(0, 100))),
    pb.Request(input=pb.Input(image=sample_png(3, 103)), top_k=3),
    pb.Request(input=pb.Input(image=sample_png(6, 106)), top_k=7),
    _explain(1, 11, nt_samples=8),
    _explain(2, 12, nt_samples=6, method=pb.METHOD_INPUT_X_GRADIENT),
    _explain(3, 13, nt_samples=4, n_steps=5, method=pb.METHOD_INTEGRATED_GRADIENTS),
    _explain(4, 14, nt_samples=6, method=pb.METHOD_GUIDED_BACKPROP),
    _explain(5, 15, nt_samples=8, nt_type=pb.NT_TYPE_VARGRAD, noise=pb.NOISE_ADAPTIVE),
    _explain(6, 16, nt_samples=6, nt_type=pb.NT_TYPE_SMOOTHGRAD_SQ, sigma=0.1),
    _explain(0, 17, nt_type=pb.NT_TYPE_NONE, method=pb.METHOD_INTEGRATED_GRADIENTS, n_steps=6),
    _explain(1, 18, nt_samples=16, stdevs=0.3),
    _explain(2, 19, nt_samples=4, n_steps=4, method=pb.METHOD_INTEGRATED_GRADIENTS, baseline=-1.0),
)


@dataclass(frozen=True)
class LoadPlan:
    clients: int
    requests_per_client: int
    max_seconds: float  # the generator stops by itself at this wall time
    seed: int = 0
    grpc_share: float = 0.5
    timeout: float = 120.0  # per request; a hang shows up as a lost request


@dataclass(frozen=True)
class Sample:
    client: int
    spec: int
    transport: str
    latency: float
    response: pb.Response | None  # None: lost (no answer, transport error, or HTTP error)
    failure: str = ""

    @property
    def kind(self) -> str:
        return "explain" if SPECS[self.spec].explain else "predict"


@dataclass
class LoadReport:
    plan: LoadPlan
    wall_seconds: float = 0.0
    samples: list[Sample] = field(default_factory=list)

    @property
    def lost(self) -> list[Sample]:
        return [s for s in self.samples if s.response is None]

    @property
    def server_errors(self) -> list[Sample]:
        """Answers that carry an error (every request in the pool is valid)."""
        return [s for s in self.samples if s.response is not None and s.response.HasField("error")]

    @property
    def throughput(self) -> float:
        return len(self.samples) / self.wall_seconds if self.wall_seconds else 0.0

    def latencies(self, kind: str | None = None) -> list[float]:
        return sorted(s.latency for s in self.samples if kind in (None, s.kind))


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of sorted `values` (q in [0, 100])."""
    if not values:
        return float("nan")
    rank = max(1, min(len(values), round(q / 100 * len(values) + 0.5)))
    return values[rank - 1]


def _require_loopback(url: str, target: str) -> None:
    for host in (urlsplit(url).hostname or "", target.rsplit(":", 1)[0].strip("[]")):
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"the load generator only talks to loopback, not {host!r}")


class _Client:
    def __init__(self, rest_url: str, grpc_target: str, token: str, timeout: float) -> None:
        self.rest_url, self.token, self.timeout = rest_url, token, timeout
        self.channel = grpc.insecure_channel(
            grpc_target, options=[("grpc.max_receive_message_length", 64 << 20)]
        )
        self.stub = ts_grpc.InferenceAPIsServiceStub(self.channel)
        self.session = requests.Session()

    def send(self, request: pb.Request, transport: str) -> pb.Response:
        if transport == "grpc":
            call = ts.PredictionsRequest(
                model_name="shapes", input={GRPC_KEY: request.SerializeToString()}
            )
            reply = self.stub.Predictions(
                call, metadata=(("authorization", f"Bearer {self.token}"),), timeout=self.timeout
            )
            return pb.Response.FromString(reply.prediction)
        path = "explanations" if request.explain else "predictions"
        answer = self.session.post(
            f"{self.rest_url}/{path}/shapes",
            data=json_format.MessageToJson(request),
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
            timeout=self.timeout,
        )
        if answer.status_code >= 500:
            raise RuntimeError(f"HTTP {answer.status_code}")
        return json_format.Parse(answer.text, pb.Response(), ignore_unknown_fields=True)

    def close(self) -> None:
        self.channel.close()
        self.session.close()


def run_load(
    rest_url: str,
    grpc_target: str,
    token: str,
    plan: LoadPlan,
    stop: threading.Event | None = None,
) -> LoadReport:
    """Run `plan` against one server; every request sent appears in the report's samples.
    `stop` ends it early (clients finish the request in flight)."""
    _require_loopback(rest_url, grpc_target)
    report = LoadReport(plan)
    lock = threading.Lock()
    stop_at = time.monotonic() + plan.max_seconds

    def client(number: int) -> None:
        rng = random.Random(plan.seed * 10_007 + number)
        connection = _Client(rest_url, grpc_target, token, plan.timeout)
        try:
            for _ in range(plan.requests_per_client):
                if time.monotonic() >= stop_at or (stop is not None and stop.is_set()):
                    break
                spec = rng.randrange(len(SPECS))
                transport = "grpc" if rng.random() < plan.grpc_share else "rest"
                started = time.perf_counter()
                try:
                    response: pb.Response | None = connection.send(SPECS[spec], transport)
                    failure = ""
                except (grpc.RpcError, requests.RequestException, RuntimeError) as error:
                    response, failure = None, f"{type(error).__name__}: {error}"[:300]
                sample = Sample(
                    number, spec, transport, time.perf_counter() - started, response, failure
                )
                with lock:
                    report.samples.append(sample)
        finally:
            connection.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(plan.clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    report.wall_seconds = time.perf_counter() - started
    return report


class _Expected:
    """Direct engine answers, one per spec, computed on first use."""

    def __init__(self, engine: LocalEngine) -> None:
        self.engine = engine
        self.cache: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def get(self, spec: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        if spec not in self.cache:
            request = SPECS[spec]
            probabilities = self.engine.probabilities(request)
            attribution = None
            if request.explain:
                target = int(probabilities.argmax())
                attribution = self.engine.attribution(request, target, request.options.seed)
            self.cache[spec] = (probabilities, attribution)
        return self.cache[spec]


def verify(report: LoadReport, engine: LocalEngine) -> list[str]:
    """Every answered sample that differs from the direct engine computation of its spec."""
    expected = _Expected(engine)
    problems = []
    for sample in report.samples:
        if sample.response is None or sample.response.HasField("error"):
            continue
        probabilities, attribution = expected.get(sample.spec)
        problem = _compare(sample.response, SPECS[sample.spec], probabilities, attribution)
        if problem:
            problems.append(
                f"client {sample.client} spec {sample.spec} {sample.transport}: {problem}"
            )
    return problems


def _compare(
    response: pb.Response,
    request: pb.Request,
    probabilities: torch.Tensor,
    attribution: torch.Tensor | None,
) -> str:
    top_k = request.top_k if request.HasField("top_k") else 5
    want = probabilities.topk(min(top_k, len(probabilities)))
    got_index = [c.index for c in response.top_k]
    if got_index != want.indices.tolist():
        return f"top_k {got_index} != {want.indices.tolist()}"
    got_p = torch.tensor([c.probability for c in response.top_k])
    if not torch.allclose(got_p, want.values, rtol=1e-4, atol=1e-6):
        return "top_k probabilities differ"
    if attribution is None:
        return "" if not response.HasField("attribution") else "a predict answer carries a map"
    if response.target != int(probabilities.argmax()) or response.seed != request.options.seed:
        return f"target/seed {response.target}/{response.seed}"
    try:
        torch.testing.assert_close(
            message_to_tensor(response.attribution), attribution, rtol=1e-4, atol=1e-6
        )
    except AssertionError as error:
        return f"attribution differs: {str(error).splitlines()[0]}"
    return ""
