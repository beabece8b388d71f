"""Security against a real TorchServe: tokens on every inference path (REST and gRPC), the
management API locked down, loopback binds, answer-size limits, and no secrets in the logs.

Request-size limits and hostile bodies are in the bad-input corpus (test_bad_inputs.py);
weights_only loading of a crafted state_dict is in tests/unit/test_reliability_service.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import requests
import torch
from google.protobuf import empty_pb2, json_format
from reliability.archives import build_archive
from reliability.expected import REPO_ROOT
from reliability.payloads import sample_png

from smoothexplain._proto.smoothexplain.v1 import explain_pb2 as pb
from smoothexplain._proto.torchserve import inference_pb2 as ts
from smoothexplain._proto.torchserve import inference_pb2_grpc as ts_grpc
from smoothexplain.ops.launcher import TorchServeInstance, is_loopback
from smoothexplain.serving.codec import GRPC_KEY, tensor_to_message

pytestmark = pytest.mark.integration

MAX_RESPONSE = 1_048_576  # TorchServe's max_response_size here: 1 MiB
OUR_LIMIT = 900_000  # limits.max_response_bytes, below it
MANAGEMENT = "org.pytorch.serve.grpc.management.ManagementAPIsService"


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, demo_artifacts: Path
) -> Iterator[TorchServeInstance]:
    root = tmp_path_factory.mktemp("security")
    build_archive(
        root / "store", "shapes", demo_artifacts, limits={"max_response_bytes": OUR_LIMIT}
    )
    overrides = {"max_response_size": str(MAX_RESPONSE)}
    with TorchServeInstance(
        root / "store", {"shapes": "shapes.mar"}, root / "ts", config_overrides=overrides
    ) as instance:
        yield instance


@pytest.fixture(scope="module")
def channel(server: TorchServeInstance) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(
        server.grpc_target, options=[("grpc.max_receive_message_length", 64 << 20)]
    ) as opened:
        yield opened


def _tokens(server: TorchServeInstance) -> dict[str, dict[str, str]]:
    """Header sets that must all be refused by the inference API."""
    return {
        "none": {},
        "wrong": {"Authorization": "Bearer not-the-token"},
        "no-bearer": {"Authorization": server.inference_token},
        "management-token": server.management_headers(),
        "api-token": {"Authorization": f"Bearer {server.api_token}"},
    }


@pytest.mark.parametrize("path", ["predictions/shapes", "explanations/shapes", "ping"])
def test_rest_inference_refuses_missing_and_wrong_tokens(
    server: TorchServeInstance, path: str
) -> None:
    for name, headers in _tokens(server).items():
        answer = requests.post(
            f"{server.inference_url}/{path}", data=sample_png(), headers=headers, timeout=30
        )
        # TorchServe 0.12 answers 400 InvalidKeyException (not 401); our client maps it.
        assert (answer.status_code, answer.json()["type"]) == (400, "InvalidKeyException"), name


def test_grpc_inference_refuses_missing_and_wrong_tokens(
    server: TorchServeInstance, channel: grpc.Channel
) -> None:
    stub = ts_grpc.InferenceAPIsServiceStub(channel)
    request = pb.Request(input=pb.Input(image=sample_png()), explain=True)
    call = ts.PredictionsRequest(model_name="shapes", input={GRPC_KEY: request.SerializeToString()})
    for name, headers in _tokens(server).items():
        metadata = tuple((k.lower(), v) for k, v in headers.items())
        attempts = {
            "Predictions": lambda m=metadata: stub.Predictions(call, metadata=m, timeout=30),
            "StreamPredictions": lambda m=metadata: list(
                stub.StreamPredictions(call, metadata=m, timeout=30)
            ),
            "Ping": lambda m=metadata: stub.Ping(empty_pb2.Empty(), metadata=m, timeout=30),
        }
        for method, attempt in attempts.items():
            with pytest.raises(grpc.RpcError) as refused:
                attempt()
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED, (name, method)


def test_model_registration_is_off_on_rest_and_grpc(server: TorchServeInstance) -> None:
    headers = server.management_headers()
    url = server.management_url
    register = requests.post(
        f"{url}/models?url=shapes.mar&model_name=again", headers=headers, timeout=30
    )
    assert register.status_code == 405  # enable_model_api=false, even with the right token
    unregister = requests.delete(f"{url}/models/shapes", headers=headers, timeout=30)
    assert unregister.status_code == 405
    assert requests.get(f"{url}/models", timeout=30).status_code == 400  # no token: refused
    # gRPC management: RegisterModelRequest{url: "shapes.mar"} (field 9) as raw bytes, and
    # UnregisterModelRequest{model_name: "shapes"} (field 1), with the management token.
    token = (("authorization", f"Bearer {server.management_token}"),)
    with grpc.insecure_channel(server.grpc_management_target) as management:
        for method, body in (
            ("RegisterModel", b"\x4a\x0ashapes.mar"),
            ("UnregisterModel", b"\x0a\x06shapes"),
        ):
            call = management.unary_unary(f"/{MANAGEMENT}/{method}")
            with pytest.raises(grpc.RpcError) as refused:
                call(body, metadata=token, timeout=30)
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED, method
            assert (refused.value.details() or "").startswith("Model API disabled")
    listing = requests.get(f"{url}/models", headers=headers, timeout=30).json()
    assert [m["modelName"] for m in listing["models"]] == ["shapes"]


def test_every_listening_socket_is_loopback(server: TorchServeInstance) -> None:
    sockets = server.listening_sockets()
    assert sorted(port for _, port in sockets) == sorted(server.ports.all())
    assert all(is_loopback(address) for address, _ in sockets), sockets


def test_the_shipped_config_binds_loopback_only() -> None:
    text = (REPO_ROOT / "handler" / "smoothexplain" / "ops" / "config.properties").read_text()
    addresses = dict(re.findall(r"^(\w+_address)=(.*)$", text, flags=re.MULTILINE))
    assert set(addresses) == {
        "inference_address",
        "management_address",
        "metrics_address",
        "grpc_inference_address",
        "grpc_management_address",
    }
    for key, value in addresses.items():
        host = value.removeprefix("http://").rsplit(":", 1)[0] if "//" in value else value
        assert host == "127.0.0.1", key
    assert re.search(r"^disable_token_authorization=false$", text, flags=re.MULTILINE)
    assert re.search(r"^enable_model_api=false$", text, flags=re.MULTILINE)


def _big_answer(encoding: pb.Encoding.ValueType) -> pb.Request:
    # A (3, 300, 300) input: its float32 map (1.08 MB) is above both limits.
    x = torch.linspace(-2, 2, 3 * 300 * 300).view(3, 300, 300)
    return pb.Request(
        input=pb.Input(tensor=tensor_to_message(x)),
        explain=True,
        options=pb.ExplainOptions(nt_samples=2, seed=1, encoding=encoding),
    )


def test_an_answer_above_the_limit_is_refused_and_the_worker_kept(
    server: TorchServeInstance, channel: grpc.Channel
) -> None:
    workers = server.worker_pids("shapes")
    stub = ts_grpc.InferenceAPIsServiceStub(channel)
    for encoding, fits in ((pb.ENCODING_FLOAT32, False), (pb.ENCODING_FLOAT16, True)):
        request = _big_answer(encoding)
        call = ts.PredictionsRequest(
            model_name="shapes", input={GRPC_KEY: request.SerializeToString()}
        )
        reply = stub.Predictions(call, metadata=server.grpc_metadata(), timeout=120)
        via_grpc = pb.Response.FromString(reply.prediction)
        rest = requests.post(
            f"{server.inference_url}/explanations/shapes",
            data=json_format.MessageToJson(request),
            headers={**server.inference_headers(), "Content-Type": "application/json"},
            timeout=120,
        )
        if fits:  # float16: 540 kB (REST: 720 kB of base64)
            assert not via_grpc.HasField("error") and rest.status_code == 200
            assert len(reply.prediction) < OUR_LIMIT and len(rest.content) < OUR_LIMIT
        else:
            assert via_grpc.error.field == "options.encoding" and rest.status_code == 400
            assert "max_response_bytes" in rest.json()["error"]["message"]
    assert server.worker_pids("shapes") == workers


def test_the_logs_hold_no_token(server: TorchServeInstance) -> None:
    secrets = {kind: server.token(kind) for kind in ("inference", "management", "API")}
    requests.post(  # one more authorised call, so its header went through every log
        f"{server.inference_url}/predictions/shapes",
        data=sample_png(),
        headers=server.inference_headers(),
        timeout=30,
    ).raise_for_status()
    for path in server.log_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for kind, secret in secrets.items():
            assert secret not in text, f"{kind} token in {path.name}"
    keys = json.loads(server.key_file.read_text())
    assert server.key_file.stat().st_mode & 0o777 == 0o600 and set(keys) == set(secrets)
