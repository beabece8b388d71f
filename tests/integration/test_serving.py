"""The demo model served by a real TorchServe: REST and gRPC, batching, errors, formats, auth."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import grpc
import pytest
import requests
import torch
from conftest import build_store
from google.protobuf import json_format

from smoothexplain import explain
from smoothexplain._proto.smoothexplain.v1 import explain_pb2 as pb
from smoothexplain._proto.torchserve import inference_pb2 as ts
from smoothexplain._proto.torchserve import inference_pb2_grpc as ts_grpc
from smoothexplain.client.remote import ExplainError, SmoothExplainClient, attribution
from smoothexplain.demo import load_model, render_sample
from smoothexplain.ops.launcher import TorchServeInstance
from smoothexplain.serving.codec import GRPC_KEY, image_to_tensor, message_to_tensor
from smoothexplain.serving.config import parse_config

pytestmark = pytest.mark.integration

MODELS = {"shapes": "shapes.mar", "shapes_ts": "shapes_ts.mar", "shapes_onnx": "shapes_onnx.mar"}


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, demo_artifacts: Path
) -> Iterator[TorchServeInstance]:
    root = tmp_path_factory.mktemp("serving")
    # A long batch delay makes concurrent requests reliably share one batch.
    store = build_store(
        root / "store", list(MODELS), demo_artifacts, batchSize=4, maxBatchDelay=300
    )
    instance = TorchServeInstance(store, MODELS, root / "ts")
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture(scope="module")
def stub(server: TorchServeInstance) -> Iterator[ts_grpc.InferenceAPIsServiceStub]:
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield ts_grpc.InferenceAPIsServiceStub(channel)


def _png(label: int, seed: int) -> bytes:
    image, _ = render_sample(label, seed)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _request(png: bytes, **options: Any) -> pb.Request:
    target = options.pop("target", None)
    request = pb.Request(
        input=pb.Input(image=png), explain=True, options=pb.ExplainOptions(**options)
    )
    if target is not None:
        request.target = target
    return request


def _grpc(
    server: TorchServeInstance,
    stub: ts_grpc.InferenceAPIsServiceStub,
    request: pb.Request,
    model: str = "shapes",
) -> pb.Response:
    reply = stub.Predictions(
        ts.PredictionsRequest(model_name=model, input={GRPC_KEY: request.SerializeToString()}),
        metadata=server.grpc_metadata(),
        timeout=120,
    )
    return pb.Response.FromString(reply.prediction)


def _rest(
    server: TorchServeInstance,
    request: pb.Request,
    path: str = "explanations",
    model: str = "shapes",
) -> tuple[int, pb.Response]:
    answer = requests.post(
        f"{server.inference_url}/{path}/{model}",
        data=json_format.MessageToJson(request),
        headers={**server.inference_headers(), "Content-Type": "application/json"},
        timeout=120,
    )
    return answer.status_code, json_format.Parse(
        answer.text, pb.Response(), ignore_unknown_fields=True
    )


def _attr(response: pb.Response) -> torch.Tensor:
    assert not response.HasField("error"), response.error.message
    return message_to_tensor(response.attribution)


def _local(png: bytes, response: pb.Response, **kw: Any) -> torch.Tensor:
    """The same request computed by the engine in this process."""
    config = parse_config(
        json.loads(
            json.dumps(
                __import__("yaml").safe_load(Path("deploy/model-config.yaml").read_text())[
                    "smoothexplain"
                ]
            )
        )
    )
    x = image_to_tensor(png, config.preprocess, config.limits)
    low, high = config.preprocess.bounds()
    bounds = (torch.tensor(low).view(-1, 1, 1), torch.tensor(high).view(-1, 1, 1))
    model = load_model(Path("artifacts/demo"))
    return explain(model, x[None], response.target, seed=response.seed, bounds=bounds, **kw)[0]


def test_rest_and_grpc_give_the_same_attributions(
    server: TorchServeInstance, stub: ts_grpc.InferenceAPIsServiceStub
) -> None:
    png = _png(3, 11)
    request = _request(png, seed=7, nt_samples=16)
    via_grpc = _grpc(server, stub, request)
    status, via_rest = _rest(server, request)
    assert status == 200
    torch.testing.assert_close(_attr(via_rest), _attr(via_grpc), rtol=1e-5, atol=1e-8)
    assert via_grpc.top_k[0].label == "cross" and via_grpc.target == 3
    local = _local(png, via_grpc, nt_samples=16)
    torch.testing.assert_close(_attr(via_grpc), local, rtol=1e-4, atol=1e-6)


def _concurrently(calls: list[Callable[[], Any]]) -> list[Any]:
    with ThreadPoolExecutor(len(calls)) as pool:
        return [f.result() for f in [pool.submit(c) for c in calls]]


def test_a_concurrent_mix_is_answered_as_asked(
    server: TorchServeInstance, stub: ts_grpc.InferenceAPIsServiceStub
) -> None:
    pngs = [_png(label, 100 + label) for label in range(7)]
    asks = [
        ("predict", pngs[0], {}),
        ("grpc", pngs[1], {"seed": 1, "nt_samples": 8, "target": 4}),
        ("rest", pngs[2], {"seed": 2, "nt_samples": 4, "method": pb.METHOD_INPUT_X_GRADIENT}),
        (
            "grpc",
            pngs[3],
            {
                "seed": 3,
                "nt_samples": 3,
                "n_steps": 4,
                "method": pb.METHOD_INTEGRATED_GRADIENTS,
                "nt_type": pb.NT_TYPE_VARGRAD,
            },
        ),
        ("predict", pngs[4], {}),
        ("rest", pngs[5], {"seed": 5, "nt_samples": 6, "noise": pb.NOISE_ADAPTIVE}),
        ("grpc", pngs[6], {"seed": 6, "nt_samples": 5, "method": pb.METHOD_GUIDED_BACKPROP}),
        ("rest", pngs[0], {"seed": 7, "nt_type": pb.NT_TYPE_NONE}),
    ]

    def call(kind: str, png: bytes, options: dict[str, Any]) -> pb.Response:
        if kind == "predict":
            status, response = _rest(server, pb.Request(input=pb.Input(image=png)), "predictions")
            assert status == 200
            return response
        request = _request(png, **dict(options))
        return _grpc(server, stub, request) if kind == "grpc" else _rest(server, request)[1]

    responses = _concurrently([lambda a=a: call(*a) for a in asks])
    assert max(r.timings.batch_size for r in responses) >= 2  # they really shared batches
    names = {
        "method": {
            1: "gradient",
            2: "input_x_gradient",
            3: "integrated_gradients",
            4: "guided_backprop",
        },
        "nt_type": {1: "none", 2: "smoothgrad", 3: "smoothgrad_sq", 4: "vargrad"},
        "noise": {1: "gaussian", 2: "adaptive"},
    }
    for (kind, png, options), response in zip(asks, responses, strict=True):
        assert not response.HasField("error"), response.error.message
        if kind == "predict":
            assert not response.HasField("attribution") and len(response.top_k) == 5
            continue
        if "target" in options:
            assert response.target == options["target"]
        kw = {
            k: names[k][v] if k in names else v
            for k, v in options.items()
            if k not in ("seed", "target")
        }
        torch.testing.assert_close(
            _attr(response), _local(png, response, **kw), rtol=1e-4, atol=1e-6
        )


def test_a_malformed_request_fails_alone(
    server: TorchServeInstance, stub: ts_grpc.InferenceAPIsServiceStub
) -> None:
    png = _png(0, 1)
    good = _request(png, seed=4, nt_samples=4)
    bad = _request(png, seed=4, nt_samples=100_000)
    for _ in range(5):  # until the four land in one batch
        results = _concurrently(
            [
                lambda: _rest(server, good),
                lambda: _rest(server, bad),
                lambda: _grpc(server, stub, good),
                lambda: _grpc(server, stub, bad),
            ]
        )
        (rest_ok, rest_good), (rest_status, rest_bad), grpc_good, grpc_bad = results
        if rest_good.timings.batch_size >= 3:
            break
    assert rest_good.timings.batch_size >= 3
    assert rest_ok == 200 and rest_status == 400
    assert rest_bad.error.field == "options.nt_samples"
    assert grpc_bad.error.grpc_code == "INVALID_ARGUMENT"
    assert grpc_bad.error.field == "options.nt_samples"
    torch.testing.assert_close(_attr(rest_good), _attr(grpc_good))


def test_requests_without_the_token_are_refused(
    server: TorchServeInstance, stub: ts_grpc.InferenceAPIsServiceStub
) -> None:
    png = _png(1, 2)
    # TorchServe 0.12 refuses with 400 InvalidKeyException, not 401 (our client maps it).
    answer = requests.post(f"{server.inference_url}/explanations/shapes", data=png, timeout=30)
    assert answer.status_code == 400 and answer.json()["type"] == "InvalidKeyException"
    wrong = requests.post(
        f"{server.inference_url}/predictions/shapes",
        data=png,
        timeout=30,
        headers={"Authorization": "Bearer wrong"},
    )
    assert wrong.status_code == 400 and wrong.json()["type"] == "InvalidKeyException"
    with pytest.raises(grpc.RpcError) as info:
        stub.Predictions(
            ts.PredictionsRequest(model_name="shapes", input={"body": png}), timeout=30
        )
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED  # TorchServe's choice


@pytest.mark.parametrize("model", ["shapes_ts", "shapes_onnx"])
def test_torchscript_and_onnx_explain_like_eager(
    server: TorchServeInstance, stub: ts_grpc.InferenceAPIsServiceStub, model: str
) -> None:
    request = _request(
        _png(5, 3), seed=9, nt_samples=6, method=pb.METHOD_INTEGRATED_GRADIENTS, n_steps=8
    )
    eager = _grpc(server, stub, request)
    other = _grpc(server, stub, request, model)
    assert other.target == eager.target
    torch.testing.assert_close(_attr(other), _attr(eager), rtol=1e-4, atol=1e-5)


def test_stream_predictions_answers_once_and_keeps_the_worker(
    server: TorchServeInstance, stub: ts_grpc.InferenceAPIsServiceStub
) -> None:
    before = server.worker_pids("shapes")
    request = _request(_png(2, 8), seed=1, nt_samples=2)
    replies = list(
        stub.StreamPredictions(
            ts.PredictionsRequest(
                model_name="shapes", input={GRPC_KEY: request.SerializeToString()}
            ),
            metadata=server.grpc_metadata(),
            timeout=60,
        )
    )
    assert len(replies) == 1
    assert pb.Response.FromString(replies[0].prediction).attribution.data
    assert server.worker_pids("shapes") == before


def _client(server: TorchServeInstance, transport: Literal["grpc", "rest"]) -> SmoothExplainClient:
    return SmoothExplainClient(
        transport=transport,
        rest_port=server.ports.inference,
        grpc_port=server.ports.grpc_inference,
        token=server.inference_token,
    )


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_the_typed_client_raises_invalid_argument(
    server: TorchServeInstance, transport: Literal["grpc", "rest"]
) -> None:
    with _client(server, transport) as client:
        good = client.explain("shapes", _png(4, 4), seed=3, nt_samples=4)
        assert attribution(good).shape == (3, 64, 64)
        with pytest.raises(ExplainError) as info:
            client.explain("shapes", _png(4, 4), nt_samples=100_000)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.field == "options.nt_samples"


def test_guided_backprop_on_torchscript_is_refused_for_that_request_only(
    server: TorchServeInstance, stub: ts_grpc.InferenceAPIsServiceStub
) -> None:
    png = _png(6, 5)
    guided = _request(png, seed=2, nt_samples=3, method=pb.METHOD_GUIDED_BACKPROP)
    gradient = _request(png, seed=2, nt_samples=3)
    for _ in range(5):  # until the four land in one batch
        results = _concurrently(
            [
                lambda: _rest(server, guided, model="shapes_ts"),
                lambda: _grpc(server, stub, guided, "shapes_ts"),
                lambda: _grpc(server, stub, gradient, "shapes_ts"),
                lambda: _rest(server, gradient, model="shapes_ts"),
            ]
        )
        (rest_status, rest_refused), grpc_refused, grpc_mate, (mate_status, rest_mate) = results
        if grpc_mate.timings.batch_size >= 3:
            break
    assert grpc_mate.timings.batch_size >= 3
    assert rest_status == 400 and rest_refused.error.field == "options.method"
    assert "TorchScript" in rest_refused.error.message
    assert grpc_refused.error.grpc_code == "INVALID_ARGUMENT"
    assert grpc_refused.error.field == "options.method"
    assert mate_status == 200
    alone = _grpc(server, stub, gradient, "shapes_ts")
    torch.testing.assert_close(_attr(grpc_mate), _attr(alone))
    torch.testing.assert_close(_attr(rest_mate), _attr(alone))
    eager = _grpc(server, stub, guided)  # the eager archive of the same network serves it
    local = _local(png, eager, nt_samples=3, method="guided_backprop")
    torch.testing.assert_close(_attr(eager), local, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_the_typed_client_names_options_method_for_guided_torchscript(
    server: TorchServeInstance, transport: Literal["grpc", "rest"]
) -> None:
    with _client(server, transport) as client:
        served = client.explain("shapes", _png(4, 4), method="guided_backprop", nt_samples=2)
        assert attribution(served).shape == (3, 64, 64)
        with pytest.raises(ExplainError) as info:
            client.explain("shapes_ts", _png(4, 4), method="guided_backprop", nt_samples=2)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.field == "options.method" and info.value.http_status == 400
