"""The bad-input corpus (reliability/bad_inputs.yaml) against a real TorchServe.

Every case must be refused with a clear 4xx (gRPC: INVALID_ARGUMENT inside the Response, or
TorchServe's own code where it refuses first) naming the offending field; good requests sent in
between, sharing batches with the bad ones, must still be answered exactly; the worker must never
restart; and nothing of the request bodies or the token may reach the logs.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import torch
from conftest import shapes_server
from google.protobuf import json_format
from reliability.corpus import Case, Outcome, Target, check, load_cases, send
from reliability.expected import LocalEngine
from reliability.payloads import MARK, sample_png

from smoothexplain._proto.smoothexplain.v1 import explain_pb2 as pb
from smoothexplain._proto.torchserve import inference_pb2 as ts
from smoothexplain.ops.launcher import TorchServeInstance
from smoothexplain.serving.codec import GRPC_KEY, message_to_tensor

pytestmark = pytest.mark.integration

SENDERS = 4  # concurrent clients: bad and good requests share TorchServe batches
GOOD_EVERY = 8  # one good request after every this many bad ones


@dataclass(frozen=True)
class CorpusRun:
    cases: list[Case]
    failures: dict[str, list[str]]  # "case-id/transport" → problems
    sent: int
    good: list[pb.Response]
    workers_before: list[int]
    workers_after: list[int]


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, demo_artifacts: Path
) -> Iterator[TorchServeInstance]:
    root = tmp_path_factory.mktemp("badinput")
    with shapes_server(root, demo_artifacts, batchSize=4, maxBatchDelay=10) as instance:
        yield instance


def _good_request() -> pb.Request:
    return pb.Request(
        input=pb.Input(image=sample_png(3, 5)),
        explain=True,
        options=pb.ExplainOptions(nt_samples=8, seed=11, encoding=pb.ENCODING_FLOAT32),
    )


def _send_good(target: Target, index: int) -> pb.Response:
    request = _good_request()
    if index % 2:
        answer = requests.post(
            f"{target.rest_url}/explanations/shapes",
            data=json_format.MessageToJson(request),
            headers={"Authorization": f"Bearer {target.token}"},
            timeout=60,
        )
        assert answer.status_code == 200, answer.text[:300]
        return json_format.Parse(answer.text, pb.Response(), ignore_unknown_fields=True)
    call = ts.PredictionsRequest(model_name="shapes", input={GRPC_KEY: request.SerializeToString()})
    reply = target.stub.Predictions(call, metadata=target.metadata, timeout=60)
    return pb.Response.FromString(reply.prediction)


@pytest.fixture(scope="module")
def corpus_run(server: TorchServeInstance) -> Iterator[CorpusRun]:
    cases = load_cases()
    jobs: list[tuple[Case, str] | int] = []
    counter = itertools.count()
    pairs = [(case, transport) for case in cases for transport in case.transports]
    for number, pair in enumerate(pairs):
        jobs.append(pair)
        if number % GOOD_EVERY == GOOD_EVERY - 1:
            jobs.append(next(counter))
    target = Target(server.inference_url, server.grpc_target, server.inference_token)
    before = server.worker_pids("shapes")

    def run(job: tuple[Case, str] | int) -> tuple[str, list[str]] | pb.Response:
        if isinstance(job, int):
            return _send_good(target, job)
        case, transport = job
        try:
            outcome: Outcome = send(target, case, transport, timeout=60)
        except Exception as error:  # a hang or a dropped connection is a failure too
            return f"{case.id}/{transport}", [f"{type(error).__name__}: {error}"]
        return f"{case.id}/{transport}", check(case, transport, outcome)

    try:
        with ThreadPoolExecutor(SENDERS) as pool:
            results = list(pool.map(run, jobs))
    finally:
        target.close()
    failures = {r[0]: r[1] for r in results if isinstance(r, tuple) and r[1]}
    good = [r for r in results if isinstance(r, pb.Response)]
    yield CorpusRun(
        cases, failures, len(jobs) - len(good), good, before, server.worker_pids("shapes")
    )


# The cases that must be answered, each beside the refused ones it borders: WebP (issue 12);
# the edges of issue 18's bounds and the JSON forms proto3 requires us to accept.
ACCEPTED_NEIGHBOURS = {
    "webp-body",
    "webp-in-image-field",
    "baseline-float32-max-ok",
    "confidence-at-min",
    "enum-number-string",
    "json-duplicate-nested-last-wins",  # TorchServe's json.loads keeps the last duplicate
    "json-utf8-bom",
    "json-utf8-bom-no-type",
    "nt-type-none-ignores-nt-samples",
    "seed-max-int63",
    "seed-number-exponent",
    "seed-number-integral-float",
    "seed-string-digits",
    "sigma-at-max",
    "smoothgrad-sq-one-sample",
    "stdevs-at-max",
    "tensor-float32-subnormal",
    "tensor-float64-subnormal",
    "vargrad-adaptive-zero-sigma",
    "vargrad-min-sigma",
    "vargrad-two-samples",
}


def test_the_corpus_is_large_and_well_formed() -> None:
    cases = load_cases()
    assert len(cases) >= 200
    refused = [c for c in cases if c.by == "handler" and c.status != 200]
    assert all(400 <= c.status < 500 for c in refused)
    assert all(c.field for c in refused)  # each names its field
    answered = {c.id for c in cases if c.status == 200}
    assert answered == ACCEPTED_NEIGHBOURS
    assert all(not c.field and c.grpc_code == "OK" for c in cases if c.id in answered)
    transports = {t for c in cases for t in c.transports}
    assert transports == {"rest", "grpc", "stream", "raw"}


def test_every_bad_input_gets_a_4xx_naming_its_field(
    corpus_run: CorpusRun, record_property: pytest.RecordProperty
) -> None:
    record_property("bad_input_cases", len(corpus_run.cases))
    record_property("bad_input_requests", corpus_run.sent)
    assert corpus_run.failures == {}


def test_the_worker_survives_the_whole_corpus(corpus_run: CorpusRun) -> None:
    assert corpus_run.workers_before and corpus_run.workers_after == corpus_run.workers_before


def test_good_requests_between_bad_ones_are_answered_exactly(corpus_run: CorpusRun) -> None:
    assert len(corpus_run.good) >= corpus_run.sent // GOOD_EVERY
    assert max(r.timings.batch_size for r in corpus_run.good) >= 2  # they shared batches
    engine = LocalEngine()
    first = corpus_run.good[0]
    expected = engine.attribution(_good_request(), first.target, first.seed)
    for response in corpus_run.good:
        assert not response.HasField("error"), response.error.message
        torch.testing.assert_close(
            message_to_tensor(response.attribution), expected, rtol=1e-4, atol=1e-6
        )


def test_logs_hold_neither_request_bodies_nor_the_token(
    corpus_run: CorpusRun, server: TorchServeInstance
) -> None:
    assert corpus_run.sent  # the corpus ran: bodies carrying MARK went through every path
    token = server.inference_token
    leaks = []
    for path in server.log_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        leaks += [f"{path.name}: body marker" for _ in [0] if MARK in text]
        leaks += [f"{path.name}: inference token" for _ in [0] if token in text]
    assert leaks == []
